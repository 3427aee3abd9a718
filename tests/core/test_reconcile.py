"""Reconciling with the change topic after Redis lost writes, and which records read back
from it are trusted: pure, no servers."""

from collections import Counter

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from worker.core.changes import Cause
from worker.core.changes import change_id as compute_change_id
from worker.core.classes import classes_record
from worker.core.outbox import OutRecord
from worker.core.reconcile import (
    INPUT_HEADER,
    MAC_HEADER,
    Emitted,
    Trust,
    change_id,
    lost_window,
    read_back,
    reconcile,
    sign,
)
from worker.core.state import CustomerState
from worker.core.timeutil import format_ms, parse_rfc3339

CHANGES = "segment-changes"
CLASSES = "segment-classes"
T0 = parse_rfc3339("2025-03-01T00:00:00Z")


def change(
    event_id: str, cid: str, old: str | None, new: str | None, at: int = T0
) -> dict[str, object]:
    return {
        "event_id": event_id,
        "customer_id": cid,
        "dimension": "value",
        "from": old,
        "to": new,
        "occurred_at": format_ms(at),
    }


def emitted(doc: dict[str, object], reached: dict[str, int] | None = None) -> Emitted:
    headers = [] if reached is None else [(INPUT_HEADER, orjson.dumps(reached))]
    return Emitted(str(doc["event_id"]), doc, headers)


def outbox(doc: dict[str, object]) -> OutRecord:
    return OutRecord(CHANGES, str(doc["customer_id"]).encode(), orjson.dumps(doc))


KEY = b"k" * 32
OLD_KEY = b"o" * 32
VERSION = "sha256:0123456789abcdef"
ENDS = {"orders": 100, "visits": 50}


def genuine(
    cid: str = "c1", old: str | None = "low", new: str | None = "medium"
) -> dict[str, object]:
    """A change document as the worker writes it: its id follows from cause and transition."""
    cause = Cause("order", "ev-1", T0)
    return {
        "event_id": compute_change_id(cid, "value_tier", cause, old, new),
        "customer_id": cid,
        "dimension": "value_tier",
        "from": old,
        "to": new,
        "occurred_at": format_ms(T0),
        "emitted_at": format_ms(T0),
        "cause": {"type": "order", "event_id": "ev-1"},
        "state": {},
        "rules_version": VERSION,
    }


Record = tuple[bytes | None, bytes | None, list[tuple[str, bytes]]]


def record(
    doc: dict[str, object], reached: object = None, key: bytes | None = KEY, partition: int = 2
) -> Record:
    """A change record for partition ``partition``, signed with ``key`` (None: unsigned)."""
    value = orjson.dumps(doc)
    stamp = orjson.dumps({"orders": 5} if reached is None else reached)
    headers = [("dimension", b"value_tier"), (INPUT_HEADER, stamp)]
    if key is not None:
        headers.append(
            (MAC_HEADER, sign(key, partition, str(doc["customer_id"]).encode(), value, stamp))
        )
    return str(doc["customer_id"]).encode(), value, headers


def signed_trust(*keys: bytes) -> Trust:
    return Trust(2, ENDS, keys or (KEY,))


def unsigned_trust() -> Trust:
    return Trust(2, ENDS, (), frozenset({VERSION}), lambda cid: cid != "elsewhere")


def test_read_back_parses_changes_and_skips_tombstones() -> None:
    doc = genuine()
    key, value, headers = record(doc)
    got = read_back([(key, value, headers), (b"c1", None, [("erased", b"true")])], signed_trust())
    assert got.emitted == [Emitted(str(doc["event_id"]), doc, headers)]
    assert got.rejected == Counter()


def test_a_signed_record_verifies_with_the_current_or_the_previous_key() -> None:
    assert read_back([record(genuine(), key=OLD_KEY)], signed_trust(KEY, OLD_KEY)).emitted
    assert read_back([record(genuine())], signed_trust(KEY, OLD_KEY)).emitted
    # The signed mode trusts the signature, not the rules version or the partitioner.
    other = genuine("elsewhere") | {"rules_version": "sha256:" + "f" * 16}
    got = read_back([record(other)], signed_trust())
    assert [e.doc for e in got.emitted] == [other] and not got.rejected


def tampered() -> dict[str, Record]:
    """Each way a forger without the key could alter a signed record."""
    doc = genuine()
    key, value, headers = record(doc)
    higher = genuine(new="high")
    _, forged_value, _ = record(higher)
    return {
        "other value": (key, forged_value, headers),
        "other stamp": (
            key,
            value,
            [(n, b'{"orders": 99}' if n == INPUT_HEADER else v) for n, v in headers],
        ),
        "other key": (b"c2", value, headers),
        "other partition": record(doc, partition=3),
        "other signing key": record(higher, key=b"x" * 32),
    }


