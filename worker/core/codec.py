"""Byte encodings of what the live worker keeps in Redis: customer states and outbox records.

States are positional JSON arrays led by a format number, so that a format change can be
read side by side with the old one. Outbox records carry arbitrary bytes (a dead-lettered payload
may not even be UTF-8), so they use a length-prefixed binary frame instead.
"""

from __future__ import annotations

import struct
from typing import Final, NamedTuple

import orjson

from worker.core.state import CustomerState, OrderRecord

FORMAT: Final = 3
_VERSION_PREFIX: Final = "sha256:"  # of every rules version (Rules.version)
_LEN: Final = struct.Struct(">I")
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


class CorruptRecord(ValueError):
    """Stored bytes that this version cannot read."""


def encode_state(state: CustomerState) -> bytes:
    """A positional JSON array: no field names, names from the vocabulary as integers,
    orders flattened, instants as offsets from the state's earliest one (3-4 digits fewer
    each) and the rules version without its constant prefix; about a third of a keyed
    document, and still orjson-fast."""
    instants = [r.ms for r in state.orders.values()]
    instants += state.since_ms.values()
    for ms in (state.first_visit_ms, state.last_visit_ms):
        if ms is not None:
            instants.append(ms)
    region_ms = None if state.region_ms < 0 else state.region_ms  # -1: no region seen
    if region_ms is not None:
        instants.append(region_ms)
    base = min(instants, default=0)
    orders: list[object] = []
    for order_id, r in state.orders.items():
        orders += [order_id, r.flags | (16 if r.paid else 0), r.ms - base, r.amount]
    classes: list[object] = []
    for dim, cls in state.classes.items():
        since = state.since_ms.get(dim)
        classes += [
            _name(dim),
            None if cls is None else _name(cls),
            None if since is None else since - base,
        ]
    version = state.rules_version
    if version.startswith(_VERSION_PREFIX):
        version = version[len(_VERSION_PREFIX) :]
    else:
        version = "=" + version  # stored as it is
    return orjson.dumps(
        [
            FORMAT,
            base,
            orders,
            _minus(state.first_visit_ms, base),
            _minus(state.last_visit_ms, base),
            state.region,
            _minus(region_ms, base),
            classes,
            version,
            state.due_day,
        ]
    )


def _minus(ms: int | None, base: int) -> int | None:
    return None if ms is None else ms - base


def _plus(offset: int | None, base: int) -> int | None:
    return None if offset is None else offset + base


def decode_state(customer_id: str, data: bytes) -> CustomerState:
    try:
        doc = orjson.loads(data)
        if not isinstance(doc, list) or not doc or doc[0] != FORMAT:
            raise CorruptRecord(f"unknown state format for {customer_id!r}")
        _, base, flat, first_visit, last_visit, region, region_ms, classes, version, due = doc
        orders = {
            flat[i]: OrderRecord(
                flat[i + 1] & 15, bool(flat[i + 1] & 16), flat[i + 2] + base, flat[i + 3]
            )
            for i in range(0, len(flat), 4)
        }
        state = CustomerState(
            customer_id,
            orders=orders,
            first_visit_ms=_plus(first_visit, base),
            last_visit_ms=_plus(last_visit, base),
            region=region,
            region_ms=-1 if region_ms is None else region_ms + base,
            rules_version=version[1:] if version.startswith("=") else _VERSION_PREFIX + version,
            due_day=due,
        )
        for i in range(0, len(classes), 3):
            dim = _text(classes[i])
            state.classes[dim] = None if classes[i + 1] is None else _text(classes[i + 1])
            if classes[i + 2] is not None:
                state.since_ms[dim] = classes[i + 2] + base
        return state
    except CorruptRecord:
        raise
    except (orjson.JSONDecodeError, IndexError, TypeError, ValueError, AttributeError) as exc:
        raise CorruptRecord(f"unreadable state for {customer_id!r}: {exc}") from None


def _name(text: str) -> int | str:
    return _CODE.get(text, text)


def _text(value: object) -> str:
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < len(VOCABULARY):
        return VOCABULARY[value]
    if isinstance(value, str):
        return value
    raise CorruptRecord(f"not a name: {value!r}")


class OutRecord(NamedTuple):  # immutable and cheap to build: one per output record
    """A message waiting in the outbox for the relay: where it goes and its exact bytes."""

    topic: str
    key: bytes | None
    value: bytes | None
    headers: tuple[tuple[str, bytes], ...] = ()

    def encode(self) -> bytes:
        parts = [self.topic.encode(), self.key, self.value]
        for name, value in self.headers:
            parts += [name.encode(), value]
        out = bytearray(_LEN.pack(len(parts)))
        for part in parts:
            if part is None:
                out += b"\xff\xff\xff\xff"
            else:
                out += _LEN.pack(len(part)) + part
        return bytes(out)

    @classmethod
    def decode(cls, data: bytes) -> OutRecord:
        try:
            (count,) = _LEN.unpack_from(data, 0)
            pos, parts = 4, list[bytes | None]()
            for _ in range(count):
                (size,) = _LEN.unpack_from(data, pos)
                pos += 4
                if size == 0xFFFFFFFF:
                    parts.append(None)
                    continue
                if pos + size > len(data):
                    raise CorruptRecord("outbox record shorter than its frame")
                parts.append(data[pos : pos + size])
                pos += size
            if pos != len(data) or count < 3 or count % 2 != 1 or parts[0] is None:
                raise CorruptRecord("outbox record frame does not add up")
            names, values = parts[3::2], parts[4::2]
            headers = tuple(
                ((n or b"").decode(), v or b"") for n, v in zip(names, values, strict=True)
            )
            return cls(parts[0].decode(), parts[1], parts[2], headers)
        except (struct.error, UnicodeDecodeError) as exc:
            raise CorruptRecord(f"unreadable outbox record: {exc}") from None
