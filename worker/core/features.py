"""Features: what conditions are written over, computed from the state at a given UTC day.

Work is split in two so that evaluating one customer at many days (to find when a class will
next change) costs little: :func:`facts_of` does everything that does not depend on the day,
:func:`features_at` the rest.
"""

from __future__ import annotations

import math
from bisect import bisect_left, bisect_right
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Final

from worker.core.conditions import FeatureKind
from worker.core.state import CustomerState, OrderIndex
from worker.core.timeutil import DAY_MS, day_of

Features = dict[str, object]

_NUMBER: Final = frozenset({int, float})  # bool and str are not scored
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
TEXTUAL: Final = frozenset({"region"})
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


def feature_kinds(windows: Iterable[int], scores: Iterable[Score]) -> dict[str, FeatureKind]:
    kinds = dict.fromkeys(INVARIANT, FeatureKind.INVARIANT)
    kinds.update(dict.fromkeys(DAYS_SINCE, FeatureKind.DAYS_SINCE))
    for n in windows:
        kinds[f"orders_{n}d"] = kinds[f"spend_{n}d"] = FeatureKind.WINDOW
    for score in scores:
        kinds[f"{score.name}_score"] = FeatureKind.SCORE
    return kinds


@dataclass(slots=True)  # not frozen: built per evaluation, and frozen init costs a call per field
class Facts:
    """Day-independent digest of a state."""

    index: OrderIndex  # read only
    first_order_ms: int | None
    last_order_ms: int | None
    last_visit_ms: int | None
    anchors: dict[str, int | None]  # days-since feature -> the day it counts from
    invariant: Features


def facts_of(state: CustomerState, counting: int) -> Facts:
    index = state.index(counting)
    counted = index.counted
    n = len(counted)
    first_day = counted[0][0] // DAY_MS if n else None
    last_day = counted[-1][0] // DAY_MS if n else None
    visit_day = None if state.last_visit_ms is None else day_of(state.last_visit_ms)
    activity = max((d for d in (last_day, visit_day) if d is not None), default=None)
    span = None if first_day is None or last_day is None else last_day - first_day
    invariant: Features = {
        "orders_total": n,
        "monetary_total": index.total / 100,
        "has_order": n > 0,
        "has_visit": state.last_visit_ms is not None,
        "last_order_gap_days": last_day - counted[-2][0] // DAY_MS
        if n >= 2 and last_day is not None
        else None,
        "avg_interval_days": span / (n - 1) if n >= 2 and span is not None else None,
        "repeat_purchases": len(index.day_counts) - 1 if n else None,
        "purchase_span_days": span,
        "region": state.region,
    }
    return Facts(
        index=index,
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


def compile_features(
    windows: tuple[int, ...],
    scores: tuple[Score, ...],
    model: Callable[[Facts, int], Features] | None = None,
) -> Callable[[Facts, int], Features]:
    """``features_at(facts, day)`` for one rules file, generated once at load: feature names,
    windows and cuts become constants, so that the hot path (up to three evaluations per
    classified event) builds the mapping with no loops, formatting or calls per feature."""
    body = [
        "def features_at(facts, day):",
        "    f = facts.invariant.copy()",
        "    a = facts.anchors",
    ]
    for name in DAYS_SINCE:
        body.append(f"    x = a[{name!r}]")
        body.append(f"    f[{name!r}] = None if x is None else day - x")
    body += [
        "    index = facts.index",
        "    counted, days, amounts = index.counted, index.days, index.day_amounts",
        f"    hi = _bl(counted, ((day + 1) * {DAY_MS},))",
        "    day_hi = _br(days, day)",
    ]
    for n in windows:
        body.append(
            f"    f['orders_{n}d'] = hi - _bl(counted, ((day - {n - 1}) * {DAY_MS},), 0, hi)"
        )
        body.append(f"    lo = _bl(days, day - {n - 1}, 0, day_hi)")
        body.append(f"    f['spend_{n}d'] = sum([amounts[d] for d in days[lo:day_hi]]) / 100")
    namespace: dict[str, object] = {"_bl": bisect_left, "_br": bisect_right, "_NUMBER": _NUMBER}
    if model is not None:  # the predictive features of a fitted [model]
        namespace["_model"] = model
        body.append("    f.update(_model(facts, day))")
    for i, score in enumerate(scores):
        namespace[f"_cuts{i}"] = score.cuts
        if score.higher_is_better:
            value = f"1 + _br(_cuts{i}, v)"
        else:
            value = f"{len(score.cuts) + 1} - _bl(_cuts{i}, v)"
        body.append(f"    v = f[{score.feature!r}]")
        body.append(
            f"    f[{score.name + '_score'!r}] = {value} if v.__class__ in _NUMBER else None"
        )
    body.append("    return f")
    # Safe: every name in the source is a validated rules name, repr()-quoted, or a number.
    exec(compile("\n".join(body), "<features>", "exec"), namespace)
    features_at: Callable[[Facts, int], Features] = namespace["features_at"]  # type: ignore[assignment]
    return features_at


def day_offsets(limits: Iterable[tuple[str, object]]) -> dict[str, tuple[int, ...]]:
    """Per days-since feature, the offsets from its anchor day at which a comparison with one
    of ``limits`` can flip (both sides of each limit, so that any operator is covered)."""
    out: dict[str, set[int]] = {}
    for name, limit in limits:
        if name not in DAYS_SINCE or not isinstance(limit, int | float) or isinstance(limit, bool):
            continue
        if not math.isfinite(limit) or abs(limit) > 1_000_000:
            continue
        base = math.floor(limit)
        out.setdefault(name, set()).update((base, base + 1))
    return {name: tuple(sorted(offsets)) for name, offsets in out.items()}


def score_limits(scores: Iterable[Score]) -> list[tuple[str, object]]:
    return [(s.feature, cut) for s in scores for cut in s.cuts]


def window_edges(facts: Facts, day: int, windows: tuple[int, ...], first: int) -> set[int]:
    """Days after ``day`` on which some order enters or leaves a rolling window; of each
    window's edges only the ``first`` earliest, which is all that a search for the ``first``
    earliest candidates overall needs."""
    days = facts.index.days
    start = bisect_right(days, day)
    edges = set(days[start : start + first])  # orders dated after ``day`` enter on their day
    for n in windows:
        start = bisect_right(days, day - n)  # leaves the n-day window on d + n
        edges.update([d + n for d in days[start : start + first]])
    return edges