@pytest.mark.parametrize("how", sorted(tampered()))
def test_a_tampered_record_does_not_verify(how: str) -> None:
    assert read_back([tampered()[how]], signed_trust()).rejected == Counter({"bad_signature": 1})


def test_an_unsigned_record_is_refused_when_a_key_is_set() -> None:
    assert read_back([record(genuine(), key=None)], signed_trust()).rejected == Counter(
        {"not_signed": 1}
    )


def forged_unsigned() -> dict[str, tuple[Record, str]]:
    """Records read back without a signing key, and why each is refused."""
    doc = genuine()
    _, value, headers = record(doc, key=None)
    no_stamp = [(n, v) for n, v in headers if n != INPUT_HEADER]
    return {
        "the probe's forgery": (
            record(
                genuine(new="high") | {"rules_version": "sha256:" + "e" * 16},
                {"orders": 10**15},
                key=None,
            ),
            "offsets_ahead",
        ),
        "offsets past the end": (record(genuine(), {"orders": 101}, key=None), "offsets_ahead"),
        "an unknown rules version": (
            record(genuine() | {"rules_version": "sha256:" + "e" * 16}, key=None),
            "unknown_rules",
        ),
        "not JSON": ((b"c1", b"\xff{not json", headers), "not_json"),
        "a JSON array": ((b"c1", b"[1, 2]", headers), "bad_document"),
        "a field missing": (
            record({k: v for k, v in doc.items() if k != "from"}, key=None),
            "bad_document",
        ),
        "a class that is no name": (record(genuine(new="High Value!"), key=None), "bad_document"),
        "a cause of no kind": (
            record(doc | {"cause": {"type": "magic", "event_id": "x"}}, key=None),
            "bad_document",
        ),
        "a bad instant": (
            record(doc | {"occurred_at": "2025-13-45T99:00:00.000Z"}, key=None),
            "bad_document",
        ),
        "an event id that does not follow": (
            record(doc | {"to": "high"}, key=None),
            "wrong_event_id",
        ),
        "a key other than the customer": ((b"c2", value, headers), "wrong_key"),
        "a customer of another partition": (
            record(genuine("elsewhere"), key=None),
            "wrong_partition",
        ),
        "no stamp": ((b"c1", value, no_stamp), "bad_input_header"),
        "two stamps": (
            (b"c1", value, [*headers, (INPUT_HEADER, b'{"orders": 1}')]),
            "bad_input_header",
        ),
        "a stamp that is not JSON": (
            (b"c1", value, [*no_stamp, (INPUT_HEADER, b"5")]),
            "bad_input_header",
        ),
        "a stamp naming another topic": (
            record(doc, {"payments": 1}, key=None),
            "bad_input_header",
        ),
        "a negative offset": (record(doc, {"orders": -1}, key=None), "bad_input_header"),
        "an offset that is no integer": (
            record(doc, {"orders": "7"}, key=None),
            "bad_input_header",
        ),
    }


@pytest.mark.parametrize("name", sorted(forged_unsigned()))
def test_without_a_key_records_the_worker_cannot_have_written_are_refused(name: str) -> None:
    forged, reason = forged_unsigned()[name]
    assert read_back([forged], unsigned_trust()).rejected == Counter({reason: 1})
    # a signed record is checked the same way, whatever the signature says
    if reason not in ("unknown_rules", "wrong_partition"):
        key, value, headers = forged
        assert value is not None
        stamp = next((v for n, v in headers if n == INPUT_HEADER), b"")
        resigned = [*headers, (MAC_HEADER, sign(KEY, 2, key, value, stamp))]
        assert read_back([(key, value, resigned)], signed_trust()).rejected == Counter({reason: 1})


def test_without_a_key_a_well_formed_record_is_trusted_and_bad_ones_do_not_stop_the_rest() -> None:
    good = record(genuine(), {"orders": 100, "visits": 50}, key=None)
    got = read_back([(b"c1", b"garbage", good[2]), good, (b"c1", b"", [])], unsigned_trust())
    assert [e.doc for e in got.emitted] == [genuine()]
    assert got.rejected == Counter({"not_json": 1, "bad_input_header": 1})


header = st.tuples(st.sampled_from([INPUT_HEADER, MAC_HEADER, "dimension"]), st.binary(max_size=40))


