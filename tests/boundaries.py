"""Boundary cases of the default rules: every number in default_rules.toml on both sides.

Plain data, shared by tests/core/test_boundaries.py (the core, event by event) and
tests/test_oracle.py (replay through the command's code path against the independent oracle),
so each number is pinned twice by expected values written here by hand, not only by the two
implementations agreeing. Imports nothing from ``worker`` or ``tests.oracle``.

A case is a customer's events in delivery order, each dated a whole number of days before
TODAY (at noon unless said otherwise), and what the rules must say on TODAY.
"""

from __future__ import annotations

from dataclasses import dataclass, field

TODAY = "2027-06-01"  # the day classified; every case is replayed up to its noon


@dataclass(frozen=True)
class Ev:
    """One event: an order status ("placed", "paid", "cancelled", "refunded") or "visit"."""

    days_ago: int
    kind: str = "paid"
    cents: int = 0
    order: str | None = None  # several statuses of one order share it; None: its own order


@dataclass(frozen=True)
class Case:
    name: str
    events: tuple[Ev, ...]
    expect: dict[str, object]  # dimension -> class, or an integer feature -> value
    resend: tuple[int, ...] = field(default=())  # indices of events delivered again at the end


def paid(*orders: tuple[int, int]) -> tuple[Ev, ...]:
    """Paid orders, each its own, from (days_ago, cents)."""
    return tuple(Ev(days_ago, "paid", cents) for days_ago, cents in orders)


def same_day(count: int, cents: int, days_ago: int = 0) -> tuple[tuple[int, int], ...]:
    return ((days_ago, cents),) * count


