"""Features: what conditions are written over, computed from the state at a given UTC day.

Work is split in two so that evaluating one customer at many days (to find when a class will
next change) costs little: :func:`facts_of` does everything that does not depend on the day,
:func:`features_at` the rest.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from collections.abc import Iterable
from dataclasses import dataclass
from itertools import accumulate
from typing import Final

from worker.core.conditions import FeatureKind
from worker.core.state import CustomerState
from worker.core.timeutil import day_of

Features = dict[str, object]

INVARIANT: Final = {
    "orders_total": "counted orders, lifetime",
    "monetary_total": "spend of counted orders, lifetime, in the base currency",
    "has_order": "at least one counted order",
    "has_visit": "at least one visit",
    "last_order_gap_days": "days between the last two counted orders (null below 2 orders)",
    "avg_interval_days": "mean days between counted orders (null below 2 orders)",
    "repeat_purchases": "distinct order days minus one (BG/NBD x)",
    "purchase_span_days": "days from first to last order (BG/NBD t_x)",
    "region": "region of the latest event that carried one",
}
DAYS_SINCE: Final = {
    "days_since_first_order": "UTC dates since the first counted order (BG/NBD T)",
    "days_since_last_order": "UTC dates since the last counted order",
    "days_since_last_visit": "UTC dates since the last visit",
    "days_since_last_activity": "UTC dates since the last order or visit",
}


@dataclass(frozen=True, slots=True)
class Score:
    """A 1-5 score over one feature (RFM and the like)."""

    name: str
    feature: str
    cuts: tuple[float, ...]
    higher_is_better: bool

    def of(self, value: object) -> int | None:
        if not isinstance(value, int | float) or isinstance(value, bool):
            return None
        if self.higher_is_better:
            return 1 + bisect_right(self.cuts, value)
        return len(self.cuts) + 1 - bisect_left(self.cuts, value)


def feature_kinds(windows: Iterable[int], scores: Iterable[Score]) -> dict[str, FeatureKind]:
    kinds = dict.fromkeys(INVARIANT, FeatureKind.INVARIANT)
    kinds.update(dict.fromkeys(DAYS_SINCE, FeatureKind.DAYS_SINCE))
    for n in windows:
        kinds[f"orders_{n}d"] = kinds[f"spend_{n}d"] = FeatureKind.WINDOW
    for score in scores:
        kinds[f"{score.name}_score"] = FeatureKind.SCORE
    return kinds


@dataclass(frozen=True, slots=True)
class Facts:
    """Day-independent digest of a state."""

    order_days: list[int]
    cumulative_spend: list[int]  # cumulative_spend[i] = sum of the first i amounts
    first_order_ms: int | None
    last_order_ms: int | None
    last_visit_ms: int | None
    anchors: dict[str, int | None]  # days-since feature -> the day it counts from
    invariant: Features


def facts_of(state: CustomerState, counting: int) -> Facts:
    counted = state.counted(counting)
    days = [day_of(ms) for ms, _ in counted]
    spend = list(accumulate((amount for _, amount in counted), initial=0))
    n = len(days)
    first_day = days[0] if n else None
    last_day = days[-1] if n else None
    visit_day = None if state.last_visit_ms is None else day_of(state.last_visit_ms)
    activity = max((d for d in (last_day, visit_day) if d is not None), default=None)
    invariant: Features = {
        "orders_total": n,
        "monetary_total": spend[-1] / 100,
        "has_order": n > 0,
        "has_visit": state.last_visit_ms is not None,
        "last_order_gap_days": days[-1] - days[-2] if n >= 2 else None,
        "avg_interval_days": (days[-1] - days[0]) / (n - 1) if n >= 2 else None,
        "repeat_purchases": len(set(days)) - 1 if n else None,
        "purchase_span_days": days[-1] - days[0] if n else None,
        "region": state.region,
    }
    return Facts(
        order_days=days,
        cumulative_spend=spend,
        first_order_ms=counted[0][0] if n else None,
        last_order_ms=counted[-1][0] if n else None,
        last_visit_ms=state.last_visit_ms,
        anchors={
            "days_since_first_order": first_day,
            "days_since_last_order": last_day,
            "days_since_last_visit": visit_day,
            "days_since_last_activity": activity,
        },
        invariant=invariant,
    )


def features_at(
    facts: Facts, day: int, windows: tuple[int, ...], scores: tuple[Score, ...]
) -> Features:
    f = dict(facts.invariant)
    for name, anchor in facts.anchors.items():
        f[name] = None if anchor is None else day - anchor
    days, spend = facts.order_days, facts.cumulative_spend
    hi = bisect_right(days, day)
    for n in windows:
        lo = bisect_left(days, day - n + 1, 0, hi)
        f[f"orders_{n}d"] = hi - lo
        f[f"spend_{n}d"] = (spend[hi] - spend[lo]) / 100
    for score in scores:
        f[f"{score.name}_score"] = score.of(f[score.feature])
    return f


def window_edges(facts: Facts, day: int, windows: tuple[int, ...]) -> set[int]:
    """Days after ``day`` on which some order enters or leaves a rolling window."""
    edges: set[int] = set()
    for order_day in facts.order_days:
        if order_day > day:
            edges.add(order_day)
        for n in windows:
            if order_day + n > day:
                edges.add(order_day + n)
    return edges
