"""The live worker's batch step agrees with replay on the same input."""

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
from worker.core.batch import (
    InRecord,
    Outcome,
    accept_erasures,
    apply_batch,
    customers_of,
    parse_batch,
    reevaluate_batch,
    sweep,
)
from worker.core.changes import Cause, SegmentChange
from worker.core.codec import decode_state, encode_state
from worker.core.events import Reason, Rejection
from worker.core.outbox import OutRecord
from worker.core.state import CustomerState
from worker.core.timeutil import DAY_MS, parse_rfc3339
from worker.core.views import describe


def test_batches_of_one_with_the_event_clock_give_replays_changes_and_state() -> None:
    batch = records(6000)
    as_of = parse_rfc3339("2026-06-01T00:00:00Z")
    replayer, expected = replay(batch, as_of)
    live = Live()
    for chunk, _, clock in in_batches(batch, 1):
        live.run(chunk, clock)
    live.sweep(as_of)
    assert dict(live.changes) == dict(expected)
    day = as_of // 86_400_000
    for cid, state in replayer.states.items():
        assert describe(decode_state(cid, live.redis[cid]), RULES, day) == describe(
            state, RULES, day
        )
    assert set(live.redis) == set(replayer.states)


@pytest.mark.parametrize("size", [7, 500])
def test_big_batches_reach_the_same_final_state(size: int) -> None:
    batch = records(4000, seed=12)
    as_of = parse_rfc3339("2026-06-01T00:00:00Z")
    replayer, _ = replay(batch, as_of)
    live = Live()
    for chunk, _, clock in in_batches(batch, size):
        live.run(chunk, clock)
        live.sweep(clock)
    live.sweep(as_of)
    day = as_of // 86_400_000
    for cid, state in replayer.states.items():
        got = describe(decode_state(cid, live.redis[cid]), RULES, day)
        want = describe(state, RULES, day)
        assert {k: v for k, v in got.items() if k != "since"} == {
            k: v for k, v in want.items() if k != "since"
        }
    # Each customer's chain of changes is unbroken: every 'from' is the previous 'to'.
    last: dict[tuple[str, str], str | None] = {}
    for rec in live.out:
        if rec.topic != TOPICS.changes:
            continue
        change = orjson.loads(rec.value or b"")
        key = (change["customer_id"], change["dimension"])
        assert change["from"] == last.get(key)
        last[key] = change["to"]


def test_kafka_level_rejections_and_dead_letter_headers() -> None:
    good = b'{"event_id":"e1","customer_id":"c1","occurred_at":"2026-01-01T00:00:00Z","action":"login"}'
    big = (
        b'{"event_id":"e2","customer_id":"c1","occurred_at":"2026-01-01T00:00:00Z","action":"'
        + b"x" * 70_000
        + b'"}'
    )
    batch = [
        InRecord("visits", 3, 10, None, good),
        InRecord("visits", 3, 11, b"c2", good),
        InRecord("visits", 3, 12, b"c1", None),
        InRecord("visits", 3, 13, b"c1", big, (("trace", b"t1"),)),
        InRecord("visits", 3, 14, b"c1", good),
    ]
    parsed = parse_batch(batch, TOPICS, FUTURE, LIMITS)
    reasons = [p.reason if isinstance(p, Rejection) else None for p in parsed]
    assert reasons == [
        Reason.MISSING_KEY,
        Reason.KEY_MISMATCH,
        Reason.NOT_AN_OBJECT,
        Reason.OVERSIZED,
        None,
    ]
    outcome = apply_batch(batch, parsed, {"c1": None}, rules=RULES, topics=TOPICS, now_ms=FUTURE)
    assert outcome.offsets == {"visits": 15}
    dlq = [r for r in outcome.out if r.topic == TOPICS.dlq]
    assert len(dlq) == 4
    headers = dict(dlq[3].headers)
    assert headers["trace"] == b"t1"
    assert headers["dlq.source.offset"] == b"13"
    assert headers["dlq.error.class"] == b"oversized"
    assert headers["dlq.value.truncated"] == b"true"
    assert len(dlq[3].value or b"") == 64 * 1024
    assert dict(dlq[0].headers)["dlq.stage"] == b"kafka"
    changes = [r for r in outcome.out if r.topic == TOPICS.changes]
    assert {dict(r.headers)["dimension"] for r in changes} == {b"lifecycle", b"membership"}
    assert all(r.key == b"c1" for r in changes)


def test_a_record_on_another_partition_than_murmur2_s_is_dead_lettered() -> None:
    def visit(customer_id: str) -> bytes:
        return orjson.dumps(
            {
                "event_id": f"v-{customer_id}",
                "customer_id": customer_id,
                "occurred_at": "2026-01-01T00:00:00Z",
                "action": "login",
            }
        )

    # murmur2 puts bob on 2 of 4 (CRC32, librdkafka's default, on 0) and erin on 0.
    batch = [
        InRecord("visits", 0, 7, b"bob", visit("bob")),
        InRecord("visits", 0, 8, b"erin", visit("erin")),
        InRecord("visits", 0, 9, b"carol", visit("bob")),
    ]
    parsed = parse_batch(batch, TOPICS, FUTURE, LIMITS, partitions=4)
    reasons = [p.reason if isinstance(p, Rejection) else None for p in parsed]
    assert reasons == [Reason.WRONG_PARTITION, None, Reason.KEY_MISMATCH]
    assert customers_of(parsed) == ["erin"]
    outcome = apply_batch(batch, parsed, {"erin": None}, rules=RULES, topics=TOPICS, now_ms=FUTURE)
    assert set(outcome.states) == {"erin"}
    dlq = [dict(r.headers) for r in outcome.out if r.topic == TOPICS.dlq]
    assert [(h["dlq.error.class"], h["dlq.stage"]) for h in dlq] == [
        (b"wrong_partition", b"kafka"),
        (b"key_mismatch", b"kafka"),
    ]
    assert outcome.rejected == {"wrong_partition": 1, "key_mismatch": 1}
    # Without a partition count (replay, whose input has no partitions) nothing is refused.
    assert not any(isinstance(p, Rejection) for p in parse_batch(batch[:2], TOPICS, FUTURE, LIMITS))


