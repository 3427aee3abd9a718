from hypothesis import given
from hypothesis import strategies as st

from tests.core.strategies import ACTIVITY, histories, state_of
from worker.core.events import Order
from worker.core.state import PAID, PLACED, CustomerState, OrderIndex
from worker.core.timeutil import UTC_CALENDAR


def statistics(state: CustomerState) -> tuple[object, ...]:
    return (
        state.orders,
        state.first_visit_ms,
        state.last_visit_ms,
        state.key_actions,
        state.region,
        state.region_ms,
    )


@given(histories)
def test_idempotent_for_repeated_events(events: list) -> None:
    once = state_of(events)
    twice = state_of(events + events)
    assert statistics(once) == statistics(twice)


@given(histories, st.randoms(use_true_random=False))
def test_commutative_within_a_customer(events: list, rnd) -> None:
    shuffled = list(events)
    rnd.shuffle(shuffled)
    assert statistics(state_of(events)) == statistics(state_of(shuffled))


@given(histories)
def test_apply_reports_change_exactly_when_statistics_move(events: list) -> None:
    state = CustomerState("c1")
    for event in events:
        before = repr(statistics(state))
        changed = state.apply(event, ACTIVITY)
        assert changed == (repr(statistics(state)) != before)


def order(status: str, ms: int, amount: int = 1000, order_id: str = "A") -> Order:
    return Order(f"{status}{ms}", "c1", ms, amount, "USD", status, order_id, None)


def test_cancel_before_payment_still_voids_the_order() -> None:
    state = state_of([order("cancelled", 5), order("paid", 1)])
    assert state.counted(PAID, UTC_CALENDAR) == []


def test_paid_amount_wins_over_placed_and_placed_counts_only_when_configured() -> None:
    state = state_of([order("placed", 1, 900), order("paid", 2, 1000)])
    assert state.counted(PAID, UTC_CALENDAR) == [(2, 1000)]
    only_placed = state_of([order("placed", 1, 900)])
    assert only_placed.counted(PAID, UTC_CALENDAR) == []
    assert only_placed.counted(PLACED | PAID, UTC_CALENDAR) == [(1, 900)]


def test_region_follows_latest_event() -> None:
    a = Order("e1", "c1", 10, 0, "USD", "paid", "A", "East")
    b = Order("e2", "c1", 20, 0, "USD", "paid", "B", "North")
    assert state_of([b, a]).region == "North"


@given(histories, st.sampled_from([PAID, PLACED | PAID]))
def test_incremental_order_index_equals_a_rebuild(events: list, counting: int) -> None:
    state = CustomerState("c1")
    for event in events:
        state.index(counting, UTC_CALENDAR)  # keep the derived index live while events arrive
        state.apply(event, ACTIVITY)
    live = state.index(counting, UTC_CALENDAR)
    fresh = OrderIndex(state.orders, counting, UTC_CALENDAR)
    assert (live.counted, live.total, live.day_counts, live.day_amounts, live.days) == (
        fresh.counted,
        fresh.total,
        fresh.day_counts,
        fresh.day_amounts,
        fresh.days,
    )
