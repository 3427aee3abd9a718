"""State and outbox encodings round-trip exactly and refuse what they cannot read."""

import contextlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.core.strategies import histories, state_of
from worker.core.changes import Cause
from worker.core.codec import CorruptRecord, OutRecord, decode_state, encode_state
from worker.core.engine import evaluate
from worker.core.rules import load_rules

RULES = load_rules(None)


@given(histories, st.integers(20_454, 21_500))
def test_state_round_trip(events: list, day: int) -> None:
    state = state_of(events)
    evaluate(state, RULES, day, Cause("timer", None, day * 86_400_000), 0)
    back = decode_state("c1", encode_state(state))
    assert back == state
    assert back.counted(2) == state.counted(2)
    assert encode_state(back) == encode_state(state)


@pytest.mark.parametrize(
    "data", [b"", b"{", b"[]", b'{"f": 2}', b'{"f": 1, "o": {}}', b'{"f":1,"o":{"a":[1]}}']
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


@given(st.binary(max_size=100))
def test_out_record_decode_never_crashes_on_garbage(data: bytes) -> None:
    with contextlib.suppress(CorruptRecord):
        OutRecord.decode(data)
