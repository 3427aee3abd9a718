"""A consumer batch, or a timer sweep, through the core, as the live worker runs it.

Pure: records in, touched states and outgoing records out. The worker does the I/O around it
(one Redis read of the states, one atomic Redis commit of the outcome), so that what it does
per event is the same code replay runs and the tests check against the oracle.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Final, NamedTuple

from worker.core.changes import SegmentChange
from worker.core.classes import snapshots
from worker.core.deadletter import Stage
from worker.core.engine import Changes, absorb, fire_timer, process_event, reevaluate
from worker.core.events import (
    Event,
    EventKind,
    ParseLimits,
    Reason,
    Rejection,
    parse_event,
    valid_id,
)
from worker.core.outbox import OutRecord
from worker.core.partitioner import partition_of
from worker.core.rules import Rules
from worker.core.state import CustomerState
from worker.core.timeutil import Calendar

DLQ_VALUE_LIMIT: Final = 64 * 1024
_KAFKA_REASONS: Final = frozenset({Reason.MISSING_KEY, Reason.KEY_MISMATCH, Reason.WRONG_PARTITION})


@dataclass(frozen=True, slots=True)
class Topics:
    orders: str = "orders"
    visits: str = "visits"
    changes: str = "segment-changes"
    dlq: str = "segment-worker-dlq"
    classes: str = "segment-classes"
    profiles: str = "profiles"

    def kind(self, topic: str) -> EventKind:
        """The contract of an input topic's records: any topic but orders' and profiles' is
        visits'."""
        return "order" if topic == self.orders else "profile" if topic == self.profiles else "visit"


class InRecord(NamedTuple):  # immutable and cheap to build: one per input record
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: tuple[tuple[str, bytes], ...] = ()


@dataclass(slots=True)
class Outcome:
    """What one batch or sweep did; ``states`` are the customers it touched."""

    states: dict[str, CustomerState] = field(default_factory=dict)
    out: list[OutRecord] = field(default_factory=list)
    offsets: dict[str, int] = field(default_factory=dict)
    applied: Counter[str] = field(default_factory=Counter)
    rejected: Counter[str] = field(default_factory=Counter)  # by reason
    dead_lettered: Counter[str] = field(default_factory=Counter)  # by input topic
    changes: list[SegmentChange] = field(default_factory=list)
    timers: int = 0
    population: Counter[tuple[str, str]] = field(default_factory=Counter)  # extra deltas
    withheld: Counter[str] = field(
        default_factory=Counter
    )  # changes consent withheld, by dimension

    def population_deltas(self) -> Counter[tuple[str, str]]:
        """How many customers entered (+) and left (-) each (dimension, class), the extra
        deltas included. Summed with ``update``: ``Counter + Counter`` drops the negative
        counts, and with them every customer who left a class."""
        deltas: Counter[tuple[str, str]] = Counter()
        deltas.update(self.population)
        for change in self.changes:
            if change.from_class is not None:
                deltas[(change.dimension, change.from_class)] -= 1
            if change.to_class is not None:
                deltas[(change.dimension, change.to_class)] += 1
        return deltas

    def withhold(self, topics: Collection[str], keys: set[bytes]) -> None:
        """Keep these customers' records for ``topics`` out of the outbox: they are erased in
        this same batch, so nothing more about them may leave."""
        self.out = [r for r in self.out if r.topic not in topics or r.key not in keys]

    def due_ms(self, calendar: Calendar) -> dict[str, int | None]:
        """When each touched customer is next due: the start of its due day, local time."""
        start = calendar.start_ms
        return {
            cid: None if s.due_day is None else start(s.due_day) for cid, s in self.states.items()
        }


def parse_batch(
    records: Sequence[InRecord],
    topics: Topics,
    now_ms: int,
    limits: ParseLimits,
    partitions: int | None = None,
) -> list[Event | Rejection]:
    """Validate every record, Kafka-level checks (key present, key == customer_id) included.

    ``partitions``: the input topics' partition count; a record whose key Kafka's default
    partitioner puts on another partition is refused (``wrong_partition``). Its producer
    partitions another way (librdkafka's CRC32, sarama's FNV): applied here, it would start a
    second state for the customer, one that lookups and erasures never find."""
    out: list[Event | Rejection] = []
    for record in records:
        kind = topics.kind(record.topic)
        if record.value is None:
            out.append(Rejection(Reason.NOT_AN_OBJECT, None, "message has no value (tombstone)"))
            continue
        event = parse_event(record.value, kind, now_ms=now_ms, limits=limits)
        if not isinstance(event, Rejection):
            if record.key is None:
                event = Rejection(Reason.MISSING_KEY, None, "message has no key")
            elif record.key != event.customer_id.encode():
                event = Rejection(
                    Reason.KEY_MISMATCH,
                    "customer_id",
                    f"key {record.key[:64]!r} differs from customer_id {event.customer_id[:64]!r}",
                )
            else:
                event = _wrong_partition(record, event.customer_id, partitions) or event
        out.append(event)
    return out


