"""What an erasure changes: pure, no servers."""

import orjson

from worker.core.batch import InRecord, Topics, parse_batch
from worker.core.erasure import ERASED_HEADER, erasure, suppress_erased
from worker.core.events import ParseLimits, Rejection
from worker.core.state import CustomerState
from worker.core.timeutil import parse_rfc3339

TOPICS = Topics()
NOW = parse_rfc3339("2026-06-01T00:00:00Z")


def order(offset: int, cid: str, topic: str = TOPICS.orders) -> InRecord:
    doc = {
        "event_id": f"e{offset}",
        "customer_id": cid,
        "occurred_at": "2026-05-01T10:00:00Z",
        "amount": "19.99",
        "currency": "USD",
        "status": "paid",
        "action": "login",  # for a visit
    }
    return InRecord(topic, 0, offset, cid.encode(), orjson.dumps(doc))


def test_erased_customers_events_are_suppressed_and_rejections_kept() -> None:
    records = [
        order(3, "gone"),
        order(4, "kept"),
        InRecord(TOPICS.orders, 0, 5, b"gone", b"{"),  # unreadable: still dead-lettered
        order(8, "gone", TOPICS.visits),
    ]
    parsed = parse_batch(records, TOPICS, NOW, ParseLimits())
    kept = suppress_erased(records, parsed, {"gone"})
    assert [r.offset for r in kept.records] == [4, 5]
    assert kept.parsed == [parsed[1], parsed[2]]
    assert isinstance(kept.parsed[1], Rejection)
    assert dict(kept.suppressed) == {TOPICS.orders: 1, TOPICS.visits: 1}
    # the batch's offsets move past the suppressed events too, or they would be read again
    assert kept.offsets == {TOPICS.orders: 6, TOPICS.visits: 9}


def test_nothing_suppressed_for_other_customers() -> None:
    records = [order(0, "a"), order(1, "b")]
    parsed = parse_batch(records, TOPICS, NOW, ParseLimits())
    kept = suppress_erased(records, parsed, {"c"})
    assert kept.records == records and kept.parsed == parsed
    assert not kept.suppressed


def test_erasure_takes_classes_out_of_the_counts_and_sends_tombstones() -> None:
    previous = CustomerState("a", classes={"value": "gold", "activity": "active", "region": None})
    outcome = erasure(
        [(b"a", previous), (b"b", None)],  # b: never seen, or erased before
        changes_topic=TOPICS.changes,
        classes_topic=TOPICS.classes,
        erasures_topic="erasures",
        next_offset=12,
    )
    assert dict(outcome.population) == {("value", "gold"): -1, ("activity", "active"): -1}
    assert [(r.topic, r.key, r.value, r.headers) for r in outcome.out] == [
        (TOPICS.changes, b"a", None, (ERASED_HEADER,)),
        (TOPICS.classes, b"a", None, (ERASED_HEADER,)),
        (TOPICS.changes, b"b", None, (ERASED_HEADER,)),
        (TOPICS.classes, b"b", None, (ERASED_HEADER,)),
    ]
    assert outcome.offsets == {"erasures": 12}
    assert outcome.states == {}
