from hypothesis import given
from hypothesis import strategies as st

from tests.core.strategies import ACTIVITY, histories, state_of
from worker.core.events import Order, Visit
from worker.core.state import PAID, PLACED, CustomerState, OrderIndex, contributions
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
    fresh = OrderIndex(contributions(state.orders, counting), counting, UTC_CALENDAR)
    assert (live.counted, live.total, live.day_counts, live.day_amounts, live.days) == (
        fresh.counted,
        fresh.total,
        fresh.day_counts,
        fresh.day_amounts,
        fresh.days,
    )


def refund(event_id: str, amount: int, order_id: str = "A", status: str = "refunded") -> Order:
    return Order(event_id, "c1", 50, amount, "USD", status, order_id, None)


def test_a_partial_refund_lowers_the_order_and_a_full_one_voids_it() -> None:
    """Issue 15, case 4: orders of 100 and 10, a refund of 5 on the first: spend 105."""
    orders = [order("paid", 1, 10_000, "A"), order("paid", 2, 1_000, "B")]
    assert state_of([*orders, refund("r1", 500)]).counted(PAID, UTC_CALENDAR) == [
        (1, 9_500),
        (2, 1_000),
    ]
    # Several add up; a re-sent one (same event id) counts once.
    partials = [refund("r1", 500), refund("r2", 2_000, status="cancelled"), refund("r1", 500)]
    assert state_of([*orders, *partials]).counted(PAID, UTC_CALENDAR) == [(1, 7_500), (2, 1_000)]
    # Refunds reaching the amount, one or several, or a cancel with no amount: not counted.
    for voiding in ([refund("r1", 10_000)], [refund("r1", 6_000), refund("r2", 4_000)]):
        assert state_of([*orders, *voiding]).counted(PAID, UTC_CALENDAR) == [(2, 1_000)]
    cancel = refund("x", 0, status="cancelled")
    assert state_of([*orders, cancel]).counted(PAID, UTC_CALENDAR) == [(2, 1_000)]


def test_a_refund_before_its_order_counts_once_the_order_arrives() -> None:
    early = state_of([refund("r1", 3_000, "P3")])
    assert early.counted(PAID, UTC_CALENDAR) == []
    early.index(PAID, UTC_CALENDAR)  # the live index must follow the order's arrival too
    early.apply(order("paid", 9, 5_000, "P3"), ACTIVITY)
    assert early.counted(PAID, UTC_CALENDAR) == [(9, 2_000)]
    assert early.index(PAID, UTC_CALENDAR).total == 2_000


@given(
    st.lists(st.sampled_from(["placed", "paid", "refunded", "cancelled"]), max_size=8),
    st.lists(st.integers(0, 12_000), min_size=8, max_size=8),
    st.lists(st.integers(0, 2), min_size=8, max_size=8),
    st.randoms(use_true_random=False),
)
def test_refunds_are_order_independent_and_never_negative(
    statuses: list[str], amounts: list[int], ids: list[int], rnd
) -> None:
    """One order's events, some re-sent under the same event id: every arrival order gives
    the same counted amount, between 0 and the paid amount."""
    events = [
        Order(f"e{i}{s}", "c1", 100 + i, amounts[i], "USD", s, "A", None)
        for s, i in zip(statuses, ids, strict=False)
    ]
    shuffled = list(events)
    rnd.shuffle(shuffled)
    first, second = state_of(events), state_of(shuffled + events[:2])
    assert first.counted(PAID, UTC_CALENDAR) == second.counted(PAID, UTC_CALENDAR)
    for _, amount in first.counted(PAID, UTC_CALENDAR):
        assert 0 <= amount <= max(amounts)


def visit(ms: int, action: str = "login", event_id: str = "v") -> Visit:
    return Visit(f"{event_id}{ms}", "c1", ms, action, None)


def test_key_actions_keep_the_latest_and_those_the_longest_window_needs() -> None:
    keep = ACTIVITY.keep_ms
    state = state_of([visit(10), visit(10, event_id="again"), visit(5, "page_view")])
    assert state.key_actions == [10]  # a page view is no key action; one instant, one action
    state.apply(visit(10 + keep + 1), ACTIVITY)
    assert state.key_actions == [10 + keep + 1]  # 10 fell out of reach of every window
    assert not state.apply(visit(9), ACTIVITY)  # too old to matter: nothing changes
    assert state.apply(visit(keep + 2), ACTIVITY)
    assert state.key_actions == [keep + 2, keep + 11]
