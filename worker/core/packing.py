"""What every stored state format shares: names as small integers where the default rules'
are, (dimension, class) pairs flat, the rules version's hash as its bytes, partial refunds by
the position of their order; and the error for stored bytes this version cannot read."""

from __future__ import annotations

from functools import lru_cache
from typing import Any, Final

from worker.core.state import OrderRecord
from worker.errors import SegmentWorkerError

VERSION_PREFIX: Final = "sha256:"  # of every rules version (Rules.version)

# Dimension and class names stored as small integers (the default rules' names); any other
# name is stored as text. Append only: stored states refer to positions.
VOCABULARY: Final = (
    "lifecycle", "value_tier", "rfm", "membership", "tenure", "old_customer",
    "potential", "returning", "new", "active", "churned", "churn_risk",
    "high", "medium", "low",
    "champions", "loyal", "promising", "potential_loyalist", "need_attention",
    "about_to_sleep", "cant_lose", "at_risk", "hibernating",
    "super_member", "member", "ordinary", "long", "mid", "short", "in",
)  # fmt: skip
_CODE: Final = {name: i for i, name in enumerate(VOCABULARY)}
_TEXT: Final = dict(enumerate(VOCABULARY))


class CorruptRecord(SegmentWorkerError, ValueError):
    """Raised when stored bytes (a state, an outbox record) are not something this version can
    read: damaged, or written by a newer release."""


def code(name: str | None) -> int | str | None:
    return name if name is None else _CODE.get(name, name)


def name_code(name: str) -> int | str:
    return _CODE.get(name, name)


def text(value: object) -> str:
    if value.__class__ is str:
        return value
    name = _TEXT.get(value) if value.__class__ is int else None
    if name is None:
        raise CorruptRecord(f"not a name: {value!r}")
    return name


@lru_cache(maxsize=4096)
def packed_classes(classes: tuple[tuple[str, str | None], ...]) -> list[int | str | None]:
    """(dimension, class or None) pairs, flat, names from the vocabulary as integers."""
    return [code(n) for pair in classes for n in pair]


@lru_cache(maxsize=4096)
def unpacked_classes(packed: tuple[object, ...]) -> dict[str, str | None]:
    """The inverse of packed_classes; callers get a copy."""
    return {
        text(packed[i]): None if packed[i + 1] is None else text(packed[i + 1])
        for i in range(0, len(packed), 2)
    }


@lru_cache(maxsize=64)  # a handful of versions live at a time
def packed_version(version: str) -> bytes | str:
    """A rules version (``sha256:`` and lowercase hex, see Rules.version) as the hash's
    bytes; any other as text led by "=" (stored as it is)."""
    if version.startswith(VERSION_PREFIX):
        digits = version[len(VERSION_PREFIX) :]
        try:
            raw = bytes.fromhex(digits)
        except ValueError:
            raw = None
        if raw is not None and raw.hex() == digits:
            return raw
    return "=" + version


@lru_cache(maxsize=64)
def unpacked_version(stored: bytes | str) -> str:
    """The inverse of packed_version, and of the JSON formats' text (the hash as hex)."""
    if isinstance(stored, bytes):
        return VERSION_PREFIX + stored.hex()
    return stored[1:] if stored.startswith("=") else VERSION_PREFIX + stored


def order_records(prefix: str, flat: list[Any], times: list[int]) -> dict[str, OrderRecord]:
    """(id after the shared prefix, flags with 16 for paid, instant, cents) quadruples, as every
    format since 3 stores them, into order records; ``times``: each order's instant, absolute
    (the formats store them differently)."""
    return {
        prefix + flat[i]: OrderRecord(
            flat[i + 1] & 15, flat[i + 1] & 16 != 0, times[i >> 2], flat[i + 3]
        )
        for i in range(0, len(flat), 4)
    }


def add_refunds(orders: dict[str, OrderRecord], refunds: list[Any]) -> None:
    """(position of the order, event id, amount) triples into their orders."""
    records = list(orders.values())
    for i in range(0, len(refunds), 3):
        record = records[refunds[i]]
        if record.refunds is None:
            record.refunds = {}
        record.refunds[refunds[i + 1]] = refunds[i + 2]
