"""A fitted [model] in the rules: validation, the predictive features, and their timed flips."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.core.strategies import histories, state_of
from worker.core.engine import fire_timer, next_change_day, process_event
from worker.core.events import Order, Rejection, Visit
from worker.core.features import facts_of
from worker.core.predict import clv, expected_order_value, expected_purchases, p_alive
from worker.core.rules import Rules, RulesError, default_rules_text, parse_rules
from worker.core.state import CustomerState
from worker.core.timeutil import DAY_MS, day_of

EXAMPLE = Path(__file__).parents[2] / "docs" / "cdnow_model.toml"
MODEL = EXAMPLE.read_bytes()
WITH_MODEL = parse_rules(default_rules_text() + b"\n" + MODEL, "default+cdnow")
# Flips of every kind: p_alive both ways of a limit, expected orders, discounted CLV.
TIMED = parse_rules(
    MODEL.replace(b"annual_discount_rate = 0.0", b"annual_discount_rate = 0.1")
    + b"""
[[dimensions]]
name = "odds"
classes = [
  { name = "sure", when = "p_alive >= 0.9" },
  { name = "likely", when = "0.5 < p_alive" },
  { name = "coin", when = "p_alive > 0.2 and expected_orders_90d > 0.3" },
  { name = "valuable", when = "clv_365d >= 40 and days_since_last_order <= 200" },
  { name = "gone" },
]
""",
    "timed",
)


def rules_with(extra: str, model: bytes = MODEL) -> Rules:
    return parse_rules(model + b"\n" + extra.encode(), "test")


def test_default_rules_gain_the_predictive_dimensions_only_with_a_model() -> None:
    plain = parse_rules(default_rules_text(), "default")
    assert "predicted_churn" not in plain.dimension_names
    assert plain.model is None
    assert {"predicted_churn", "clv_tier"} <= set(WITH_MODEL.dimension_names)
    assert WITH_MODEL.model is not None
    assert WITH_MODEL.model.bgnbd.alpha == pytest.approx(4.414 * 7, rel=1e-3)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[model]\nbgnbd = { r = 1, alpha = 2, a = 1, b = 1 }", "model.gamma_gamma: missing"),
        (
            "[model]\nbgnbd = { r = 1, alpha = 0, a = 1, b = 1 }\n"
            "gamma_gamma = { p = 1, q = 2, v = 3 }",
            "model.bgnbd.alpha: must be a positive number",
        ),
        (
            "[model]\nbgnbd = { r = 1, alpha = 2, a = 1, b = 1 }\n"
            "gamma_gamma = { p = 1, q = 0.5, v = 3 }",
            "model.gamma_gamma.q: must be above 1",
        ),
        (
            "[model]\nhorizons = [0]\nbgnbd = { r = 1, alpha = 2, a = 1, b = 1 }\n"
            "gamma_gamma = { p = 1, q = 2, v = 3 }",
            "model.horizons",
        ),
        (
            '[[segments]]\nname = "lost"\nwhen = "p_alive < 0.3"',
            "'p_alive' needs a fitted [model] table",
        ),
    ],
)
def test_bad_model_tables_and_model_features_without_a_model_are_refused(
    text: str, message: str
) -> None:
    with pytest.raises(RulesError, match=message.replace("[", r"\[").replace("]", r"\]")):
        parse_rules(text.encode(), "test")


def test_model_features_are_compared_directly_and_follow_the_horizons() -> None:
    with pytest.raises(RulesError, match="compare it directly"):
        rules_with('[[segments]]\nname = "s"\nwhen = "p_alive * 2 < 1"')
    with pytest.raises(RulesError, match="unknown feature 'clv_30d'"):
        rules_with('[[segments]]\nname = "s"\nwhen = "clv_30d > 1"')
    custom = MODEL.replace(b"horizons = [90, 365]", b"horizons = [30]")
    assert rules_with('[[segments]]\nname = "s"\nwhen = "clv_30d > 1"', custom).model


@settings(max_examples=100, deadline=None)
@given(histories, st.integers(0, 900))
def test_features_are_the_model_formulas_at_the_day(events: list, later: int) -> None:
    state = state_of(events)
    facts = facts_of(state, WITH_MODEL.counting)
    days = facts.index.days
    assert WITH_MODEL.model is not None
    if not days:
        return
    day = days[-1] + later
    f = WITH_MODEL.model.values(facts, day)
    # Classification computes only what the conditions read: the same values.
    read = WITH_MODEL.features_at(facts, day)
    assert {k: read[k] for k in f if k in read} == {
        "p_alive": f["p_alive"],
        "clv_365d": f["clv_365d"],
    }
    m, g = WITH_MODEL.model.bgnbd, WITH_MODEL.model.gamma_gamma
    x, t_x, T = len(days) - 1, days[-1] - days[0], day - days[0]
    amounts = facts.index.day_amounts
    mean = sum(amounts[d] for d in days[1:]) / 100 / x if x else 0.0
    assert f["p_alive"] == p_alive(m, x, t_x, T)
    assert f["expected_order_value"] == expected_order_value(g, x, mean)
    assert f["expected_orders_365d"] == expected_purchases(m, x, t_x, T, 365)
    assert f["clv_90d"] == pytest.approx(
        clv(m, f["expected_order_value"], x, t_x, T, horizon=90), rel=1e-12
    )


def classes_from_scratch(events: list, rules: Rules, day: int) -> dict:
    state = state_of([e for e in events if day_of(e.occurred_ms) <= day])
    return rules.classify(rules.features_at(facts_of(state, rules.counting), day))


@settings(max_examples=40, deadline=None)
@given(histories)
def test_timers_give_the_classes_of_a_fresh_evaluation_every_day(events: list) -> None:
    """Replay day by day (timers at each due day's start, then that day's events) and the
    customer's classes at the end of every day are those computed from scratch."""
    events = sorted(events, key=lambda e: e.occurred_ms)
    first, last = day_of(events[0].occurred_ms), day_of(events[-1].occurred_ms) + 400
    state = CustomerState("c1")
    pending = list(events)
    for day in range(first, last):
        if state.due_day is not None and state.due_day <= day:
            assert state.due_day == day  # never overslept
            fire_timer(state, TIMED, day, day * DAY_MS)
        while pending and day_of(pending[0].occurred_ms) == day:
            event = pending.pop(0)
            result = process_event(state, event, TIMED, event.occurred_ms, event.occurred_ms)
            assert not isinstance(result, Rejection)
        if state.classes:  # classified once anything that counts arrived
            assert state.classes == classes_from_scratch(events, TIMED, day), day