CASES: tuple[Case, ...] = (
    # value_tier: high = orders_90d >= 4 and spend_90d > 200; medium = 2-3 orders and > 100.
    Case("high_4_orders_200_01", paid(*same_day(3, 60_00), (0, 20_01)), {"value_tier": "high"}),
    Case("not_high_4_orders_200_00", paid(*same_day(3, 60_00), (0, 20_00)), {"value_tier": "low"}),
    Case("medium_3_orders_300", paid(*same_day(3, 100_00)), {"value_tier": "medium"}),
    Case("high_4_orders_300", paid(*same_day(4, 75_00)), {"value_tier": "high"}),
    Case("medium_2_orders_100_01", paid((0, 50_00), (0, 50_01)), {"value_tier": "medium"}),
    Case("low_2_orders_100_00", paid((0, 50_00), (0, 50_00)), {"value_tier": "low"}),
    Case("low_1_order_150", paid((0, 150_00)), {"value_tier": "low"}),
    Case("medium_2_orders_150", paid((0, 75_00), (0, 75_00)), {"value_tier": "medium"}),
    Case("low_4_orders_150", paid(*same_day(4, 37_50)), {"value_tier": "low"}),
    Case("low_5_orders_150", paid(*same_day(5, 30_00)), {"value_tier": "low"}),
    # The 90-day window: an order 89 days ago is in it, one 90 days ago is not.
    Case(
        "window_holds_89_days",
        paid(*same_day(3, 60_00), (89, 60_00)),
        {"value_tier": "high", "orders_90d": 4},
    ),
    Case(
        "window_drops_90_days",
        paid(*same_day(3, 60_00), (90, 60_00)),
        {"value_tier": "medium", "orders_90d": 3},
    ),
    # lifecycle
    Case("new_30_days", paid((30, 10_00)), {"lifecycle": "new"}),
    Case("active_31_days", paid((31, 10_00)), {"lifecycle": "active"}),
    Case("active_60_days", paid((60, 10_00)), {"lifecycle": "active"}),
    Case("churn_risk_61_days", paid((61, 10_00)), {"lifecycle": "churn_risk"}),
    Case("churn_risk_180_days", paid((180, 10_00)), {"lifecycle": "churn_risk"}),
    Case("churned_181_days", paid((181, 10_00)), {"lifecycle": "churned"}),
    Case(
        "churn_risk_visit_180_days",
        (*paid((181, 10_00)), Ev(180, "visit")),
        {"lifecycle": "churn_risk"},
    ),
    Case(
        "churned_visit_181_days", (*paid((200, 10_00)), Ev(181, "visit")), {"lifecycle": "churned"}
    ),
    Case("returning_gap_181_last_30", paid((211, 10_00), (30, 10_00)), {"lifecycle": "returning"}),
    Case("active_gap_181_last_31", paid((212, 10_00), (31, 10_00)), {"lifecycle": "active"}),
    Case("active_gap_180_last_0", paid((180, 10_00), (0, 10_00)), {"lifecycle": "active"}),
    Case("potential_visit_only", (Ev(0, "visit"),), {"lifecycle": "potential"}),
    # tenure
    Case("short_90_days", paid((90, 10_00)), {"tenure": "short"}),
    Case("mid_91_days", paid((91, 10_00)), {"tenure": "mid"}),
    Case("mid_365_days", paid((365, 10_00)), {"tenure": "mid"}),
    Case("long_366_days", paid((366, 10_00)), {"tenure": "long"}),
    # membership
    Case("ordinary_2_orders", paid(*same_day(2, 1_00)), {"membership": "ordinary"}),
    Case("member_3_orders", paid(*same_day(3, 1_00)), {"membership": "member"}),
    Case("member_9_orders", paid(*same_day(9, 1_00)), {"membership": "member"}),
    Case("super_member_10_orders", paid(*same_day(10, 1_00)), {"membership": "super_member"}),
    # old_customer: orders_total >= 2 and monetary_total > 40
    Case("old_customer_40_01", paid((0, 20_00), (0, 20_01)), {"old_customer": "in"}),
    Case("not_old_customer_40_00", paid((0, 20_00), (0, 20_00)), {"old_customer": None}),
    Case("not_old_customer_1_order", paid((0, 100_00)), {"old_customer": None}),
    # R score (lower is better): 5 up to 14 days, 4 up to 30, 3 up to 60, 2 up to 120, then 1.
    *(
        Case(f"r_score_{days}_days", paid((days, 10_00)), {"r_score": score})
        for days, score in ((14, 5), (15, 4), (30, 4), (31, 3), (60, 3), (61, 2), (120, 2))
    ),
    Case("r_score_121_days", paid((121, 10_00)), {"r_score": 1}),
    # F score (higher is better): cuts 2, 3, 5, 10 orders.
    *(
        Case(f"f_score_{n}_orders", paid(*same_day(n, 1_00)), {"f_score": score})
        for n, score in ((1, 1), (2, 2), (3, 3), (4, 3), (5, 4), (9, 4), (10, 5))
    ),
    # M score: cuts 50, 150, 400, 1000 spent.
    *(
        Case(f"m_score_{cents}_cents", paid((0, cents)), {"m_score": score})
        for cents, score in (
            (49_99, 1),
            (50_00, 2),
            (149_99, 2),
            (150_00, 3),
            (399_99, 3),
            (400_00, 4),
            (999_99, 4),
            (1000_00, 5),
        )
    ),
    # Refunds and cancels uncount an order, whatever the arrival order.
    Case(
        "refund_leaves_4_orders_200_01",
        (
            *paid(*same_day(3, 60_00), (0, 20_01)),
            Ev(1, "paid", 5_00, "R"),
            Ev(0, "refunded", 0, "R"),
        ),
        {"value_tier": "high", "orders_total": 4},
    ),
    Case(
        "refund_leaves_4_orders_200_00",
        (
            *paid(*same_day(3, 60_00), (0, 20_00)),
            Ev(1, "paid", 5_00, "R"),
            Ev(0, "refunded", 0, "R"),
        ),
        {"value_tier": "low", "orders_total": 4},
    ),
    Case(
        "refund_before_its_payment",
        (Ev(0, "refunded", 0, "R"), *paid((0, 20_00)), Ev(1, "paid", 20_01, "R")),
        {"old_customer": None, "orders_total": 1},
    ),
    Case(
        "cancel_takes_old_customer_to_40_00",
        (
            *paid((0, 20_00), (0, 20_00)),
            Ev(2, "placed", 1_00, "C"),
            Ev(2, "paid", 1_00, "C"),
            Ev(1, "cancelled", 0, "C"),
        ),
        {"old_customer": None, "orders_total": 2},
    ),
    Case(
        "cancelled_order_never_paid_back",
        (Ev(3, "placed", 1_00, "C"), Ev(2, "cancelled", 0, "C"), *paid((0, 20_00), (0, 20_00))),
        {"old_customer": None, "orders_total": 2},
    ),
    Case(
        "placed_is_not_counted",
        (*paid((0, 20_00), (0, 20_00)), Ev(0, "placed", 1, "P")),
        {"old_customer": None, "orders_total": 2},
    ),
    # Late events (older than the clock when delivered) land in their own day's window.
    Case(
        "late_order_completes_high",
        (*paid(*same_day(3, 60_00)), *paid((89, 20_01))),
        {"value_tier": "high", "orders_90d": 4},
    ),
    Case(
        "late_order_outside_the_window",
        (*paid(*same_day(3, 60_00)), *paid((90, 20_01))),
        {"value_tier": "medium", "orders_90d": 3, "orders_total": 4},
    ),
    Case(
        "late_first_order_makes_returning",
        paid((30, 10_00), (211, 10_00)),
        {"lifecycle": "returning", "tenure": "mid"},
    ),
    # Duplicates change nothing: re-sent orders and statuses count once.
    Case(
        "duplicate_does_not_make_high",
        paid(*same_day(3, 60_00), (0, 20_01)),
        {"value_tier": "high", "orders_total": 4, "membership": "member"},
        resend=(0, 1, 2, 3),
    ),
    Case(
        "duplicates_stay_2_orders_100_00",
        paid((0, 50_00), (0, 50_00)),
        {"value_tier": "low", "orders_total": 2, "f_score": 2},
        resend=(0, 1),
    ),
    Case(
        "duplicate_refund_after_payment",
        (*paid((0, 20_00), (0, 20_01)), Ev(1, "paid", 9_00, "R"), Ev(0, "refunded", 0, "R")),
        {"old_customer": "in", "orders_total": 2},
        resend=(2, 3),
    ),
)