def accept_erasures(
    records: Sequence[InRecord],
    outcome: Outcome,
    topics: Topics,
    limits: ParseLimits,
    partitions: int | None,
) -> list[tuple[bytes, str]]:
    """The erasure requests to carry out, as (key, the customer id it names); the others are
    dead-lettered into ``outcome``: no key, an id no event can carry (no customer has it), or
    a key on another partition than Kafka's default partitioner's (the customer's state
    lives there: erasing here would erase nothing, yet answer with a tombstone)."""
    accepted = []
    for record in records:
        customer_id = (record.key or b"").decode("utf-8", "replace")
        refused: Rejection | None
        if record.key is None:
            refused = Rejection(Reason.MISSING_KEY, None, "erasure request has no key")
        elif not valid_id(customer_id, limits):
            refused = Rejection(
                Reason.INVALID_VALUE, "key", f"must be 1..{limits.max_id_length} characters"
            )
        else:
            refused = _wrong_partition(record, customer_id, partitions)
            if refused is None:
                accepted.append((record.key, customer_id))
                continue
        _dead_letter(outcome, topics, record, refused, "kafka")
    return accepted


def _wrong_partition(
    record: InRecord, customer_id: str, partitions: int | None
) -> Rejection | None:
    """Why a record keyed by ``customer_id`` does not belong to its partition; None if it
    does, or if the partition count is not known (replay)."""
    if partitions is None:
        return None
    want = partition_of(customer_id, partitions)
    if want == record.partition:
        return None
    return Rejection(
        Reason.WRONG_PARTITION,
        "customer_id",
        f"came on partition {record.partition}, but Kafka's default partitioner (murmur2) puts "
        f"this key on {want} of {partitions}: the producer must use it",
    )


def customers_of(parsed: Iterable[Event | Rejection]) -> list[str]:
    """The customers a batch touches, in first-seen order: the keys to read from Redis."""
    return list(dict.fromkeys(e.customer_id for e in parsed if not isinstance(e, Rejection)))


def apply_batch(
    records: Sequence[InRecord],
    parsed: Sequence[Event | Rejection],
    states: Mapping[str, CustomerState | None],
    *,
    rules: Rules,
    topics: Topics,
    now_ms: int,
    quiet: bool = False,
) -> Outcome:
    """Fold the batch in record order. A customer whose timer is overdue has it fired first,
    exactly as replay does, so the same input yields the same changes in both.

    ``quiet``: absorb the events without classification and make their customers due at
    once. For input re-read after Redis lost writes whose changes subscribers already have:
    the caller holds the timer until the re-read is over, then each customer is classified
    once, from the classes subscribers last saw."""
    outcome = Outcome()
    for record, event in zip(records, parsed, strict=True):
        outcome.offsets[record.topic] = max(outcome.offsets.get(record.topic, 0), record.offset + 1)
        if isinstance(event, Rejection):
            stage: Stage = "kafka" if event.reason in _KAFKA_REASONS else "parse"
            _dead_letter(outcome, topics, record, event, stage)
            continue
        state = outcome.states.get(event.customer_id) or states.get(event.customer_id)
        if quiet:
            state = state or CustomerState(event.customer_id)
            refused = absorb(state, event, rules)
            if refused is not None:
                _dead_letter(outcome, topics, record, refused, "apply")
                continue
            state.due_day = rules.calendar.day_of(now_ms)
            outcome.states[event.customer_id] = state
            outcome.applied[record.topic] += 1
            continue
        if state is None:
            state = CustomerState(event.customer_id)
        else:
            _catch_up(outcome, state, rules, topics, now_ms)
        result = process_event(state, event, rules, now_ms, now_ms)
        if isinstance(result, Rejection):
            _dead_letter(outcome, topics, record, result, "apply")
            continue
        outcome.states[event.customer_id] = state
        outcome.applied[record.topic] += 1
        _emit(outcome, topics, result)
    return _publish(outcome, topics)


