"""Reconciling with the change topic after Redis lost writes: pure, no servers."""

import orjson

from worker.core.classes import classes_record
from worker.core.codec import OutRecord
from worker.core.reconcile import (
    INPUT_HEADER,
    Emitted,
    change_id,
    lost_window,
    read_back,
    reconcile,
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


def test_read_back_parses_changes_and_skips_tombstones() -> None:
    doc = change("e1", "c1", None, "gold")
    headers = [(INPUT_HEADER, b'{"orders": 5}')]
    got = read_back([(orjson.dumps(doc), headers), (None, [("erased", b"true")])])
    assert got == [Emitted("e1", doc, headers)]


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
