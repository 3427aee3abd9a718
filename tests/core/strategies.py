"""Hypothesis strategies for core events and states."""

from __future__ import annotations

from hypothesis import strategies as st

from worker.core.events import Order, Visit
from worker.core.rules import load_rules
from worker.core.state import CustomerState
from worker.core.timeutil import DAY_MS

T0 = 20_454 * DAY_MS  # 2026-01-01
ACTIVITY = load_rules().activity  # the default key actions
REGIONS = (None, "North China", "East China", "North-East")

instants = st.integers(min_value=T0, max_value=T0 + 700 * DAY_MS)


@st.composite
def orders(draw: st.DrawFn, customer_id: str = "c1") -> Order:
    return Order(
        event_id=f"o{draw(st.integers(0, 10**9))}",
        customer_id=customer_id,
        occurred_ms=draw(instants),
        amount_minor=draw(st.integers(0, 60_000)),
        currency="USD",
        status=draw(st.sampled_from(["placed", "paid", "paid", "paid", "cancelled", "refunded"])),
        order_id=draw(st.sampled_from([f"A{i}" for i in range(12)])),
        region=draw(st.sampled_from(REGIONS)),
    )


@st.composite
def visits(draw: st.DrawFn, customer_id: str = "c1") -> Visit:
    return Visit(
        event_id=f"v{draw(st.integers(0, 10**9))}",
        customer_id=customer_id,
        occurred_ms=draw(instants),
        action=draw(st.sampled_from(["page_view", "login", "search"])),
        region=draw(st.sampled_from(REGIONS)),
    )


histories = st.lists(st.one_of(orders(), visits()), min_size=1, max_size=40)


def state_of(events: list[Order | Visit]) -> CustomerState:
    state = CustomerState("c1")
    for event in events:
        state.apply(event, ACTIVITY)
    return state
