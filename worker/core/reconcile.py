"""After Redis lost writes, the change topic knows better: the changes subscribers already saw
decide each customer's classes again, and the input offsets stamped on them tell how far the
lost window went.

Pure: the live worker reads the change topic back and the customers' states, and commits the
outcome (classes, population deltas) in one fenced write.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, NamedTuple

import orjson

from worker.core.batch import Outcome
from worker.core.classes import snapshots
from worker.core.codec import OutRecord
from worker.core.state import CustomerState
from worker.core.timeutil import parse_rfc3339

INPUT_HEADER: Final = "sw.input"  # on change records: input offsets reached, as JSON


class Emitted(NamedTuple):
    """A change record read back from the change topic."""

    event_id: str
    doc: dict[str, Any]
    headers: Sequence[tuple[str, bytes]]


@dataclass(frozen=True, slots=True)
class LostWindow:
    """The changes Kafka holds that Redis has no record of, and the input offsets (per topic)
    that the last of them had reached: input is absorbed unclassified until there."""

    changes: list[dict[str, Any]] = field(default_factory=list)
    until: dict[str, int] = field(default_factory=dict)

    def ahead_of(self, offsets: Mapping[str, int]) -> bool:
        """Whether the lost window reaches past the input offsets Redis holds."""
        return any(offsets.get(topic, 0) < o for topic, o in self.until.items())

    def customers(self) -> list[str]:
        return sorted({str(doc["customer_id"]) for doc in self.changes})


def read_back(records: Iterable[tuple[bytes | None, Sequence[tuple[str, bytes]]]]) -> list[Emitted]:
    """Parse the change records (value, headers) read back from the change topic. Tombstones
    are skipped: re-reading the erasure request repeats the erasure."""
    out = []
    for value, headers in records:
        if value is not None:
            doc = orjson.loads(value)
            out.append(Emitted(str(doc["event_id"]), doc, headers))
    return out


def change_id(record: OutRecord, changes_topic: str) -> str | None:
    """The event id of an outbox record if it is a change (not a tombstone, not a dead letter)."""
    if record.topic != changes_topic or record.value is None:
        return None
    return str(orjson.loads(record.value)["event_id"])


def lost_window(
    emitted: Iterable[Emitted], outbox: Iterable[OutRecord], changes_topic: str
) -> LostWindow:
    """The read-back changes that neither Redis's state nor its outbox knows about."""
    known = {change_id(r, changes_topic) for r in outbox}
    lost = LostWindow()
    for change in emitted:
        if change.event_id in known:
            continue
        lost.changes.append(change.doc)
        for name, value in change.headers:
            if name == INPUT_HEADER:
                for topic, offset in orjson.loads(value).items():
                    lost.until[topic] = max(lost.until.get(topic, 0), offset)
    return lost


def reconcile(
    lost: Sequence[Mapping[str, Any]],
    states: Mapping[str, CustomerState | None],
    classes_topic: str,
) -> Outcome:
    """Set each customer's classes to the last lost change of theirs, following each chain from
    the class Redis holds: a change whose ``from`` is not the current class (a zombie's late
    re-send of an older change) is no continuation. Re-reading the input then continues each
    chain from what subscribers saw. The outcome holds the touched states (updated in place),
    the population deltas and the moved customers' records for the classes topic (which may
    have missed them if Redis lost their outbox before the relay)."""
    current: dict[tuple[str, str], tuple[str | None, int]] = {}
    for doc in lost:
        key = (doc["customer_id"], doc["dimension"])
        state = states.get(key[0])
        held = current.get(key, (state.classes.get(key[1]) if state else None, 0))[0]
        if doc["from"] == held:
            current[key] = (doc["to"], parse_rfc3339(doc["occurred_at"]))
    outcome = Outcome()
    for (cid, dim), (to, at) in current.items():
        state = outcome.states.get(cid) or states.get(cid) or CustomerState(cid)
        old = state.classes.get(dim)
        if old == to:
            continue
        if old is not None:
            outcome.population[(dim, old)] -= 1
        if to is not None:
            outcome.population[(dim, to)] += 1
            state.classes[dim] = to
            state.since_ms[dim] = at
        else:
            state.classes.pop(dim, None)
            state.since_ms.pop(dim, None)
        outcome.states[cid] = state
    outcome.out += snapshots(classes_topic, outcome.states, outcome.states)
    return outcome
