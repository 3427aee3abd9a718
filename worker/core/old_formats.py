"""States written by earlier releases (formats 3-6), read so that an upgrade needs no
migration: the live worker rewrites each in the current format the next time it commits it."""

from __future__ import annotations

from itertools import accumulate
from typing import Any, Final

from worker.core.packing import (
    add_refunds,
    order_records,
    text,
    unpacked_classes,
    unpacked_version,
)
from worker.core.state import NO_TIME, CustomerState, OrderRecord

FORMAT_6: Final = 6  # MessagePack; instants from one base, classes as pairs
FORMAT_5: Final = 5  # JSON; classes as nested lists, key actions as offsets
FORMAT_4: Final = 4  # format 5 less the partial refunds and key actions
FORMAT_3: Final = 3  # states written before format 4


def read_format_6(customer_id: str, doc: list[Any]) -> CustomerState:
    """Format 6 (MessagePack): instants as offsets from one base, classes as flat pairs."""
    (
        _, base, prefix, flat, first_visit, last_visit, region, region_ms, classes,
        version, due, refunds, keys, traits, since, *withheld,
    ) = doc  # fmt: skip
    orders = _orders(prefix, flat, base)
    if refunds:
        add_refunds(orders, refunds)
    if keys:  # steps from the base, each from the one before
        keys[0] += base
    dims = unpacked_classes(tuple(classes))
    return CustomerState(
        customer_id,
        orders,
        None if first_visit is None else first_visit + base,
        None if last_visit is None else last_visit + base,
        list(accumulate(keys)),
        region,
        -1 if region_ms is None else region_ms + base,
        {traits[i]: (traits[i + 1] + base, traits[i + 2]) for i in range(0, len(traits), 3)},
        dict(dims),
        {dim: at + base for dim, at in zip(dims, since, strict=True) if at is not None},
        dict(unpacked_classes(tuple(withheld[0]))) if withheld else {},
        unpacked_version(version),
        due,
    )


def _orders(prefix: str, flat: list[Any], base: int) -> dict[str, OrderRecord]:
    """Formats 3-6 store each order's instant as an offset from ``base`` (null: known only
    from a cancellation)."""
    times = [NO_TIME if at is None else at + base for at in flat[2::4]]
    return order_records(prefix, flat, times)


def read_json(customer_id: str, doc: list[Any]) -> CustomerState:
    """Formats 3-5 (positional JSON): instants as offsets from the state's earliest."""
    form = doc[0]
    if form == FORMAT_3:
        _, base, flat, *rest = doc
        prefix = ""
    else:
        _, base, prefix, flat, *rest = doc
    orders = _orders(prefix, flat, base)
    state = _state(customer_id, orders, base, rest[:7])
    classes, since_ms, entries = state.classes, state.since_ms, rest[4]
    if form == FORMAT_3:  # (dimension, class or null, since or null) triples
        for i in range(0, len(entries), 3):
            dim, cls, since = text(entries[i]), entries[i + 1], entries[i + 2]
            classes[dim] = None if cls is None else text(cls)
            if since is not None:
                since_ms[dim] = since + base
    else:  # formats 4 and 5: [dimension], [dimension, class] or [dimension, class, since]
        for entry in entries:
            dim = text(entry[0])
            classes[dim] = None if len(entry) == 1 else text(entry[1])
            if len(entry) == 3:
                since_ms[dim] = entry[2] + base
    if form == FORMAT_5:
        refunds, keys, traits, *withheld = rest[7:]
        add_refunds(orders, refunds)
        state.key_actions = [offset + base for offset in keys]
        for i in range(0, len(traits), 3):
            state.traits[traits[i]] = (traits[i + 1] + base, traits[i + 2])
        for entry in withheld[0] if withheld else ():  # [dimension] or [dimension, class]
            state.withheld[text(entry[0])] = None if len(entry) == 1 else text(entry[1])
    return state


def _state(
    customer_id: str, orders: dict[str, OrderRecord], base: int, rest: list[Any]
) -> CustomerState:
    """The fields every format ends with: visits, region, classes (read by the caller),
    rules version, due day."""
    first_visit, last_visit, region, region_ms, _classes, version, due = rest
    return CustomerState(
        customer_id,
        orders=orders,
        first_visit_ms=_plus(first_visit, base),
        last_visit_ms=_plus(last_visit, base),
        region=region,
        region_ms=-1 if region_ms is None else region_ms + base,
        rules_version=unpacked_version(version),
        due_day=due,
    )


def _plus(offset: int | None, base: int) -> int | None:
    return None if offset is None else offset + base