def test_erasure_requests_for_no_possible_customer_of_the_partition_are_dead_lettered() -> None:
    requests = [
        InRecord("erasures", 0, 1, b"erin", b"{}"),
        InRecord("erasures", 0, 2, b"bob", b"{}"),  # murmur2: partition 2 of 4
        InRecord("erasures", 0, 3, b"x" * 201, b"{}"),
        InRecord("erasures", 0, 4, None, b"{}"),
    ]
    outcome = Outcome()
    accepted = accept_erasures(requests, outcome, TOPICS, LIMITS, 4)
    assert accepted == [(b"erin", "erin")]
    assert outcome.rejected == {"wrong_partition": 1, "invalid_value": 1, "missing_key": 1}
    assert [r.key for r in outcome.out] == [b"bob", b"x" * 201, None]
    assert all(r.topic == TOPICS.dlq for r in outcome.out)
    # Without a partition count only the ids are checked.
    assert len(accept_erasures(requests, Outcome(), TOPICS, LIMITS, None)) == 2


def test_reevaluation_under_new_rules_emits_rules_change_once() -> None:
    live, clock = ran(records(800, seed=13))
    outcome = reevaluate_batch(live.load(sorted(live.redis)), MEMBER_AT_TWO, TOPICS, clock)
    moved = [c for c in outcome.changes if c.dimension == "membership"]
    assert moved and all(
        c.cause.type == "rules_change" and c.cause.event_id == MEMBER_AT_TWO.version for c in moved
    )
    assert {(c.from_class, c.to_class) for c in moved} == {("ordinary", "member")}
    assert all(s.rules_version == MEMBER_AT_TWO.version for s in outcome.states.values())
    live.store(outcome)
    again = reevaluate_batch(live.load(sorted(live.redis)), MEMBER_AT_TWO, TOPICS, clock)
    assert again.changes == [] and again.states == {}


def test_a_customer_absorbed_after_lost_writes_is_classified_by_its_timer_in_a_reevaluation() -> (
    None
):
    """After Redis lost writes, re-read input is absorbed unclassified and its customers made
    due (``quiet``). If the partition's rules mark went with the writes, a re-evaluation may
    reach such a customer before the sweep: it classifies them as the sweep does (the same
    changes, the same next due day), not once at the later instant."""
    batch = records(800, seed=17)
    parsed = parse_batch(batch, TOPICS, FUTURE, LIMITS)
    clock = event_clock(parsed)
    absorbed = apply_batch(batch, parsed, {}, rules=RULES, topics=TOPICS, now_ms=clock, quiet=True)
    assert absorbed.changes == [] and absorbed.states
    stored = {cid: encode_state(s) for cid, s in absorbed.states.items()}
    later = clock + 200 * DAY_MS

    def fresh() -> dict[str, CustomerState | None]:
        return {cid: decode_state(cid, blob) for cid, blob in stored.items()}

    swept = sweep(fresh(), RULES, TOPICS, later)
    reevaluated = reevaluate_batch(fresh(), RULES, TOPICS, later)
    assert swept.changes
    assert [c.event_id for c in reevaluated.changes] == [c.event_id for c in swept.changes]
    assert {c: encode_state(s) for c, s in reevaluated.states.items()} == {
        c: encode_state(s) for c, s in swept.states.items()
    }


def test_withhold_keeps_only_the_erased_customers_changes_out_of_the_outbox() -> None:
    outcome = Outcome(
        out=[
            OutRecord("changes", b"gone", b"{}"),
            OutRecord("changes", b"kept", b"{}"),
            OutRecord("dlq", b"gone", b"raw"),
            OutRecord("classes", b"gone", b"{}"),
            OutRecord("classes", b"kept", b"{}"),
        ]
    )
    outcome.withhold(("changes", "classes"), {b"gone"})
    assert [(r.topic, r.key) for r in outcome.out] == [
        ("changes", b"kept"),
        ("dlq", b"gone"),
        ("classes", b"kept"),
    ]


def test_population_deltas_keep_the_customers_who_left_a_class() -> None:
    def change(old: str | None, new: str | None) -> SegmentChange:
        return SegmentChange("id", "c", "lifecycle", old, new, Cause("timer", None, 0), 0, {}, "v")

    outcome = Outcome()
    outcome.changes += [
        change("new", "active"),
        change("active", "churn_risk"),
        change(None, "new"),
    ]
    outcome.population[("tenure", "short")] -= 2  # an erasure's decrement
    assert outcome.population_deltas() == {
        ("lifecycle", "new"): 0,
        ("lifecycle", "active"): 0,
        ("lifecycle", "churn_risk"): 1,
        ("tenure", "short"): -2,
    }
    outcome.changes.append(change("churn_risk", "churned"))
    assert outcome.population_deltas()[("lifecycle", "churn_risk")] == 0
    assert outcome.population_deltas()[("lifecycle", "churned")] == 1