@given(
    st.lists(
        st.tuples(
            st.none() | st.binary(max_size=20),
            st.none()
            | st.binary(max_size=200)
            | st.builds(
                orjson.dumps,
                st.dictionaries(
                    st.text(max_size=12),
                    st.none() | st.integers(-(2**63), 2**63 - 1) | st.text(max_size=12),
                    max_size=8,
                ),
            ),
            st.lists(header, max_size=4),
        ),
        max_size=10,
    ),
    st.booleans(),
)
def test_read_back_never_raises_and_accounts_for_every_record(
    records: list[Record], keyed: bool
) -> None:
    got = read_back(records, signed_trust() if keyed else unsigned_trust())
    assert len(got.emitted) + got.rejected.total() == sum(1 for r in records if r[1] is not None)


def test_change_id_only_for_changes() -> None:
    doc = change("e1", "c1", None, "gold")
    assert change_id(outbox(doc), CHANGES) == "e1"
    assert change_id(OutRecord(CHANGES, b"c1", None), CHANGES) is None  # a tombstone
    assert change_id(OutRecord("dlq", b"c1", orjson.dumps(doc)), CHANGES) is None


def test_lost_window_is_what_the_outbox_does_not_know_and_how_far_it_went() -> None:
    relayed = change("e1", "c1", None, "gold")
    lost1 = change("e2", "c1", "gold", "silver")
    lost2 = change("e3", "c2", None, "gold")
    window = lost_window(
        [
            emitted(relayed, {"orders": 99}),  # still in the outbox: its stamp does not count
            emitted(lost1, {"orders": 7, "visits": 3}),
            emitted(lost2, {"orders": 9}),
        ],
        [outbox(relayed)],
        CHANGES,
    )
    assert window.changes == [lost1, lost2]
    assert window.until == {"orders": 9, "visits": 3}
    assert window.customers() == ["c1", "c2"]
    assert window.ahead_of({"orders": 8, "visits": 3})
    assert window.ahead_of({"orders": 9})  # no visits offset held yet
    assert not window.ahead_of({"orders": 9, "visits": 3})


def test_nothing_lost_when_the_outbox_holds_every_change() -> None:
    doc = change("e1", "c1", None, "gold")
    window = lost_window([emitted(doc, {"orders": 4})], [outbox(doc)], CHANGES)
    assert window.changes == [] and window.until == {}
    assert not window.ahead_of({})


def test_reconcile_follows_each_chain_from_the_class_redis_holds() -> None:
    held = CustomerState("c1", classes={"value": "bronze"}, since_ms={"value": T0 - 5})
    later = T0 + 1000
    outcome = reconcile(
        [
            change("e1", "c1", "bronze", "silver", T0),
            change("e2", "c1", "gold", "none-such", T0 + 10),  # a zombie's re-send: no link
            change("e3", "c1", "silver", "gold", later),
        ],
        {"c1": held},
        CLASSES,
    )
    assert outcome.states["c1"].classes == {"value": "gold"}
    assert outcome.states["c1"].since_ms == {"value": later}
    assert dict(outcome.population) == {("value", "bronze"): -1, ("value", "gold"): 1}
    # The classes topic gets where the customer ended, in case Redis lost it before the relay.
    assert outcome.out == [classes_record(CLASSES, outcome.states["c1"])]
    assert outcome.offsets == {}


def test_reconcile_creates_unknown_customers_and_clears_left_classes() -> None:
    held = CustomerState("c2", classes={"value": "silver"}, since_ms={"value": T0})
    outcome = reconcile(
        [change("e1", "c1", None, "gold"), change("e2", "c2", "silver", None)],
        {"c1": None, "c2": held},
        CLASSES,
    )
    assert outcome.states["c1"].classes == {"value": "gold"}
    assert outcome.states["c1"].since_ms == {"value": T0}
    assert outcome.states["c2"].classes == {} and outcome.states["c2"].since_ms == {}
    assert dict(outcome.population) == {("value", "gold"): 1, ("value", "silver"): -1}
    assert [orjson.loads(r.value or b"") for r in outcome.out] == [
        {"customer_id": "c1", "classes": {"value": {"class": "gold", "since": format_ms(T0)}}},
        {"customer_id": "c2", "classes": {}},
    ]


def test_reconcile_leaves_states_that_already_agree() -> None:
    held = CustomerState("c1", classes={"value": "gold"}, since_ms={"value": T0})
    outcome = reconcile(
        [change("e1", "c1", "gold", "silver"), change("e2", "c1", "silver", "gold")],
        {"c1": held},
        CLASSES,
    )
    assert outcome.states == {} and outcome.out == []
    assert not +outcome.population and not -outcome.population
