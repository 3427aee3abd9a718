"""Hostile input: whatever the bytes, parse-and-apply either applies an event correctly or
rejects it with a reason; nothing escapes, nothing corrupts the state."""

import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from worker.core.codec import decode_state, encode_state
from worker.core.engine import process_event
from worker.core.events import Event, ParseLimits, Reason, Rejection, parse_event
from worker.core.rules import load_rules
from worker.core.state import CustomerState
from worker.core.timeutil import parse_rfc3339
from worker.store import Store

RULES = load_rules(None)
NOW = parse_rfc3339("2026-06-01T00:00:00Z")
LIMITS = ParseLimits()

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(alphabet=st.characters(codec="utf-8"), max_size=30),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=20,
)
timestamps = st.one_of(
    st.text(max_size=40),
    st.sampled_from(
        [
            "2026-01-01T00:00:00Z",
            "2026-01-01",
            "2026-01-01T00:00:00",
            "2026-13-01T00:00:00Z",
            "2026-02-30T00:00:00Z",
            "0001-01-01T00:00:00Z",
            "9999-12-31T23:59:59+23:59",
            "9999-12-31T23:59:59-23:59",
            "2026-01-01T00:00:60Z",
            "2026-01-01T00:00:00.123456789+05:30",
            "1e10",
            "２０２６-01-01T00:00:00Z",
        ]
    ),
)
customer_ids = st.one_of(
    st.text(max_size=50),
    st.sampled_from(["{p0}", "a:b", "x}y{z", " ", "\n", "\x00", "c" * 201, "ü" * 200, "{", "}{"]),
)


def event_docs() -> st.SearchStrategy[dict[str, object]]:
    return st.fixed_dictionaries(
        {},
        optional={
            "type": st.sampled_from(["order", "visit", "refund", 1]),
            "event_id": st.one_of(st.text(max_size=20), json_values),
            "customer_id": st.one_of(customer_ids, json_values),
            "occurred_at": st.one_of(timestamps, json_values),
            "amount": st.one_of(
                st.floats(allow_nan=True, allow_infinity=True),
                st.integers(min_value=-(2**70), max_value=2**70),
                st.text(max_size=20),
                json_values,
            ),
            "currency": st.sampled_from(["USD", "usd", "EUR", "", "US", 5]),
            "status": st.sampled_from(["placed", "paid", "cancelled", "refunded", "shipped", None]),
            "order_id": st.one_of(st.text(max_size=20), json_values),
            "action": st.one_of(st.text(max_size=20), json_values),
            "region": st.one_of(st.text(max_size=20), json_values),
            "attributes": json_values,
        },
    )


def check(raw: bytes) -> None:
    for kind in ("order", "visit", None):
        result = parse_event(raw, kind, now_ms=NOW, limits=LIMITS)  # type: ignore[arg-type]
        if isinstance(result, Rejection):
            assert isinstance(result.reason, Reason)
            continue
        assert isinstance(result, Event.__args__)  # type: ignore[attr-defined]
        assert 1 <= len(result.customer_id) <= LIMITS.max_id_length
        assert result.occurred_ms <= NOW + LIMITS.max_future_ms
        state = CustomerState(result.customer_id)
        outcome = process_event(state, result, RULES, NOW, NOW)
        if isinstance(outcome, Rejection):
            assert state == CustomerState(result.customer_id)  # rejected: untouched
            continue
        assert decode_state(state.customer_id, encode_state(state)) == state
        again = process_event(state, result, RULES, NOW, NOW)
        assert again == []  # the same event twice changes nothing


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(event_docs())
def test_structured_garbage(doc: dict[str, object]) -> None:
    try:
        raw = orjson.dumps(doc, option=orjson.OPT_NON_STR_KEYS)
    except (orjson.JSONEncodeError, TypeError):
        raw = repr(doc).encode()
    check(raw)


@settings(max_examples=300)
@given(st.binary(max_size=300))
def test_arbitrary_bytes(raw: bytes) -> None:
    check(raw)


def test_pathological_documents() -> None:
    deep = b"[" * 5000 + b"]" * 5000
    huge = (
        b'{"event_id":"e","customer_id":"c","occurred_at":"2026-01-01T00:00:00Z","action":"'
        + b"a" * 70_000
        + b'"}'
    )
    nan = b'{"event_id":"e","customer_id":"c","occurred_at":"2026-01-01T00:00:00Z","amount":NaN,"currency":"USD","status":"paid"}'
    big = b'{"event_id":"e","customer_id":"c","occurred_at":"2026-01-01T00:00:00Z","amount":1e400,"currency":"USD","status":"paid"}'
    bigint = b'{"event_id":"e","customer_id":"c","occurred_at":"2026-01-01T00:00:00Z","amount":123456789012345678901234567890,"currency":"USD","status":"paid"}'
    ctrl = b'{"event_id":"e\\u0000","customer_id":"c\\u0007\\n","occurred_at":"2026-01-01T00:00:00Z","action":"x"}'
    bad_utf8 = b'{"event_id":"e","customer_id":"\xc3\x28","occurred_at":"2026-01-01T00:00:00Z","action":"x"}'
    for raw in (deep, huge, nan, big, bigint, ctrl, bad_utf8):
        check(raw)
    assert parse_event(deep, "visit", now_ms=NOW, limits=LIMITS).reason is Reason.INVALID_JSON  # type: ignore[union-attr]
    assert parse_event(huge, "visit", now_ms=NOW, limits=LIMITS).reason is Reason.OVERSIZED  # type: ignore[union-attr]
    assert parse_event(bad_utf8, "visit", now_ms=NOW, limits=LIMITS).reason is Reason.INVALID_UTF8  # type: ignore[union-attr]


@given(
    st.lists(customer_ids.filter(lambda c: 0 < len(c) <= 200), min_size=2, max_size=20, unique=True)
)
def test_distinct_customers_never_share_a_redis_key(ids: list[str]) -> None:
    store = Store(None, "sw")  # type: ignore[arg-type]
    keys = {store.customer_key(3, c) for c in ids}
    assert len(keys) == len(ids)
    for key in keys:
        assert key.startswith("sw:{p3}:c:")  # the first {...} is ours: one slot per partition
