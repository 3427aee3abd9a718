"""The parser's fast path (msgspec) changes nothing: for every input, valid or not,
parse_event returns what parse_precisely (the orjson path that alone writes rejections) does.

Inputs are valid events and their mutations, built as raw bytes so that a document can carry
what a dict cannot: duplicate keys, numbers orjson reads as floats or refuses (beyond int64,
1e400), lone surrogates, invalid UTF-8, nesting deeper than orjson allows.
"""

from __future__ import annotations

import json
from itertools import islice
from typing import TypeVar

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from worker.core import events
from worker.core.documents import DECODE_ANY
from worker.core.events import (
    EventKind,
    ParseLimits,
    Reason,
    Rejection,
    parse_event,
    parse_precisely,
)
from worker.core.timeutil import DAY_MS, format_ms, parse_rfc3339
from worker.tools.simulate import FeedFaults, Simulator

T = TypeVar("T")
KINDS: tuple[EventKind | None, ...] = (None, "order", "visit", "profile")
NOW = parse_rfc3339("2026-06-01T00:00:00Z")
TIGHT = ParseLimits(
    max_bytes=400,
    max_future_ms=0,
    max_id_length=4,
    max_traits=2,
    max_trait_name=7,
    max_trait_text=3,
)
DEEP = 1100  # past orjson's depth limit (1024), which msgspec does not share
RAW_VALUES = [
    b"1e400",
    b"-1e400",
    b"1.7976931348623157e308",
    b"1.7976931348623159e308",
    b"4.9e-324",
    b"2e-324",
    b"9223372036854775807",
    b"9223372036854775808",
    b"18446744073709551615",
    b"18446744073709551616",
    b"-9223372036854775808",
    b"-9223372036854775809",
    b"123456789012345678901234567890",
    b"-0",
    b"-0.0",
    b"1.0",
    b"1E2",
    b"1e-5",
    b"0.125",
    b"1.005",
    b"1.0050000000000001",
    b"NaN",
    b"Infinity",
    b"01",
    b'"\\ud800"',
    b'"\\ude00x"',
    b'"\\ud83d\\ude00"',
    b'"\xff"',
    b'"\xed\xa0\x80"',
    b'"\xc0\x80"',
    b'"a\\u0000b"',
    b'"\x7f"',
    b'"\xd9\xa1"',  # ARABIC-INDIC DIGIT ONE
    b"true",
    b"false",
    b"null",
    b"[]",
    b"{}",
    b'{"a":{"b":1}}',
    b'{"a":[1]}',
    b'{"x":1,"x":[2]}',
    b'{"x":[2],"x":1}',
    b"[" * DEEP + b"]" * DEEP,
    b'{"a":' * DEEP + b"1" + b"}" * DEEP,
]
FIELDS = [
    "type",
    "event_id",
    "customer_id",
    "occurred_at",
    "amount",
    "currency",
    "status",
    "order_id",
    "items",
    "region",
    "channel",
    "attributes",
    "action",
    "traits",
    "consent",
]

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=12),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=8), children, max_size=3)
    ),
    max_leaves=8,
)


def rarely(good: st.SearchStrategy[T], bad: st.SearchStrategy[T]) -> st.SearchStrategy[T]:
    """``good`` seven times in eight: most documents stay valid, so the accepting side of
    the fast path is what most examples exercise."""
    return st.integers(0, 7).flatmap(lambda n: bad if n == 0 else good)


def _timestamp(ms: int, sep: str, frac: str, offset: str) -> str:
    text = format_ms(ms)
    return text[:10] + sep + text[11:19] + frac + offset


