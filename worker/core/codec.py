"""The bytes of a customer's state in Redis (outbox records: worker/core/outbox.py).

States are positional MessagePack arrays led by a format number, so that a format change can
be read side by side with the old one (formats 3-6, worker/core/old_formats.py, are still
read).
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Iterable
from functools import lru_cache
from itertools import accumulate, compress, repeat
from operator import add, sub
from typing import Any, Final

import msgspec
import orjson

from worker.core.old_formats import FORMAT_3, FORMAT_4, FORMAT_5, FORMAT_6, read_format_6, read_json
from worker.core.packing import (
    VOCABULARY,
    CorruptRecord,
    add_refunds,
    code,
    name_code,
    order_records,
    packed_classes,
    packed_version,
    text,
    unpacked_classes,
    unpacked_version,
)
from worker.core.state import NO_TIME, VOIDED, CustomerState, OrderRecord

FORMAT: Final = 7
# Formats 4 and 5 stored JSON of 256 bytes or more zlib-compressed. A compressed state
# starts with zlib's 0x78, JSON with "[", MessagePack (format 6 on) with an array header
# (0x90-0x9f, 0xdc, 0xdd).
_ZLIB: Final = b"\x78"
_JSON: Final = b"["
_PACK: Final = msgspec.msgpack.Encoder()
_UNPACK: Final = msgspec.msgpack.Decoder()
_EMPTY: Final[list[object]] = []  # encoded as it is, never changed
# An instant equal to its neighbour's, typed as an object: a compiled core (mypyc) would turn
# a True in an `int | None` expression into the integer 1.
_SAME: Final[object] = True
_READ: Final = frozenset((FORMAT, FORMAT_6, FORMAT_5, FORMAT_4, FORMAT_3))


def encode_state(state: CustomerState) -> bytes:
    """A positional MessagePack array (format 7), built with few Python steps since it runs
    once per customer per batch (comprehensions and per-item calls are what cost): instants
    as offsets from a base, the orders' each from the order before and the key actions' each
    from the action before, packed 4 bytes apiece; an instant equal to a neighbour (the last
    visit to the last key action, the region's to the last visit) as ``true``; the
    dimensions, which classes have a since instant and the class names through one cached
    lookup per class combination; the rules version's hash as its bytes; the withheld
    classes, while there are any, last. What a decoded state still holds as it was read
    (orders and since instants never read, the same classes, the same key actions) goes out
    as it was read, the instants re-based if the base moved. Field by field:
    docs/state-format.md."""
    stored = state.packed_orders
    if not isinstance(stored, StoredState):  # read as they were stored, or built since
        stored = None
    orders = state.orders if stored is None else {}
    parts = state.stored
    if not isinstance(parts, StoredState):
        parts = None
    classes = state.classes
    keys = state.key_actions  # sorted: the first is the earliest
    first_visit, last_visit, region_ms = state.first_visit_ms, state.last_visit_ms, state.region_ms
    traits = state.traits
    since_ms: dict[str, int] = {}
    if parts is not None and state.since_unread and tuple(classes.items()) == parts.class_items:
        layout = parts  # fields 9-12 as read: the same classes, the since instants never read
        instants = [] if parts.since_min is None else [parts.since_min]
    else:
        layout = None
        since_ms = state.since_ms
        instants = list(since_ms.values())
    if keys:
        instants.append(keys[0])
    if first_visit is not None:
        instants.append(first_visit)
    if region_ms >= 0:  # -1: no region seen
        instants.append(region_ms)
    if traits:
        instants += [ms for ms, _ in traits.values()]
    if stored is not None:
        if (first := stored.first_ms()) != NO_TIME:
            instants.append(first)
    elif orders and (first := next(iter(orders.values())).ms) != NO_TIME:
        instants.append(first)  # the other orders' are steps from it
    base = min(instants) if instants else 0
    if layout is not None:
        dims, packed, since_dims = layout.doc[9:12]
        since = layout.doc[12]
        if base != layout.base and since:
            since = list(map(add, since, repeat(layout.base - base)))
    else:
        dims, packed, since_dims, since_order = _class_layout(
            tuple(classes), tuple(classes.values()), tuple(since_ms)
        )
        since = (
            list(map(sub, map(since_ms.__getitem__, since_order), repeat(base)))
            if since_ms
            else _EMPTY
        )
    if not keys:
        steps: bytes | list[int] = b""
    elif parts is not None and base == parts.base and keys == parts.keys:
        steps = parts.doc[15]
    else:
        steps = _steps(keys, base)
    flat: list[object] = []
    refunds: list[object] = []  # (position of the order, event id, amount) triples
    prefix = ""
    if stored is not None:  # as read: written back as they were, the first step from the base
        prefix, flat, refunds = stored.fields(base)
    elif orders:
        if len(orders) > 1:
            prefix = _shared_prefix(orders)
        cut, prev = len(prefix), base
        for position, (order_id, r) in enumerate(orders.items()):
            ms = r.ms  # NO_TIME (known only from a cancellation) is a step like any other
            flat += (order_id[cut:], r.flags | 16 if r.paid else r.flags, ms - prev, r.amount)
            prev = ms
            if r.refunds:
                for event_id, amount in r.refunds.items():
                    refunds += (position, event_id, amount)
    return _PACK.encode(
        [
            FORMAT,
            base,
            prefix,
            flat,
            refunds,
            None if first_visit is None else first_visit - base,
            _SAME if keys and last_visit == keys[-1] else _offset(last_visit, base),
            state.region,
            None if region_ms < 0 else _SAME if region_ms == last_visit else region_ms - base,
            dims,
            packed,
            since_dims,
            since,
            packed_version(state.rules_version),
            state.due_day,
            steps,
            [x for name, (ms, v) in sorted(traits.items()) for x in (name, ms - base, v)]
            if traits
            else _EMPTY,
            *_withheld(state),
        ]
    )


def _offset(instant: int | None, base: int) -> int | None:
    return None if instant is None else instant - base


def _steps(instants: list[int], base: int) -> bytes | list[int]:
    """Sorted instants as steps, the first from ``base``: 4 little-endian bytes each while
    every step fits (MessagePack takes 5 for most), else a list."""
    steps = list(map(sub, instants, [base, *instants]))
    try:
        return _uint32s(len(steps)).pack(*steps)
    except struct.error:  # a step below 0 or from 2^32 on
        return steps


@lru_cache(maxsize=1024)
def _uint32s(count: int) -> struct.Struct:
    return struct.Struct(f"<{count}I")


def _shared_prefix(ids: Iterable[str]) -> str:
    """The prefix every id shares: the one the least and the greatest share (a third of
    os.path.commonprefix's cost, which checks and converts every path first)."""
    low, high = min(ids), max(ids)
    n = 0
    for a, b in zip(low, high, strict=False):
        if a != b:
            break
        n += 1
    return low[:n]


@lru_cache(maxsize=4096)  # the class combinations customers are in: few
def _class_layout(
    dims: tuple[str, ...], classes: tuple[str | None, ...], since: tuple[str, ...]
) -> tuple[list[int | str] | None, list[int | str | None], int | list[int | str], tuple[str, ...]]:
    """Fields 9-11: the dimensions (None: the vocabulary's first ones in order, as the
    default rules' are), their classes, and which dimensions have a since instant (a bit
    mask over the dimensions; their names if one is not a dimension); then the order in
    which field 12 lists the since instants."""
    packed = [name_code(d) for d in dims]
    implied = None if packed == list(range(len(dims))) else packed
    if set(since) <= set(dims) and len(dims) < 64:  # a mask MessagePack can hold
        order = tuple(d for d in dims if d in since)
        mask = sum(1 << i for i, d in enumerate(dims) if d in since)
        return implied, [code(c) for c in classes], mask, order
    return implied, [code(c) for c in classes], [name_code(d) for d in since], since


@lru_cache(maxsize=4096)
def _class_names(
    dims: tuple[object, ...] | None, classes: tuple[object, ...], since: int | tuple[object, ...]
) -> tuple[dict[str, str | None], tuple[tuple[str, str | None], ...], tuple[str, ...]]:
    """The inverse of _class_layout: the classes (callers take a copy), the same as pairs
    (what the encoder compares a state's classes with), and the dimensions that have a
    since instant."""
    names = VOCABULARY[: len(classes)] if dims is None else tuple(map(text, dims))
    if len(names) != len(classes):
        raise CorruptRecord("classes and dimensions do not pair up")
    mapping = {d: None if c is None else text(c) for d, c in zip(names, classes, strict=True)}
    items = tuple(mapping.items())
    if isinstance(since, int):
        return mapping, items, tuple(d for i, d in enumerate(names) if since >> i & 1)
    return mapping, items, tuple(map(text, since))


def _withheld(state: CustomerState) -> list[list[int | str | None]]:
    """A trailing field, only while consent withholds a change: (dimension, class now)
    pairs, packed as the classes are."""
    if not state.withheld:
        return []
    return [packed_classes(tuple(state.withheld.items()))]


def declared_format(data: bytes) -> int | None:
    """The format number stored bytes declare, None if they declare none: tells a state a
    newer release wrote (a format above FORMAT) from a damaged one."""
    try:
        doc = _document(data)
    except (orjson.JSONDecodeError, zlib.error, msgspec.DecodeError):
        return None
    if isinstance(doc, list) and doc and type(doc[0]) is int:
        return int(doc[0])
    return None


def _document(data: bytes) -> Any:
    """The array a stored state holds: MessagePack (format 6 on), or JSON (formats 3-5),
    inflated first if it was stored compressed."""
    lead = data[:1]
    if lead == _ZLIB:
        return orjson.loads(zlib.decompress(data))
    if lead == _JSON:
        return orjson.loads(data)
    return _UNPACK.decode(data)


def decode_state(customer_id: str, data: bytes) -> CustomerState:
    try:
        if data[:1] not in (_ZLIB, _JSON):  # MessagePack: format 6 on
            doc = _UNPACK.decode(data)
            if doc.__class__ is list and len(doc) >= 17 and doc[0] == FORMAT:
                return _decode_format_7(customer_id, doc)
            if doc.__class__ is list and len(doc) >= 15 and doc[0] == FORMAT_6:
                return read_format_6(customer_id, doc)
        else:
            doc = _document(data)
        if not isinstance(doc, list) or not doc or doc[0] not in _READ or doc[0] >= FORMAT_6:
            raise CorruptRecord(f"unknown state format for {customer_id!r}")
        return read_json(customer_id, doc)
    except CorruptRecord:
        raise
    except (
        orjson.JSONDecodeError, msgspec.DecodeError, zlib.error, struct.error, IndexError,
        TypeError, ValueError, AttributeError,
    ) as exc:  # fmt: skip
        raise CorruptRecord(f"unreadable state for {customer_id!r}: {exc}") from None


def _decode_format_7(customer_id: str, doc: list[Any]) -> CustomerState:
    """Format 7, every field unpacked at once but the orders and the since instants, left as
    stored (StoredState): the hot path, one per customer per batch."""
    (
        _, base, _, flat, _, first_visit, last_visit, region, region_ms, dims,
        classes, since_dims, since, version, due, keys, traits, *withheld,
    ) = doc  # fmt: skip
    if keys:  # steps, the first from the base; the field itself is kept as read
        if keys.__class__ is bytes:
            keys = _uint32s(len(keys) // 4).unpack(keys)
        keys = list(accumulate(keys, initial=base))
        del keys[0]
    else:
        keys = []
    if last_visit is True:
        last_visit = keys[-1]
    elif last_visit is not None:
        last_visit += base
    if region_ms is True:
        region_ms = last_visit
    elif region_ms is not None:
        region_ms += base
    mapping, items, since_names = _class_names(
        None if dims is None else tuple(dims),
        tuple(classes),
        since_dims if since_dims.__class__ is int else tuple(since_dims),
    )
    if len(since) != len(since_names):
        raise CorruptRecord("since instants and their dimensions do not pair up")
    earliest = min(since) + base if since else None  # checks them too: integers
    stored = StoredState(doc, base, keys.copy(), items, since_names, earliest)
    return CustomerState(
        customer_id,
        None,
        None if first_visit is None else first_visit + base,
        last_visit,
        keys,
        region,
        -1 if region_ms is None else region_ms,
        {traits[i]: (traits[i + 1] + base, traits[i + 2]) for i in range(0, len(traits), 3)}
        if traits
        else {},
        dict(mapping),
        None,
        dict(unpacked_classes(tuple(withheld[0]))) if withheld else {},
        unpacked_version(version),
        due,
        stored if flat else None,
        stored,
    )


class StoredState:
    """Format 7's fields as read, for the parts a batch seldom reads or changes: built only
    when read, written back as they were read while unchanged, re-based if the base moved.

    The orders (fields 2-4: id after the shared prefix, flags with 16 for paid, step from the
    order before (the first's from ``base``), cents quadruples, and (position of the order,
    event id, amount) refund triples): the order records are built only when an order event
    needs them; until then the index is counted straight from the quadruples. The class
    layout and since instants (fields 9-12): written back while the classes are the same and
    the since instants were never read (``since_min``, the earliest, is what they weigh in
    the base). The key actions' field (15): written back while they are the same."""

    __slots__ = (
        "base",
        "class_items",
        "doc",
        "flat",
        "keys",
        "refunds",
        "since_min",
        "since_names",
    )

    def __init__(  # noqa: PLR0917  # positional: one per customer read
        self,
        doc: list[Any],
        base: int,
        keys: list[int],
        class_items: tuple[tuple[str, str | None], ...],
        since_names: tuple[str, ...],
        since_min: int | None,
    ) -> None:
        self.doc, self.base, self.keys, self.flat, self.refunds = doc, base, keys, doc[3], doc[4]
        self.class_items, self.since_names, self.since_min = class_items, since_names, since_min

    def since_ms(self) -> dict[str, int]:
        return dict(zip(self.since_names, map(add, self.doc[12], repeat(self.base)), strict=True))

    def _times(self) -> list[int]:
        steps = self.flat[2::4]
        steps[0] += self.base
        return list(accumulate(steps))

    def first_ms(self) -> int:
        return int(self.flat[2] + self.base)

    def fields(self, base: int) -> tuple[str, list[Any], list[Any]]:
        """Prefix, quadruples and refunds as a state with ``base`` stores them."""
        flat = self.flat
        if base != self.base:
            flat = flat.copy()
            flat[2] += self.base - base
        return self.doc[2], flat, self.refunds

    def records(self) -> dict[str, OrderRecord]:
        orders = order_records(self.doc[2], self.flat, self._times())
        if self.refunds:
            add_refunds(orders, self.refunds)
        return orders

    def counted(self, counting: int) -> list[tuple[int, int]]:
        flat = self.flat
        amounts = flat[3::4]
        selected: Iterable[bool] = map(_counts(counting).__getitem__, flat[1::4])
        if self.refunds:
            selected = list(selected)
            _less_refunds(amounts, selected, self.refunds)
        return list(compress(zip(self._times(), amounts, strict=True), selected))


def _less_refunds(amounts: list[Any], selected: list[bool], refunds: list[Any]) -> None:
    """Partial refunds off their orders' amounts, as OrderRecord.contribution weighs them:
    per order the latest amount per refund event, and an order refunded in full counts no
    more."""
    held: list[dict[Any, Any] | None] = [None] * len(amounts)
    for i in range(0, len(refunds), 3):
        by_event = held[refunds[i]]
        if by_event is None:
            by_event = held[refunds[i]] = {}
        by_event[refunds[i + 1]] = refunds[i + 2]
    for position, by_event in enumerate(held):
        if by_event is not None:
            left = amounts[position] - sum(by_event.values())
            if left > 0:
                amounts[position] = left
            else:
                selected[position] = False


@lru_cache(maxsize=8)
def _counts(counting: int) -> tuple[bool, ...]:
    """Per stored flags value (16 for paid, see StoredState), whether the order counts."""
    return tuple(bool(f & counting) and not f & VOIDED for f in range(32))
