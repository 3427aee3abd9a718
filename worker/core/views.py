"""A customer's state as JSON-ready data: for replay's --state-out, the CLI and the HTTP API."""

from __future__ import annotations

from collections.abc import Callable

from worker.core.changes import money
from worker.core.features import facts_of
from worker.core.predict import repeat_mean
from worker.core.rules import Rules
from worker.core.state import CustomerState
from worker.core.timeutil import format_ms, format_optional

Show = Callable[[CustomerState], dict[str, object]]
"""How a command shows a state: :func:`describe` at a day, or :func:`stored`."""


def showing(rules: Rules | None, at_ms: int) -> Show:
    """:func:`describe` at the shop's day that holds ``at_ms``; without rules, :func:`stored`."""
    if rules is None:
        return stored
    day = rules.calendar.day_of(at_ms)
    return lambda state: describe(state, rules, day)


def describe(state: CustomerState, rules: Rules, day: int) -> dict[str, object]:
    facts = facts_of(state, rules.counting, rules.calendar)
    features = rules.features_at(facts, day)
    x = features["repeat_purchases"]
    out: dict[str, object] = {
        "customer_id": state.customer_id,
        "orders_total": features["orders_total"],
        "monetary_total": money(features["monetary_total"]),
        "first_order_at": format_optional(facts.first_order_ms),
        "last_order_at": format_optional(facts.last_order_ms),
        **_profile(state),
    }
    for n in rules.windows:
        out[f"orders_{n}d"] = features[f"orders_{n}d"]
        out[f"spend_{n}d"] = money(features[f"spend_{n}d"])
    for score in rules.scores:
        out[f"{score.name}_score"] = features[f"{score.name}_score"]
    out["repeat_purchases"] = features["repeat_purchases"]  # what `fit` reads of a state file
    out["repeat_order_value"] = repeat_mean(facts, x) if isinstance(x, int) and x else None
    if rules.model is not None:
        out.update(rules.model.values(facts, day))
    out |= _classes(state)
    due = state.due_day
    out["next_change_at"] = None if due is None else format_ms(rules.calendar.start_ms(due))
    out["rules_version"] = state.rules_version
    return out


def stored(state: CustomerState) -> dict[str, object]:
    """The part of :func:`describe` that needs no rules: who, visits, region, traits, the
    classes last emitted and since when, and the rules version they were found under (what
    is shown while the rules file is refused). Not the orders: which count is a rule."""
    return {
        "customer_id": state.customer_id,
        **_profile(state),
        **_classes(state),
        "rules_version": state.rules_version,
    }


def _profile(state: CustomerState) -> dict[str, object]:
    out: dict[str, object] = {
        "first_visit_at": format_optional(state.first_visit_ms),
        "last_visit_at": format_optional(state.last_visit_ms),
        "region": state.region,
    }
    if state.traits:  # profile.v1: shown only for customers who have any
        out["traits"] = dict(sorted(state.present_traits().items()))
    return out


def _classes(state: CustomerState) -> dict[str, object]:
    out: dict[str, object] = {"classes": dict(state.classes)}
    if state.withheld:  # consent withdrawn: the classes now, not emitted (``classes`` were)
        out["withheld"] = dict(sorted(state.withheld.items()))
    out["since"] = {dim: format_ms(ms) for dim, ms in sorted(state.since_ms.items())}
    return out
