"""Features: what conditions are written over, computed from the state at a given day (a date
of the shop's calendar, see :class:`~worker.core.timeutil.Calendar`).

Work is split in two so that evaluating one customer at many days (to find when a class will
next change) costs little: :func:`facts_of` does everything that does not depend on the day,
:func:`features_at` the rest.
"""

from __future__ import annotations

import math
from bisect import bisect_left, bisect_right
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass
from typing import Final

from worker.core.conditions import ABOVE, REACHES, FeatureKind, Threshold
from worker.core.state import CustomerState, OrderIndex
from worker.core.timeutil import Calendar

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
    "days_since_first_order": "shop dates since the first counted order (BG/NBD T)",
    "days_since_last_order": "shop dates since the last counted order",
    "days_since_last_visit": "shop dates since the last visit",
    "days_since_last_activity": "shop dates since the last order or visit",
    "days_since_last_key_action": "shop dates since the last key action (a visit whose action "
    "is one of activity.key_actions)",
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
        for name in (f"orders_{n}d", f"spend_{n}d", f"key_actions_{n}d"):
            kinds[name] = FeatureKind.WINDOW
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
    key_actions: list[int]  # the kept key actions' instants, sorted; read only
    calendar: Calendar
    anchors: dict[str, int | None]  # days-since feature -> the day it counts from
    invariant: Features
    _key_days: list[int] | None = None

    @property
    def key_days(self) -> list[int]:
        """The day of each kept key action, sorted: built when first read, because only rules
        with a key-action window read more than the last one (~2 us for a typical list)."""
        if self._key_days is None:
            self._key_days = self.calendar.days_of(self.key_actions)
        return self._key_days


def facts_of(state: CustomerState, counting: int, calendar: Calendar) -> Facts:
    index = state.index(counting, calendar)
    counted = index.counted
    days = index.days  # the counted orders' days, each once
    n = len(counted)
    first_day = days[0] if n else None
    last_day = days[-1] if n else None
    visit_day = None if state.last_visit_ms is None else calendar.day_of(state.last_visit_ms)
    keys = state.key_actions
    activity = max((d for d in (last_day, visit_day) if d is not None), default=None)
    span = None if first_day is None or last_day is None else last_day - first_day
    invariant: Features = {
        "orders_total": n,
        "monetary_total": index.total / 100,
        "has_order": n > 0,
        "has_visit": state.last_visit_ms is not None,
        "last_order_gap_days": (0 if index.day_counts[last_day] > 1 else last_day - days[-2])
        if n >= 2 and last_day is not None
        else None,
        "avg_interval_days": span / (n - 1) if n >= 2 and span is not None else None,
        "repeat_purchases": len(index.day_counts) - 1 if n else None,
        "purchase_span_days": span,
        "region": state.region,
    }
    if state.traits:
        invariant.update({f"trait.{k}": v for k, v in state.present_traits().items()})
    return Facts(
        index=index,
        first_order_ms=counted[0][0] if n else None,
        last_order_ms=counted[-1][0] if n else None,
        last_visit_ms=state.last_visit_ms,
        key_actions=keys,
        calendar=calendar,
        anchors={
            "days_since_first_order": first_day,
            "days_since_last_order": last_day,
            "days_since_last_visit": visit_day,
            "days_since_last_activity": activity,
            "days_since_last_key_action": calendar.last_day_of(keys) if keys else None,
        },
        invariant=invariant,
    )


@dataclass(frozen=True, slots=True)
class DaySource:
    """Generated source that computes, inside a function of ``(facts, day)`` whose ``f``
    holds the day-independent features, every feature that depends on the day: each of
    ``held`` and ``scored`` into the local ``_x_<name>``, the ``model`` ones into ``_m``."""

    lines: tuple[str, ...]
    held: tuple[str, ...]  # days-since and window features, in the order of features_at
    model: tuple[str, ...]
    scored: tuple[str, ...]
    namespace: dict[str, object]  # what the lines call

    def expressions(self) -> dict[str, str]:
        """Feature -> the expression that reads it after the lines."""
        out = {name: f"_x_{name}" for name in self.held + self.scored}
        out.update({name: f"_m[{name!r}]" for name in self.model})
        return out