timestamps = rarely(
    st.one_of(
        st.builds(format_ms, st.integers(NOW - 400 * DAY_MS, NOW + 600_000)),
        st.builds(
            _timestamp,
            st.integers(NOW - 400 * DAY_MS, NOW + 600_000),
            st.sampled_from(["T", "t", " "]),
            st.sampled_from(["", ".1", ".123", ".123456", ".123456789"]),
            st.sampled_from(["Z", "z", "+00:00", "-00:00", "+05:30", "-23:59"]),
        ),
    ),
    st.one_of(
        st.builds(
            _timestamp,
            st.integers(NOW - 400 * DAY_MS, NOW + 600_000),
            st.sampled_from(["T", "_", "TT"]),
            st.sampled_from(["", ".1234567890", "."]),
            st.sampled_from(["Z", "+24:00", "+01:60", "+0100", ""]),
        ),
        st.sampled_from(
            [
                "2026-02-29T00:00:00Z",
                "2024-02-29T23:59:60Z",
                "2026-05-31T24:00:00Z",
                "2026-05-31T23:60:00Z",
                "0001-01-01T00:00:00+23:59",
                "9999-12-31T23:59:59.999Z",
                "2026-05-31T10:00:00",
                "2026-05-31",
                "2026-05-31T10:00:00.000Z\n",
                "２０２６-05-31T10:00:00Z",
            ]
        ),
        st.text(max_size=30),
    ),
)
ids = rarely(
    st.text(min_size=1, max_size=6),
    st.sampled_from(["", "c" * 200, "c" * 201, "ü" * 200, "\x00", "\U0001f600"]),
)
amounts = rarely(
    st.one_of(
        st.integers(0, 10**12),
        st.floats(min_value=0, max_value=1e12),
        st.decimals(min_value=0, max_value=10**12, places=2).map(str),
    ),
    st.one_of(
        st.integers(-5, 10**15),
        st.floats(min_value=-10.0, max_value=1e13),
        st.sampled_from(["1.234", "-1.00", "1e3", " 1", "1.", ".5", "١", "00", "-0", "1e12"]),
    ),
)
INT64 = 2**63
EDGES = [2**63 - 1, 2**63, 2**64 - 1, 2**64, 2**65, -(2**63), -(2**63) - 1, -(2**64) - 1]


def integers(low: int, bound: int) -> st.SearchStrategy[int]:
    """From ``low`` up to below ``bound``, orjson's int/float edges likely."""
    edges = [n for n in EDGES if low <= n < bound]
    return st.one_of(st.integers(low, bound - 1), st.sampled_from(edges))


def scalars(bound: int) -> st.SearchStrategy[object]:
    return st.one_of(
        st.none(),
        st.booleans(),
        integers(-bound, bound),
        st.floats(allow_nan=False, allow_infinity=False),
        st.text(max_size=5),
    )


trait_names = rarely(st.from_regex(r"[a-z][a-z0-9_]{0,8}", fullmatch=True), st.text(max_size=4))


def dumps(value: object) -> bytes:
    """JSON of any integer (orjson refuses those beyond 64 bits), text as UTF-8."""
    return json.dumps(value, ensure_ascii=False, allow_nan=False).encode()


def _optional(name: str, values: st.SearchStrategy[object]) -> st.SearchStrategy[list]:
    return st.one_of(st.just([]), values.map(lambda v: [(name, dumps(v))]))


