"""A customer's state as JSON-ready data: for replay's --state-out, the CLI and the HTTP API."""

from __future__ import annotations

from worker.core.changes import money
from worker.core.features import facts_of
from worker.core.predict import repeat_mean
from worker.core.rules import Rules
from worker.core.state import CustomerState
from worker.core.timeutil import DAY_MS, format_ms, format_optional


def describe(state: CustomerState, rules: Rules, day: int) -> dict[str, object]:
    facts = facts_of(state, rules.counting)
    features = rules.features_at(facts, day)
    x = features["repeat_purchases"]
    out: dict[str, object] = {
        "customer_id": state.customer_id,
        "orders_total": features["orders_total"],
        "monetary_total": money(features["monetary_total"]),
        "first_order_at": format_optional(facts.first_order_ms),
        "last_order_at": format_optional(facts.last_order_ms),
        "first_visit_at": format_optional(state.first_visit_ms),
        "last_visit_at": format_optional(state.last_visit_ms),
        "region": state.region,
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
    out["classes"] = dict(state.classes)
    out["since"] = {dim: format_ms(ms) for dim, ms in sorted(state.since_ms.items())}
    out["next_change_at"] = None if state.due_day is None else format_ms(state.due_day * DAY_MS)
    out["rules_version"] = state.rules_version
    return out
