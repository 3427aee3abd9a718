from pathlib import Path

import pytest

from worker.core.rules import RulesError, default_rules_text, load_rules, parse_rules


def test_defaults_load_with_a_content_version() -> None:
    rules = load_rules()
    assert rules.dimension_names == (
        "lifecycle",
        "value_tier",
        "rfm",
        "membership",
        "tenure",
        "old_customer",
    )
    assert rules.version.startswith("sha256:")
    assert parse_rules(default_rules_text() + b"\n", "x").version != rules.version


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (('count_status = "paid"', 'count_status = "shipped"'), "orders.count_status"),
        (("windows = [90]", "windows = []"), "orders.windows"),
        (("cuts = [14, 30, 60, 120]", "cuts = [30, 14, 60, 120]"), "scores.r.cuts"),
        (
            ('{ name = "low" }', '{ name = "low", when = "spend_90d >" }'),
            "dimensions[1].classes[2].when",
        ),
        (('{ name = "active", when', '{ name = "Active", when'), "dimensions[0].classes[3].name"),
        (
            ('{ name = "churn_risk" }', '{ name = "churn_risk" }, { name = "x" }'),
            "only the last class",
        ),
        (("orders_total >= 10", "orderz >= 10"), "unknown feature 'orderz'"),
        (("[money]", "[money]\ncolour = 1"), "money.colour"),
        (('name = "tenure"', 'name = "lifecycle"'), "defined twice"),
    ],
)
def test_invalid_rules_name_the_field(edit: tuple[str, str], message: str) -> None:
    text = default_rules_text().decode()
    assert edit[0] in text
    with pytest.raises(RulesError, match=message.replace("[", r"\[").replace("]", r"\]")):
        parse_rules(text.replace(edit[0], edit[1], 1).encode(), "rules.toml")


def test_toml_syntax_errors_carry_the_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text("[orders]\nwindows = [90,\ncount_status = 1\n")
    with pytest.raises(RulesError, match=r"bad\.toml: .*line 3"):
        load_rules(path)


def test_missing_file_is_a_rules_error(tmp_path: Path) -> None:
    with pytest.raises(RulesError, match="cannot read"):
        load_rules(tmp_path / "nope.toml")


def test_placed_counting_and_rates() -> None:
    text = default_rules_text().decode().replace('count_status = "paid"', 'count_status = "placed"')
    text = text.replace("rates = {}", "rates = { EUR = 1.1 }")
    rules = parse_rules(text.encode(), "x")
    assert rules.counting == 3
    assert str(rules.rates["EUR"]) == "1.1"
