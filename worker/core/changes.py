"""Segment-change events (segment_change.v1) and their deterministic ids."""

from __future__ import annotations

import hashlib
from typing import Final, Literal, NamedTuple

import orjson

from worker.core.features import Facts, Features
from worker.core.timeutil import format_ms, format_optional

CauseType = Literal["order", "visit", "profile", "timer", "rules_change"]
SNAPSHOT_FIELDS: Final = (
    "orders_total",
    "days_since_first_order",
    "days_since_last_order",
    "days_since_last_visit",
    "region",
)


class Cause(NamedTuple):  # immutable and cheap to build: on the per-event path
    type: CauseType
    event_id: str | None  # the input event; the rules version for rules_change; None for timers
    occurred_ms: int


class SegmentChange(NamedTuple):
    event_id: str
    customer_id: str
    dimension: str
    from_class: str | None
    to_class: str | None
    cause: Cause
    emitted_ms: int
    state: dict[str, object]
    rules_version: str

    def to_dict(self) -> dict[str, object]:
        return {
            "event_id": self.event_id,
            "customer_id": self.customer_id,
            "dimension": self.dimension,
            "from": self.from_class,
            "to": self.to_class,
            "occurred_at": format_ms(self.cause.occurred_ms),
            "emitted_at": format_ms(self.emitted_ms),
            "cause": {"type": self.cause.type, "event_id": self.cause.event_id},
            "state": self.state,
            "rules_version": self.rules_version,
        }

    def to_json(self) -> bytes:
        return orjson.dumps(self.to_dict())


def change_id(
    customer_id: str, dimension: str, cause: Cause, from_class: str | None, to_class: str | None
) -> str:
    """Same cause, same transition => same id, so a re-delivery is recognisable downstream."""
    parts = (
        customer_id,
        dimension,
        cause.type,
        cause.event_id or "",
        str(cause.occurred_ms),
        from_class or "",
        to_class or "",
    )
    digest = hashlib.blake2b("\x1f".join(parts).encode(), digest_size=16)
    return digest.hexdigest()


def money(value: object) -> str | None:
    return None if not isinstance(value, int | float) else f"{value:.2f}"


def snapshot(facts: Facts, features: Features, windows: tuple[int, ...]) -> dict[str, object]:
    """The statistics that decided a change, JSON-ready (money as exact decimal strings)."""
    out: dict[str, object] = {
        "orders_total": features["orders_total"],
        "monetary_total": money(features["monetary_total"]),
    }
    for n in windows:
        out[f"orders_{n}d"] = features[f"orders_{n}d"]
        out[f"spend_{n}d"] = money(features[f"spend_{n}d"])
    out["first_order_at"] = format_optional(facts.first_order_ms)
    out["last_order_at"] = format_optional(facts.last_order_ms)
    out["last_visit_at"] = format_optional(facts.last_visit_ms)
    for name in SNAPSHOT_FIELDS[1:]:
        out[name] = features[name]
    for name in ("r_score", "f_score", "m_score"):
        if name in features:
            out[name] = features[name]
    return out