@st.composite
def documents(draw: st.DrawFn, bound: int = 2**66) -> list[tuple[str, bytes]]:
    """An event as (key, raw JSON value) pairs, most of them valid; integers within
    -bound..bound-1 (orjson reads one beyond uint64 as a float)."""
    kind = draw(st.sampled_from(["order", "visit", "profile"]))
    pairs = [
        ("type", dumps(kind)),
        ("event_id", dumps(draw(ids))),
        ("customer_id", dumps(draw(ids))),
        ("occurred_at", dumps(draw(timestamps))),
    ]
    if kind == "order":
        pairs += [
            ("amount", dumps(draw(amounts))),
            (
                "currency",
                dumps(
                    draw(
                        rarely(
                            st.just("USD"),
                            st.sampled_from(["usd", "US", "ÜSD", "USD\n", "USDX", "\nUSD"]),
                        )
                    )
                ),
            ),
            ("status", dumps(draw(rarely(st.sampled_from(sorted(events.STATUSES)), st.text())))),
        ]
        pairs += draw(_optional("order_id", ids))
        pairs += draw(_optional("items", rarely(integers(0, bound), integers(-bound, 0))))
    elif kind == "visit":
        pairs.append(("action", dumps(draw(rarely(st.text(min_size=1), st.just("a" * 101))))))
    else:
        pairs.append(("traits", dumps(draw(st.dictionaries(trait_names, scalars(bound))))))
        consent = st.dictionaries(trait_names, rarely(st.booleans(), scalars(bound)))
        pairs += draw(_optional("consent", consent))
    if kind != "profile":
        pairs += draw(_optional("region", rarely(st.text(max_size=3), st.just("r" * 201))))
        pairs += draw(_optional("channel", st.text(max_size=3)))
        attributes = st.dictionaries(st.text(max_size=3), scalars(bound))
        pairs += draw(_optional("attributes", attributes))
    return draw(st.permutations(pairs))


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    pairs = list(draw(documents()))
    values = st.one_of(st.sampled_from(RAW_VALUES), json_values.map(dumps))
    for _ in range(draw(st.integers(0, 3))):
        op = draw(st.sampled_from(["drop", "set", "add", "null"]))
        if op == "add" or not pairs:
            key = draw(st.sampled_from(FIELDS) | st.text(max_size=4))
            pairs.insert(draw(st.integers(0, len(pairs))), (key, draw(values)))
            continue
        at = draw(st.integers(0, len(pairs) - 1))
        if op == "drop":
            del pairs[at]
        else:
            pairs[at] = (pairs[at][0], b"null" if op == "null" else draw(values))
    raw = b"{" + b",".join(dumps(k) + b":" + v for k, v in pairs) + b"}"
    if draw(st.integers(0, 9)) == 0:  # damage one byte
        at = draw(st.integers(0, len(raw) - 1))
        raw = raw[:at] + bytes([draw(st.integers(0, 255))]) + raw[at + 1 :]
    return raw


def _same(raw: bytes, kind: EventKind | None, now_ms: int, limits: ParseLimits) -> object:
    fast = parse_event(raw, kind, now_ms=now_ms, limits=limits)
    precise = parse_precisely(raw, kind, now_ms=now_ms, limits=limits)
    # repr as well: 1 == 1.0 == True and 0.0 == -0.0, but a trait keeps which one it got.
    assert (type(fast), repr(fast)) == (type(precise), repr(precise)), raw
    return fast


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    mutated(),
    st.sampled_from(KINDS),
    st.sampled_from([ParseLimits(), TIGHT]),
    st.sampled_from([NOW, NOW - DAY_MS]),
)
def test_fast_and_precise_paths_agree(
    raw: bytes, kind: EventKind | None, limits: ParseLimits, now_ms: int
) -> None:
    _same(raw, kind, now_ms, limits)


@settings(max_examples=300, deadline=None)
@given(documents(bound=INT64))
def test_valid_events_take_the_fast_path(pairs: list[tuple[str, bytes]]) -> None:
    """Every event the precise path accepts (integers within int64) the typed decode reads
    alone, to the same event: the fast path is what runs, not the fallback."""
    raw = b"{" + b",".join(dumps(k) + b":" + v for k, v in pairs) + b"}"
    expected = parse_precisely(raw, None, now_ms=NOW, limits=ParseLimits())
    if not isinstance(expected, Rejection):
        fast = events._from_typed(DECODE_ANY(raw), NOW, ParseLimits())
        assert repr(fast) == repr(expected)


