"""The traffic simulator: reproducible, realistic, and misbehaving exactly as configured."""

from collections import Counter
from itertools import islice

from worker.core.events import ParseLimits, Rejection, parse_event
from worker.core.timeutil import parse_rfc3339
from worker.tools.simulate import FeedFaults, SimEvent, Simulator

START = parse_rfc3339("2025-01-01T00:00:00Z")
NOW = parse_rfc3339("2030-01-01T00:00:00Z")


def deliveries(seed: int, count: int, faults: FeedFaults | None = None) -> list[SimEvent]:
    return list(islice(Simulator(seed, 500, START, faults=faults), count))


def test_same_seed_same_bytes_and_different_seed_different_bytes() -> None:
    assert deliveries(3, 2000) == deliveries(3, 2000)
    assert deliveries(3, 2000) != deliveries(4, 2000)


def test_clean_feed_is_valid_in_delivery_order_and_keyed_by_customer() -> None:
    events = deliveries(5, 20_000)
    assert [e.delivered_ms for e in events] == sorted(e.delivered_ms for e in events)
    kinds: Counter[str] = Counter()
    for e in events:
        parsed = parse_event(
            e.value, "order" if e.topic == "orders" else "visit", now_ms=NOW, limits=ParseLimits()
        )
        assert not isinstance(parsed, Rejection), (parsed, e.value)
        assert parsed.customer_id.encode() == e.key
        kinds[type(parsed).__name__] += 1
        assert parse_event(e.jsonl(), None, now_ms=NOW, limits=ParseLimits()) == parsed
    assert 0.1 < kinds["Order"] / len(events) < 0.5


def test_activity_is_skewed_and_personas_mix() -> None:
    per_customer = Counter(e.key for e in deliveries(6, 30_000))
    counts = sorted(per_customer.values(), reverse=True)
    top_tenth = sum(counts[: len(counts) // 10])
    assert top_tenth > 0.25 * sum(counts)  # heavy users dominate, as in real shops
    assert counts[-1] < 10


def test_faults_come_at_their_rates_and_every_malformed_payload_is_rejected() -> None:
    faults = FeedFaults(duplicate=0.02, out_of_order=0.05, late=0.01, malformed=0.03)
    events = deliveries(7, 40_000, faults)
    rejected: Counter[str] = Counter()
    seen: Counter[bytes] = Counter()
    late = 0
    for e in events:
        seen[e.value] += 1
        parsed = parse_event(
            e.value, "order" if e.topic == "orders" else "visit", now_ms=NOW, limits=ParseLimits()
        )
        if isinstance(parsed, Rejection):
            rejected[parsed.reason.value] += 1
        elif e.delivered_ms - parsed.occurred_ms > 86_400_000:
            late += 1
    total = len(events)
    assert 0.02 < sum(rejected.values()) / total < 0.04
    assert len(rejected) >= 9  # every kind of damage shows up
    assert 0.01 < sum(n - 1 for n in seen.values()) / total < 0.03
    assert 0.005 < late / total < 0.015
