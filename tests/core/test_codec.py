"""State and outbox encodings round-trip exactly and refuse what they cannot read."""

import zlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.core.strategies import T0, histories, state_of
from worker.core.changes import Cause
from worker.core.codec import (
    COMPRESS_FROM,
    CorruptRecord,
    OutRecord,
    decode_state,
    encode_state,
)
from worker.core.engine import evaluate
from worker.core.rules import load_rules
from worker.core.state import NO_TIME, CustomerState, OrderRecord

RULES = load_rules(None)
DAY = 86_400_000


@given(histories, st.integers(20_454, 21_500))
def test_state_round_trip(events: list, day: int) -> None:
    state = state_of(events)
    evaluate(state, RULES, day, Cause("timer", None, day * 86_400_000), 0)
    back = decode_state("c1", encode_state(state))
    assert back == state
    assert back.counted(2) == state.counted(2)
    assert encode_state(back) == encode_state(state)


records = st.builds(
    OrderRecord,
    st.integers(0, 15),
    st.booleans(),
    st.just(NO_TIME) | st.integers(T0 - 900 * DAY, T0 + 900 * DAY),
    st.integers(0, 10**9),
)


@given(st.dictionaries(st.text(max_size=24), records, max_size=60), st.booleans())
def test_any_order_ids_and_instants_round_trip(orders: dict, visited: bool) -> None:
    """Ids with and without a shared prefix (empty ones, one a prefix of another), orders
    known only from a cancellation, lists long enough to be stored compressed."""
    state = CustomerState(
        "c1", orders=orders, first_visit_ms=T0 if visited else None, last_visit_ms=None
    )
    data = encode_state(state)
    assert decode_state("c1", data) == state
    assert data[:1] == b"[" or len(zlib.decompress(data)) >= COMPRESS_FROM


def test_large_states_are_stored_compressed_and_small_ones_as_json() -> None:
    small = state_of([])
    large = CustomerState(
        "c1",
        orders={f"order-{i}": OrderRecord(2, True, T0 + i * DAY, 1_000 + i) for i in range(40)},
    )
    assert encode_state(small)[:1] == b"["
    packed = encode_state(large)
    assert packed[:1] == b"x" and len(packed) < len(zlib.decompress(packed)) / 2
    assert decode_state("c1", packed) == large


# Written by format 3 (before order id prefixes and compression): a paid, a placed and a
# refund-only order, a visit, and classes with and without a class.
FORMAT_3 = (
    b'[3,-4611686018427387904,["A1",18,4611687785739387904,12500,"A2",1,4611687785912187904,4000,'
    b'"B7",8,0,0],4611687785652987909,4611687785652987909,"North-East",4611687785652987909,[0,8,'
    b"4611687786516987904,1,14,4611687786516987904,2,8,4611687786516987904,3,26,"
    b'4611687786516987904,4,29,4611687786516987904,5,null,null],"58b40df6bc4446c6",20470]'
)


def test_states_written_by_format_3_still_read() -> None:
    classified = T0 + 10 * DAY
    state = decode_state("c1", FORMAT_3)
    assert state == CustomerState(
        "c1",
        orders={
            "A1": OrderRecord(2, True, T0 + DAY, 12_500),
            "A2": OrderRecord(1, False, T0 + 3 * DAY, 4_000),
            "B7": OrderRecord(8, False, NO_TIME, 0),
        },
        first_visit_ms=T0 + 5,
        last_visit_ms=T0 + 5,
        region="North-East",
        region_ms=T0 + 5,
        classes={
            "lifecycle": "new",
            "value_tier": "low",
            "rfm": "new",
            "membership": "ordinary",
            "tenure": "short",
            "old_customer": None,
        },
        since_ms=dict.fromkeys(
            ("lifecycle", "value_tier", "rfm", "membership", "tenure"), classified
        ),
        rules_version="sha256:58b40df6bc4446c6",
        due_day=20470,
    )
    assert decode_state("c1", encode_state(state)) == state


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"{",
        b"[]",
        b'{"f": 2}',
        b'{"f": 1, "o": {}}',
        b'{"f":1,"o":{"a":[1]}}',
        b"[5]",
        b"x\x9c not deflate",
        zlib.compress(b"[4, 1]"),
        zlib.compress(b"not json"),
    ],
)
def test_unreadable_state_is_reported_not_crashed(data: bytes) -> None:
    with pytest.raises(CorruptRecord):
        decode_state("c1", data)


headers = st.lists(st.tuples(st.text(max_size=20), st.binary(max_size=50)), max_size=6).map(tuple)


@given(
    st.text(min_size=1, max_size=40),
    st.none() | st.binary(max_size=200),
    st.none() | st.binary(max_size=2000),
    headers,
)
def test_out_record_round_trip(
    topic: str, key: bytes | None, value: bytes | None, hdrs: tuple
) -> None:
    record = OutRecord(topic, key, value, hdrs)
    assert OutRecord.decode(record.encode()) == record
    with pytest.raises(CorruptRecord):
        OutRecord.decode(record.encode()[:-1])


@given(st.binary(max_size=100))
def test_out_record_decode_refuses_garbage_or_reads_a_record(data: bytes) -> None:
    """Garbage is refused with CorruptRecord (nothing else escapes), or it was a frame: then
    what was read survives a round trip."""
    try:
        record = OutRecord.decode(data)
    except CorruptRecord:
        return
    assert OutRecord.decode(record.encode()) == record