def test_simulated_feed_with_faults() -> None:
    """The realistic feed (duplicates, late, malformed events) as the worker reads it (kind
    from the topic) and as replay does (kind from the type field)."""
    topic_kind: dict[str, EventKind] = {"orders": "order", "visits": "visit", "profiles": "profile"}
    simulator = Simulator(11, 300, NOW - 90 * DAY_MS, faults=FeedFaults.realistic())
    later = NOW + 3650 * DAY_MS
    accepted = 0
    for event in islice(simulator, 4000):
        result = _same(event.value, topic_kind[event.topic], later, ParseLimits())
        _same(event.jsonl(), None, later, ParseLimits())
        accepted += not isinstance(result, Rejection)
    assert accepted > 3800


@pytest.mark.parametrize("field", ["attributes", "unknown", "traits"])
def test_deep_nesting_before_the_type_tag(field: str) -> None:
    """msgspec hunting for the tag past 5,000 levels runs out of stack (RecursionError);
    orjson stops at 1,024 (invalid_json). Both paths say invalid_json."""
    deep = b"[" * 5000 + b"]" * 5000
    raw = b'{"' + field.encode() + b'":' + deep + b',"type":"visit","event_id":"e"}'
    result = _same(raw, None, NOW, ParseLimits())
    assert isinstance(result, Rejection)
    assert result.reason is Reason.INVALID_JSON


BASES = {
    "order": {
        "type": "order",
        "event_id": "e1",
        "customer_id": "c1",
        "occurred_at": "2026-05-31T10:00:00.123Z",
        "amount": 12.5,
        "currency": "USD",
        "status": "paid",
        "order_id": "o1",
        "items": 2,
        "region": "EU",
        "channel": "web",
        "attributes": {"k": 1},
    },
    "visit": {
        "type": "visit",
        "event_id": "e1",
        "customer_id": "c1",
        "occurred_at": "2026-05-31T10:00:00.123Z",
        "action": "view",
        "region": "EU",
        "channel": "web",
        "attributes": {"k": "v"},
    },
    "profile": {
        "type": "profile",
        "event_id": "e1",
        "customer_id": "c1",
        "occurred_at": "2026-05-31T10:00:00.123Z",
        "traits": {"tier": "gold", "age": 40},
        "consent": {"email": True},
    },
}
EDGE_TEXTS = [
    "",
    "a" * 100,
    "a" * 101,
    "\U0001f600" * 100,
    "\U0001f600" * 101,
    "é" * 200,
    "é" * 201,
    "USD\n",
    "\nUSD",
    "USDX",
    "USd",
    "ÀBC",
    "paid\n",
    "Paid",
    "placed",
    "refunded",
    "2026-05-31T10:00:00.123Z\n",
    "2026-05-31T10:00:00.123+01:00",
    "2026-05-31t10:00:00z",
    "2026-05-31T10:00:60Z",
    "2026-05-31T10:00:00.1234567890Z",
    "12.345",
    "١٢",
    "gold",
]
EDGE_VALUES = [
    *RAW_VALUES,
    *(dumps(text) for text in EDGE_TEXTS),
    *(dumps(n) for n in [*EDGES, 0, -1, 1, 10**12, 10**12 + 1, 10**14]),
    b'{"x_consent":true,"Bad":1}',
    b'{"a":"' + b"t" * 257 + b'"}',
]


@pytest.mark.parametrize("base", sorted(BASES))
def test_each_field_at_each_edge(base: str) -> None:
    """Every field of a valid event dropped, nulled or set to each edge value in turn (an
    unknown field added where the kind has none), on each stream and with tight limits."""
    doc = BASES[base]
    variants = []
    for field in FIELDS:
        pairs = [(k, dumps(v)) for k, v in doc.items() if k != field]
        variants.append(pairs)
        variants += [[*pairs, (field, value)] for value in EDGE_VALUES]
    for pairs in variants:
        raw = b"{" + b",".join(dumps(k) + b":" + v for k, v in pairs) + b"}"
        for kind in KINDS:
            for limits in (ParseLimits(), TIGHT):
                _same(raw, kind, NOW, limits)
