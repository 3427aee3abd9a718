"""What an erasure request changes: the customer's events stop counting, their classes leave
the population counts, and a tombstone goes to the change topic and the classes topic.

Pure: the live worker deletes the state in Redis (fenced, leaving a marker) and commits the
outcome returned here.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import NamedTuple

from worker.core.batch import InRecord, Outcome
from worker.core.classes import ERASED_HEADER, classes_tombstone
from worker.core.events import Event, Rejection
from worker.core.outbox import OutRecord
from worker.core.populations import counted_in
from worker.core.state import CustomerState


class Kept(NamedTuple):
    """A batch without the events of erased customers."""

    records: list[InRecord]
    parsed: list[Event | Rejection]
    suppressed: Counter[str]  # by input topic
    offsets: dict[str, int]  # the whole batch's, suppressed events included


def suppress_erased(
    records: Sequence[InRecord], parsed: Sequence[Event | Rejection], erased: set[str]
) -> Kept:
    """Drop the events of erased customers, so that their late or replayed events do not
    resurrect them; rejections stay, to be dead-lettered."""
    keep = [
        i for i, p in enumerate(parsed) if isinstance(p, Rejection) or p.customer_id not in erased
    ]
    kept = set(keep)
    suppressed = Counter(r.topic for i, r in enumerate(records) if i not in kept)
    offsets = {r.topic: r.offset + 1 for r in records}
    return Kept([records[i] for i in keep], [parsed[i] for i in keep], suppressed, offsets)


def erasure(
    erased: Sequence[tuple[bytes, CustomerState | None]],
    *,
    changes_topic: str,
    classes_topic: str,
    erasures_topic: str,
    next_offset: int,
    into: Outcome | None = None,
) -> Outcome:
    """The outcome to commit once each (key, previous state) customer's state is deleted: their
    classes leave the population counts, a tombstone (null value) per customer goes to the
    change topic and the classes topic, and the erasure topic's offset moves to
    ``next_offset``. ``into``: the outcome to add this to (the dead-lettered requests of
    :func:`worker.core.batch.accept_erasures`)."""
    outcome = Outcome() if into is None else into
    for key, previous in erased:
        if previous is not None:
            outcome.population.subtract(counted_in(previous))
        outcome.out.append(OutRecord(changes_topic, key, None, (ERASED_HEADER,)))
        outcome.out.append(classes_tombstone(classes_topic, key))
    outcome.offsets[erasures_topic] = next_offset
    return outcome
