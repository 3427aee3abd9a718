"""Audiences for marketers: who is in a class right now (``segment-worker audience``) and how
many customers each class holds (``GET /segments``), read from the worker's Redis.

A member is a customer whose stored state holds the class as its current one in the
dimension: the class last emitted on the change topic, so an audience agrees with the changes
a subscriber has seen and with the class populations.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field

from worker.core.codec import decode_state
from worker.core.packing import CorruptRecord
from worker.core.rules import Rules
from worker.core.timeutil import format_ms
from worker.core.views import Show
from worker.errors import SegmentWorkerError
from worker.store import Store

Member = dict[str, object]
"""One member of an audience: the fields :func:`columns` names."""


class UnknownClass(SegmentWorkerError):
    """Raised when an audience names a dimension or class the rules do not have; the message
    lists the ones they do have."""


def check_class(rules: Rules, dimension: str, class_name: str | None = None) -> None:
    """Refuse a dimension (or one of its classes) the rules do not define, naming the valid
    ones."""
    dimensions = {d.name: d for d in rules.dimensions}
    found = dimensions.get(dimension)
    if found is None:
        raise UnknownClass(
            f"unknown dimension {dimension!r}; the rules have: {', '.join(dimensions)}"
        )
    classes = [c.name for c in found.classes]
    if class_name is not None and class_name not in classes:
        raise UnknownClass(
            f"dimension {dimension!r} has no class {class_name!r}; its classes: "
            + ", ".join(classes)
        )


def columns(rules: Rules | None) -> list[str]:
    """The fields of a member, in output order: who, since when, and their RFM figures
    (recency as the last order, frequency and monetary as totals and per window, scores),
    which the rules compute (None: no rules, no figures)."""
    out = ["customer_id", "class", "since"]
    if rules is None:
        return out
    out += ["last_order_at", "orders_total", "monetary_total"]
    for n in rules.windows:
        out += [f"orders_{n}d", f"spend_{n}d"]
    out += [f"{score.name}_score" for score in rules.scores]
    return out


@dataclass
class Tally:
    """How far a scan has got: customers read, members found, states that cannot be read."""

    scanned: int = 0
    members: int = 0
    unreadable: list[str] = field(default_factory=list)


async def members(
    store: Store,
    dimension: str,
    class_name: str,
    *,
    show: Show,
    fields: Sequence[str],
    tally: Tally,
) -> AsyncIterator[list[Member]]:
    """The customers currently in ``class_name`` of ``dimension``, a scan batch at a time
    (possibly empty): the ``fields`` (:func:`columns`) of each as ``show`` shows it (views.py).
    Each customer at most once (SCAN may return a key twice); ``tally`` counts as it goes."""
    seen: set[str] = set()  # members only: SCAN repeats are rare and only members are output
    async for batch in store.every_state():
        found = []
        for _, customer_id, blob in batch:
            tally.scanned += 1
            try:
                state = decode_state(customer_id, blob)
            except CorruptRecord:
                tally.unreadable.append(customer_id)
                continue
            if state.classes.get(dimension) != class_name or customer_id in seen:
                continue
            seen.add(customer_id)
            body = show(state)
            body["class"] = class_name
            body["since"] = format_ms(state.since_ms[dimension])
            found.append({name: body[name] for name in fields})
        tally.members += len(found)
        yield found


async def populations(
    store: Store, rules: Rules | None, partitions: int
) -> dict[str, dict[str, int]]:
    """Customers per class of every dimension, summed over the input partitions (the counts
    every commit keeps in the partitions' meta hashes): each class of the rules, zero
    included, in the rules' order; a class the rules no longer have while customers remain
    in it, after them (without rules: the classes that hold customers)."""
    dimensions = () if rules is None else rules.dimensions
    out = {d.name: dict.fromkeys((c.name for c in d.classes), 0) for d in dimensions}
    for partition in range(partitions):
        for (dimension, class_name), count in (await store.populations(partition)).items():
            classes = out.setdefault(dimension, {})
            classes[class_name] = classes.get(class_name, 0) + count
    known = {d.name: {c.name for c in d.classes} for d in dimensions}
    kept = {
        dimension: {name: n for name, n in classes.items() if n or name in known.get(dimension, ())}
        for dimension, classes in out.items()
    }
    return {dimension: classes for dimension, classes in kept.items() if classes}
