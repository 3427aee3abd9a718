"""Every number of the default rules, on both sides, through the core event by event.

The cases are in tests/boundaries.py; tests/test_oracle.py replays the same cases against the
independent oracle.
"""

from datetime import date

import pytest

from tests.boundaries import CASES, TODAY, Case
from worker.core.engine import process_event
from worker.core.events import Event, Order, Rejection, Visit
from worker.core.features import facts_of
from worker.core.rules import load_rules
from worker.core.state import CustomerState
from worker.core.timeutil import DAY_MS

RULES = load_rules()
TODAY_DAY = (date.fromisoformat(TODAY) - date(1970, 1, 1)).days
NOON = TODAY_DAY * DAY_MS + DAY_MS // 2


def events_of(case: Case) -> list[Event]:
    """The case's events in delivery order, re-sent ones at the end."""
    events: list[Event] = []
    for i, ev in enumerate(case.events):
        ms, event_id = NOON - ev.days_ago * DAY_MS, f"e{i}"
        if ev.kind == "visit":
            events.append(Visit(event_id, "c", ms, "login", None))
        else:
            order_id = ev.order or f"o{i}"
            events.append(Order(event_id, "c", ms, ev.cents, "USD", ev.kind, order_id, None))
    return events + [events[i] for i in case.resend]


@pytest.mark.parametrize("case", CASES, ids=lambda case: case.name)
def test_default_rules_on_both_sides_of_each_number(case: Case) -> None:
    state, clock = CustomerState("c"), 0
    for event in events_of(case):
        clock = max(clock, event.occurred_ms)
        assert not isinstance(process_event(state, event, RULES, clock, clock), Rejection)
    features = RULES.features_at(facts_of(state, RULES.counting), TODAY_DAY)
    classes = RULES.classify(features)
    got = {key: classes[key] if key in classes else features[key] for key in case.expect}
    assert got == case.expect


def test_the_cases_cover_every_number_of_the_default_rules() -> None:
    names = {case.name for case in CASES}
    assert len(names) == len(CASES)
    for pinned in ("200_01", "200_00", "89_days", "90_days", "180_days", "181_days", "40_01"):
        assert any(pinned in name for name in names), pinned
    kinds = {ev.kind for case in CASES for ev in case.events}
    assert kinds == {"placed", "paid", "cancelled", "refunded", "visit"}
    assert any(case.resend for case in CASES)
