"""What the batch-step tests share: simulated input records, the live worker's loop over a
dict standing in for Redis, replay of the same records, and the input cut into batches with
the event clock."""

from collections import defaultdict
from collections.abc import Iterator
from itertools import islice

import orjson

from worker.core.batch import InRecord, Topics, apply_batch, customers_of, parse_batch, sweep
from worker.core.changes import SegmentChange
from worker.core.codec import decode_state, encode_state
from worker.core.events import Event, ParseLimits, Rejection
from worker.core.outbox import OutRecord
from worker.core.rules import default_rules_text, load_rules, parse_rules
from worker.core.state import CustomerState
from worker.core.timeutil import parse_rfc3339
from worker.replay import Replayer
from worker.tools.simulate import FeedFaults, Simulator

RULES = load_rules(None)
TOPICS = Topics()
FUTURE = parse_rfc3339("2100-01-01T00:00:00Z")
LIMITS = ParseLimits()
START = parse_rfc3339("2025-01-01T00:00:00Z")
MEMBER_AT_TWO = parse_rules(
    default_rules_text().replace(b'orders_total >= 3" }', b'orders_total >= 2" }'), "new"
)
"""The default rules with membership from 2 orders, not 3: a change that moves customers."""


def document(change: SegmentChange) -> dict[str, object]:
    """A change as published, but for when it was emitted (the one field allowed to differ)."""
    doc: dict[str, object] = orjson.loads(change.to_json())
    del doc["emitted_at"]
    return doc


def records(count: int, seed: int = 11) -> list[InRecord]:
    sim = Simulator(seed, 300, START, faults=FeedFaults.realistic())
    return [InRecord(e.topic, 0, n, e.key, e.value) for n, e in enumerate(islice(sim, count))]


class Live:
    """The worker's loop with a dict of encoded states standing in for Redis."""

    def __init__(self) -> None:
        self.redis: dict[str, bytes] = {}
        self.out: list[OutRecord] = []
        self.changes: dict[str, list[dict[str, object]]] = defaultdict(list)

    def load(self, customer_ids: list[str]) -> dict[str, CustomerState | None]:
        return {
            c: decode_state(c, self.redis[c]) if c in self.redis else None for c in customer_ids
        }

    def run(self, batch: list[InRecord], now_ms: int) -> None:
        parsed = parse_batch(batch, TOPICS, FUTURE, LIMITS)
        outcome = apply_batch(
            batch,
            parsed,
            self.load(customers_of(parsed)),
            rules=RULES,
            topics=TOPICS,
            now_ms=now_ms,
        )
        self.store(outcome)

    def sweep(self, now_ms: int) -> None:
        self.store(sweep(self.load(sorted(self.redis)), RULES, TOPICS, now_ms))

    def store(self, outcome) -> None:  # type: ignore[no-untyped-def]
        for cid, state in outcome.states.items():
            self.redis[cid] = encode_state(state)
        self.out += outcome.out
        for change in outcome.changes:
            self.changes[change.customer_id].append(document(change))


def replay(
    batch: list[InRecord], as_of: int
) -> tuple[Replayer, dict[str, list[dict[str, object]]]]:
    changes: dict[str, list[dict[str, object]]] = defaultdict(list)
    replayer = Replayer(
        RULES,
        lambda c: changes[c.customer_id].append(document(c)),
        lambda *_: None,
        limits=LIMITS,
        future_reference_ms=FUTURE,
    )
    for r in batch:
        kind = b"order" if r.topic == "orders" else b"visit"
        assert r.value is not None
        line = (
            r.value if not r.value.startswith(b"{") else b'{"type":"' + kind + b'",' + r.value[1:]
        )
        replayer.feed(line, r.offset)
    replayer.advance(as_of)
    return replayer, changes


def event_clock(parsed: list[Event | Rejection], clock: int = 0) -> int:
    """The event clock after ``parsed``: the latest instant a valid event occurred at, or
    ``clock`` if none is later (as a worker whose clock follows its input sees it)."""
    return max([clock, *(p.occurred_ms for p in parsed if not isinstance(p, Rejection))])


def in_batches(
    batch: list[InRecord], size: int
) -> Iterator[tuple[list[InRecord], list[Event | Rejection], int]]:
    """``batch`` cut into batches of ``size`` records, each with what ``parse_batch`` makes
    of it and the event clock once it is read (see :func:`event_clock`)."""
    clock = 0
    for i in range(0, len(batch), size):
        chunk = batch[i : i + size]
        parsed = parse_batch(chunk, TOPICS, FUTURE, LIMITS)
        clock = event_clock(parsed, clock)
        yield chunk, parsed, clock


def ran(batch: list[InRecord]) -> tuple[Live, int]:
    """A :class:`Live` that applied ``batch`` in one go at its event clock, and that clock."""
    live = Live()
    clock = event_clock(parse_batch(batch, TOPICS, FUTURE, LIMITS))
    live.run(batch, clock)
    return live, clock
