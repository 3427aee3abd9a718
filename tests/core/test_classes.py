"""The records of the compacted classes topic: pure, no servers. Folding them (newest record
per key wins, as compaction keeps it) gives replay's classes for every customer."""

from collections import Counter

import orjson
import pytest

from tests.core.batching import (
    FUTURE,
    LIMITS,
    MEMBER_AT_TWO,
    RULES,
    TOPICS,
    Live,
    event_clock,
    in_batches,
    ran,
    records,
    replay,
)
from worker.core.batch import apply_batch, parse_batch, reevaluate_batch
from worker.core.classes import (
    ERASED_HEADER,
    classes_document,
    classes_record,
    classes_tombstone,
)
from worker.core.outbox import OutRecord
from worker.core.state import CustomerState
from worker.core.timeutil import format_ms, parse_rfc3339

T0 = parse_rfc3339("2026-03-02T10:00:00Z")
AS_OF = parse_rfc3339("2025-06-01T00:00:00Z")


def fold(out: list[OutRecord]) -> dict[str, dict[str, object]]:
    """What a reader of the compacted topic rebuilds: the newest value per key, erased
    customers (tombstones) and customers in no class dropped."""
    latest: dict[bytes, bytes | None] = {}
    for record in out:
        if record.topic == TOPICS.classes:
            assert record.key is not None
            latest[record.key] = record.value
    docs = {k.decode(): orjson.loads(v) for k, v in latest.items() if v is not None}
    return {cid: doc for cid, doc in docs.items() if doc["classes"]}


def names(doc: dict[str, object]) -> dict[str, object]:
    """dimension -> class of a classes document."""
    classes = doc["classes"]
    assert isinstance(classes, dict)
    return {dim: entry["class"] for dim, entry in classes.items()}


def test_document_holds_each_class_and_when_it_was_entered() -> None:
    state = CustomerState(
        "c1",
        classes={"value_tier": "high", "lifecycle": "active", "rfm": None},
        since_ms={"value_tier": T0, "lifecycle": T0 - 1000},
    )
    assert classes_document(state) == {
        "customer_id": "c1",
        "classes": {
            "lifecycle": {"class": "active", "since": format_ms(T0 - 1000)},
            "value_tier": {"class": "high", "since": format_ms(T0)},
        },
    }
    record = classes_record("segment-classes", state)
    assert (record.topic, record.key, record.headers) == ("segment-classes", b"c1", ())
    assert orjson.loads(record.value or b"") == classes_document(state)
    # A state read back from Redis and re-encoded gives the same bytes: duplicates are equal.
    assert classes_record("segment-classes", state) == record


def test_tombstone_is_a_null_value_marked_erased() -> None:
    assert classes_tombstone("segment-classes", b"c1") == OutRecord(
        "segment-classes", b"c1", None, (ERASED_HEADER,)
    )


def test_batches_of_one_publish_replays_classes_and_since_for_every_customer() -> None:
    batch = records(6000)
    replayer, _ = replay(batch, AS_OF)
    live = Live()
    for chunk, _, clock in in_batches(batch, 1):
        live.run(chunk, clock)
    live.sweep(AS_OF)
    want = {
        cid: classes_document(s) for cid, s in replayer.states.items() if any(s.classes.values())
    }
    assert fold(live.out) == want
    # Superseded records are what compaction removes: there are many.
    assert len([r for r in live.out if r.topic == TOPICS.classes]) > 2 * len(want)


@pytest.mark.parametrize("size", [7, 500])
def test_a_batch_publishes_each_moved_customer_once_with_its_final_classes(size: int) -> None:
    batch = records(4000, seed=12)
    replayer, _ = replay(batch, AS_OF)
    live = Live()
    for chunk, parsed, clock in in_batches(batch, size):
        outcome = apply_batch(
            chunk, parsed, live.load(sorted({r.key.decode() for r in chunk if r.key})),
            rules=RULES, topics=TOPICS, now_ms=clock,
        )  # fmt: skip
        published = [r for r in outcome.out if r.topic == TOPICS.classes]
        keys = Counter(r.key for r in published)
        assert set(keys) == {c.customer_id.encode() for c in outcome.changes}
        assert max(keys.values(), default=1) == 1
        for r in published:
            cid = (r.key or b"").decode()
            assert orjson.loads(r.value or b"") == classes_document(outcome.states[cid])
        live.store(outcome)
        live.sweep(clock)
    live.sweep(AS_OF)
    # Which day a class was entered may differ with the batching; the classes may not.
    got = {cid: names(doc) for cid, doc in fold(live.out).items()}
    want = {
        cid: names(classes_document(s))
        for cid, s in replayer.states.items()
        if any(s.classes.values())
    }
    assert got == want


def test_quiet_absorption_publishes_nothing() -> None:
    batch = records(800, seed=17)
    parsed = parse_batch(batch, TOPICS, FUTURE, LIMITS)
    clock = event_clock(parsed)
    outcome = apply_batch(batch, parsed, {}, rules=RULES, topics=TOPICS, now_ms=clock, quiet=True)
    assert outcome.states and not [r for r in outcome.out if r.topic == TOPICS.classes]


def test_a_rules_change_publishes_the_customers_it_moved() -> None:
    live, clock = ran(records(800, seed=13))
    outcome = reevaluate_batch(live.load(sorted(live.redis)), MEMBER_AT_TWO, TOPICS, clock)
    moved = {c.customer_id for c in outcome.changes}
    assert moved
    published = {
        (r.key or b"").decode(): orjson.loads(r.value or b"")
        for r in outcome.out
        if r.topic == TOPICS.classes
    }
    assert published == {cid: classes_document(outcome.states[cid]) for cid in moved}
    assert all(doc["classes"]["membership"]["class"] == "member" for doc in published.values())