def test_p_alive_falls_below_the_line_on_the_day_the_timer_fires() -> None:
    rules = rules_with(
        '[[segments]]\nname = "lapsing"\nwhen = "orders_total >= 1 and p_alive < 0.3"'
    )
    state = CustomerState("c1")
    for i, day in enumerate([20_000, 20_010, 20_020, 20_030]):
        order = Order(f"e{i}", "c1", day * DAY_MS, 2500, "USD", "paid", f"o{i}", None)
        process_event(state, order, rules, day * DAY_MS, day * DAY_MS)
    process_event(state, Visit("v", "c1", 20_031 * DAY_MS, "login", None), rules, 0, 0)
    assert state.classes["lapsing"] is None
    assert rules.model is not None
    m = rules.model.bgnbd
    crossing = next(d for d in range(20_031, 30_000) if p_alive(m, 3, 30, d - 20_000) < 0.3)
    assert state.due_day == crossing
    changes = fire_timer(state, rules, crossing, 0)
    assert [(c.dimension, c.to_class, c.cause.type) for c in changes] == [
        ("lapsing", "in", "timer")
    ]
    assert changes[0].state["p_alive"] < 0.3 <= p_alive(m, 3, 30, crossing - 1 - 20_000)


@settings(max_examples=100, deadline=None)
@given(histories, st.integers(0, 600))
def test_next_change_day_matches_a_day_by_day_scan_with_a_model(events: list, later: int) -> None:
    state = state_of(events)
    facts = facts_of(state, TIMED.counting)
    day = day_of(max(e.occurred_ms for e in events)) + later
    features = TIMED.features_at(facts, day)
    now = TIMED.classify(features)
    due = next_change_day(facts, features, TIMED, day, now, exact_checks=10_000)
    horizon = day + 1500
    scanned = next(
        (d for d in range(day + 1, horizon) if TIMED.classify(TIMED.features_at(facts, d)) != now),
        None,
    )
    assert due == scanned or (scanned is None and (due is None or due >= horizon))


def test_changes_with_a_model_carry_its_features_and_meet_the_contract() -> None:
    import json

    from jsonschema import Draft202012Validator

    schema = json.loads(
        (Path(__file__).parents[2] / "schemas" / "segment_change.v1.json").read_text()
    )
    contract = Draft202012Validator(schema)
    state = CustomerState("c1")
    changes = []
    for i, day in enumerate([20_000, 20_040, 20_100]):
        order = Order(f"e{i}", "c1", day * DAY_MS, 4200, "USD", "paid", f"o{i}", None)
        result = process_event(state, order, WITH_MODEL, day * DAY_MS, day * DAY_MS)
        assert not isinstance(result, Rejection)
        changes += result
    assert state.due_day is not None
    changes += fire_timer(state, WITH_MODEL, state.due_day, 0)
    assert {"predicted_churn", "clv_tier"} <= {c.dimension for c in changes}
    for change in changes:
        document = change.to_dict()
        contract.validate(document)
        assert set(WITH_MODEL.model.feature_names) <= set(document["state"])