def day_source(
    windows: tuple[int, ...],
    scores: tuple[Score, ...],
    model: Callable[[Facts, int], Features] | None = None,
    model_names: tuple[str, ...] = (),
    wanted: Collection[str] | None = None,
) -> DaySource:
    """One rules file's day-dependent features as source, generated once at load: feature
    names, windows and cuts become constants, so that the hot path (one evaluation per
    classified event, one per candidate day of the due-day search) runs with no loops,
    formatting or calls per feature. ``model_names``: the features ``model`` returns.
    ``wanted``: only these features (and what their scores read), None for all: the
    classifier computes what its conditions read, a snapshot everything."""
    if wanted is not None:
        score_of = {f"{s.name}_score": s.feature for s in scores}
        wanted = {*wanted, *(score_of[n] for n in wanted if n in score_of)}

    def want(name: str) -> bool:
        return wanted is None or name in wanted

    held: list[str] = []
    body = ["    a = facts.anchors"] if any(want(n) for n in DAYS_SINCE) else []
    for name in filter(want, DAYS_SINCE):
        held.append(name)
        body.append(f"    x = a[{name!r}]")
        body.append(f"    _x_{name} = None if x is None else day - x")
    by_window = [(n, f"orders_{n}d", f"spend_{n}d", f"key_actions_{n}d") for n in windows]
    if any(want(o) or want(s) for _, o, s, _k in by_window):
        body.append("    index = facts.index")
        body.append("    days, counts, amounts = index.days, index.day_counts, index.day_amounts")
        body.append("    day_hi = _br(days, day)")
    if any(want(k) for *_, k in by_window):
        body.append("    keys = facts.key_days")
        body.append("    key_hi = _br(keys, day)")
    for n, orders, spend, keys in by_window:  # by day, not by instant: an order's day is its date
        if want(orders) or want(spend):
            body.append(f"    window = days[_bl(days, day - {n - 1}, 0, day_hi) : day_hi]")
        if want(orders):
            held.append(orders)
            body.append(f"    _x_{orders} = sum([counts[d] for d in window])")
        if want(spend):
            held.append(spend)
            body.append(f"    _x_{spend} = sum([amounts[d] for d in window]) / 100")
        if want(keys):
            held.append(keys)
            body.append(f"    _x_{keys} = key_hi - _bl(keys, day - {n - 1}, 0, key_hi)")
    namespace: dict[str, object] = {
        "_bl": bisect_left,
        "_br": bisect_right,
        "_NUMBER": _NUMBER,
        "sum": sum,  # the rules' classifier runs with no builtins
    }
    model_held = tuple(filter(want, model_names)) if model is not None else ()
    if model_held:  # the predictive features of a fitted [model]
        namespace["_model"] = model
        body.append("    _m = _model(facts, day)")
    scored = []
    for i, score in enumerate(scores):
        if not want(f"{score.name}_score"):
            continue
        namespace[f"_cuts{i}"] = score.cuts
        if score.higher_is_better:
            value = f"1 + _br(_cuts{i}, v)"
        else:
            value = f"{len(score.cuts) + 1} - _bl(_cuts{i}, v)"
        feature = f"_x_{score.feature}" if score.feature in held else f"f[{score.feature!r}]"
        scored.append(f"{score.name}_score")
        body.append(f"    v = {feature}")
        body.append(f"    _x_{scored[-1]} = {value} if v.__class__ in _NUMBER else None")
    return DaySource(tuple(body), tuple(held), model_held, tuple(scored), namespace)


def compile_features(source: DaySource) -> Callable[[Facts, int], Features]:
    """``features_at(facts, day)``: every feature as one mapping (snapshots, views, tests)."""
    body = ["def features_at(facts, day):", "    f = facts.invariant.copy()", *source.lines]
    body += [f"    f[{name!r}] = _x_{name}" for name in source.held]
    if "_model" in source.namespace:  # between the window features and the scores, as ever
        body.append("    f.update(_m)")
    body += [f"    f[{name!r}] = _x_{name}" for name in source.scored]
    body.append("    return f")
    namespace = dict(source.namespace)
    # Safe: every name in the source is a validated rules name, repr()-quoted, or a number.
    exec(compile("\n".join(body), "<features>", "exec"), namespace)
    features_at: Callable[[Facts, int], Features] = namespace["features_at"]  # type: ignore[assignment]
    return features_at


def day_offsets(limits: Iterable[Threshold]) -> dict[str, tuple[int, ...]]:
    """Per days-since feature, the offsets from its anchor day at which a comparison with one
    of ``limits`` flips (see :data:`~worker.core.conditions.ABOVE`)."""
    out: dict[str, set[int]] = {}
    for name, limit, flips in limits:
        if name not in DAYS_SINCE:
            continue
        for value in limit if isinstance(limit, tuple) else (limit,):  # `in`: each of its list
            if not isinstance(value, int | float) or isinstance(value, bool):
                continue
            if not math.isfinite(value) or abs(value) > 1_000_000:
                continue
            base = math.floor(value)
            if flips == ABOVE:
                offsets = [base + 1]
            elif flips == REACHES:
                offsets = [math.ceil(value)]
            else:
                offsets = [base, base + 1]
            out.setdefault(name, set()).update(offsets)
    return {name: tuple(sorted(offsets)) for name, offsets in out.items()}


def score_limits(scores: Iterable[Score]) -> list[Threshold]:
    """A score is 1 + the cuts its feature has reached (higher is better), or 1 + those it has
    not exceeded (lower is better)."""
    return [
        (s.feature, cut, REACHES if s.higher_is_better else ABOVE) for s in scores for cut in s.cuts
    ]


def window_edges(
    facts: Facts, day: int, windows: tuple[int, ...], first: int, *, orders: bool, keys: bool
) -> set[int]:
    """Days after ``day`` on which some order (if ``orders``: the rules read an order window)
    or key action (if ``keys``) enters or leaves a rolling window; of each window's edges
    only the ``first`` earliest, which is all that a search for the ``first`` earliest
    candidates overall needs. Unread windows cannot move a class: their edges would only be
    days classified for nothing."""
    edges: set[int] = set()
    days = facts.index.days  # one entry a day
    if orders and days:
        start = bisect_right(days, day)
        edges.update(days[start : start + first])  # dated after ``day``: enter on their day
        for n in windows:
            start = bisect_right(days, day - n)  # leaves the n-day window on d + n
            edges.update([d + n for d in days[start : start + first]])
    key_days = facts.key_days  # possibly several a day
    if keys and key_days:
        edges.update(_distinct_after(key_days, day, first))
        for n in windows:
            edges.update([d + n for d in _distinct_after(key_days, day - n, first)])
    return edges


def _distinct_after(days: list[int], after: int, count: int) -> list[int]:
    """The first ``count`` distinct values above ``after`` in sorted ``days``."""
    out: list[int] = []
    i = bisect_right(days, after)
    while i < len(days) and len(out) < count:
        out.append(days[i])
        i = bisect_right(days, days[i], i)
    return out