def sweep(
    states: Mapping[str, CustomerState | None], rules: Rules, topics: Topics, now_ms: int
) -> Outcome:
    """Fire the timers of due customers (a customer may have been indexed under an older due
    time, or have none left: then it is only re-indexed)."""
    outcome = Outcome()
    for customer_id in sorted(states):
        state = states[customer_id]
        if state is None:
            continue
        _catch_up(outcome, state, rules, topics, now_ms)
        outcome.states[customer_id] = state
    return _publish(outcome, topics)


def reevaluate_batch(
    states: Mapping[str, CustomerState | None], rules: Rules, topics: Topics, now_ms: int
) -> Outcome:
    """Move customers classified under older rules to ``rules`` (hot reload): one
    re-classification at ``now_ms`` whose changes carry the cause ``rules_change`` (an overdue
    timer's change is part of it)."""
    outcome = Outcome()
    for customer_id in sorted(states):
        state = states[customer_id]
        if state is None or state.rules_version == rules.version:
            continue
        if not state.rules_version:
            # Never classified: absorbed (``quiet``) after Redis lost writes, and due. Its
            # timer classifies it, as the sweep would: re-classifying it at ``now_ms`` would
            # skip the timer days between and leave another next due day than replay's.
            _catch_up(outcome, state, rules, topics, now_ms)
        else:
            _emit(outcome, topics, reevaluate(state, rules, now_ms, now_ms))
        outcome.states[customer_id] = state
    return _publish(outcome, topics)


def _catch_up(
    outcome: Outcome, state: CustomerState, rules: Rules, topics: Topics, now_ms: int
) -> None:
    start = rules.calendar.start_ms
    while state.due_day is not None and start(state.due_day) <= now_ms:
        outcome.timers += 1
        _emit(outcome, topics, fire_timer(state, rules, state.due_day, now_ms))
        outcome.states[state.customer_id] = state


def _emit(outcome: Outcome, topics: Topics, changes: Changes) -> None:
    if changes.withheld:  # seldom; Counter.update costs ~0.5 us a call even when empty
        outcome.withheld.update(changes.withheld)
    for change in changes:
        outcome.changes.append(change)
        outcome.out.append(change_record(topics, change))


def _publish(outcome: Outcome, topics: Topics) -> Outcome:
    """After the changes: the classes where each moved customer ended, for the compacted
    classes topic (at most one record per customer per batch)."""
    moved = (change.customer_id for change in outcome.changes)
    outcome.out += snapshots(topics.classes, outcome.states, moved)
    return outcome


def change_record(topics: Topics, change: SegmentChange) -> OutRecord:
    """Headers let a subscriber filter on dimension or target class without parsing JSON."""
    return OutRecord(
        topics.changes,
        change.customer_id.encode(),
        change.to_json(),
        (
            ("dimension", change.dimension.encode()),
            ("to", (change.to_class or "").encode()),
            ("rules_version", change.rules_version.encode()),
            ("event_id", change.event_id.encode()),
        ),
    )


def _dead_letter(
    outcome: Outcome, topics: Topics, record: InRecord, rejection: Rejection, stage: Stage
) -> None:
    outcome.rejected[rejection.reason.value] += 1
    outcome.dead_lettered[record.topic] += 1
    outcome.out.append(dead_letter_record(topics, record, rejection, stage))


def dead_letter_record(
    topics: Topics, record: InRecord, rejection: Rejection, stage: Stage
) -> OutRecord:
    """The original key, value and headers, plus headers saying where it came from and why."""
    value = record.value
    digest = hashlib.sha256(value or b"").hexdigest()
    truncated = value is not None and len(value) > DLQ_VALUE_LIMIT
    if value is not None and truncated:
        value = value[:DLQ_VALUE_LIMIT]
    headers = (
        *record.headers,
        ("dlq.source.topic", record.topic.encode()),
        ("dlq.source.partition", str(record.partition).encode()),
        ("dlq.source.offset", str(record.offset).encode()),
        ("dlq.stage", stage.encode()),
        ("dlq.error.class", rejection.reason.value.encode()),
        ("dlq.error.field", (rejection.field or "").encode()),
        ("dlq.error.message", rejection.message[:1024].encode("utf-8", "replace")),
        ("dlq.value.sha256", digest.encode()),
        ("dlq.value.truncated", b"true" if truncated else b"false"),
    )
    return OutRecord(topics.dlq, record.key, value, headers)
