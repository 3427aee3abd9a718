import tomllib
from pathlib import Path

import pytest
import yaml

from tests.core.strategies import T0
from worker.core.engine import process_event
from worker.core.events import Order, Reason, Rejection
from worker.core.features import facts_of
from worker.core.rules import (
    MAX_RULES_BYTES,
    RulesError,
    default_rules_text,
    load_rules,
    parse_rules,
)
from worker.core.rules_syntax import read_document
from worker.core.state import CustomerState
from worker.core.timeutil import DAY_MS


def with_segment(condition: str) -> str:
    """The default rules plus one segment with ``condition``."""
    text = default_rules_text().decode()
    return text + f'\n[[segments]]\nname = "probe"\nwhen = "{condition}"\n'


def with_rates(rates: str) -> str:
    return default_rules_text().decode().replace("rates = {}", f"rates = {rates}", 1)


# Rules files that once passed `rules check` and then crashed replay or the live worker (on
# load, on the first classification or on the first EUR order), with what refuses them now.
CRASHING: dict[str, tuple[str, str]] = {
    "inf_constant": (with_segment("orders_total > 1e309"), "finite"),
    "nested_not": (with_segment("not " * 5000 + "has_visit"), "longer than 1000"),
    "nested_not_short": (with_segment("not " * 100 + "has_visit"), "nested more than"),
    "long_constant": (with_segment("orders_total > " + "9" * 4000), "longer than 1000"),
    "big_constant": (with_segment("orders_total > " + "9" * 400), "finite and at most"),
    "string_repeat": (with_segment("region == 'a' * 10000000000"), "numbers only"),
    "tuple_repeat": (with_segment("orders_total == (1,) * 1000000000"), "numbers only"),
    "tuple_negated": (with_segment("orders_total == -(1,)"), "numbers only"),
    "text_feature_repeat": (with_segment("region * 1000000000 == 'a'"), "numbers only"),
    "huge_rate": (with_rates("{ EUR = 1e30 }"), "money.rates.EUR"),
    "huge_rate_text": (with_rates('{ EUR = "1e999999" }'), "money.rates.EUR"),
    "tiny_rate_text": (with_rates('{ EUR = "1e-999999" }'), "money.rates.EUR"),
    "toml_huge_integer": (with_rates("{ EUR = " + "9" * 5000 + " }"), "digits"),
    "toml_deep_arrays": ("x = " + "[" * 50_000 + "]" * 50_000, "nested too deeply"),
    "huge_cut": (
        default_rules_text().decode().replace("[14, 30, 60, 120]", "[14, 30, 60, 1e300]"),
        "scores.r.cuts",
    ),
    "many_classes": (
        with_segment("has_visit").replace(
            "classes = [", "classes = [" + "{ name = 'c', when = 'has_visit' }, " * 101, 1
        ),
        "1 to 100",
    ),
    "oversized_file": ("# " + "x" * MAX_RULES_BYTES + "\n", "larger than"),
}


@pytest.mark.parametrize("name", sorted(CRASHING))
def test_rules_that_would_crash_at_run_time_are_refused(name: str, tmp_path: Path) -> None:
    text, message = CRASHING[name]
    path = tmp_path / "rules.toml"
    path.write_text(text)
    with pytest.raises(RulesError, match=message):
        load_rules(path)


def test_the_largest_rate_cannot_overflow_a_stored_amount() -> None:
    rules = parse_rules(with_rates("{ EUR = 1e9, JPY = 1e-9 }").encode(), "x")
    big = Order("e1", "c1", T0, 10**14, "EUR", "paid", "A", None)
    rejected = process_event(CustomerState("c1"), big, rules, T0, T0)
    assert isinstance(rejected, Rejection)
    assert (rejected.reason, rejected.field) == (Reason.INVALID_VALUE, "amount")
    state = CustomerState("c1")
    fits = Order("e2", "c1", T0, 100_000, "EUR", "paid", "B", None)  # 1,000.00 EUR
    assert isinstance(process_event(state, fits, rules, T0, T0), list)
    assert state.counted(rules.counting, rules.calendar) == [(T0, 10**14)]
    tiny = Order("e3", "c1", T0, 10**14, "JPY", "paid", "C", None)  # 1e12 JPY: 1,000.00
    assert isinstance(process_event(state, tiny, rules, T0, T0), list)
    assert state.counted(rules.counting, rules.calendar) == [(T0, 100_000), (T0, 10**14)]


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


def test_the_version_follows_what_the_file_says_not_how_it_is_written() -> None:
    text = default_rules_text().decode()
    version = parse_rules(text.encode(), "x").version
    reworded = "# a new first line\n" + text.replace("windows = [90]", "windows   =   [ 90 ]  # 3m")
    reworded = reworded.replace(
        'base_currency = "USD"\nrates = {}', "rates = {}\nbase_currency = 'USD'"
    )
    assert reworded != text
    assert parse_rules(reworded.encode(), "y").version == version
    for edit in (("spend_90d > 200", "spend_90d >= 200"), ("cuts = [14,", "cuts = [15,")):
        assert edit[0] in text
        assert parse_rules(text.replace(*edit).encode(), "x").version != version


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


def default_rules_yaml() -> str:
    return yaml.safe_dump(tomllib.loads(default_rules_text().decode()), sort_keys=False)


def test_a_yaml_file_is_the_same_rules_as_its_toml(tmp_path: Path) -> None:
    path = tmp_path / "rules.yaml"
    path.write_text(default_rules_yaml())
    rules = load_rules(path)
    assert rules.version == load_rules().version
    assert rules.dimension_names == load_rules().dimension_names


def test_a_yaml_twin_with_exponent_numbers_has_the_toml_version() -> None:
    # YAML 1.1 reads 9e-1 and 1e3 as strings; YAML 1.2 and TOML as floats.
    toml = (
        default_rules_text()
        .decode()
        .replace("rates = {}", "rates = { EUR = 9e-1 }")
        .replace("cuts = [50, 150, 400, 1000]", "cuts = [50, 150, 400, 1e3]")
    )
    yaml_text = (
        default_rules_yaml()
        .replace("rates: {}", "rates: {EUR: 9e-1}")
        .replace("- 400\n    - 1000", "- 400\n    - 1e3")
    )
    assert "9e-1" in toml and "1e3" in toml and "9e-1" in yaml_text and "1e3" in yaml_text
    from_toml = parse_rules(toml.encode(), "rules.toml")
    from_yaml = parse_rules(yaml_text.encode(), "rules.yaml")
    assert from_yaml.version == from_toml.version
    assert from_yaml.scores[2].cuts[3] == 1000.0


@pytest.mark.parametrize(
    ("text", "value"),
    [("9e-1", 0.9), ("+1.5e3", 1500.0), ("-.5", -0.5), (".5", 0.5), ("1.5E+3", 1500.0)],
)
def test_yaml_reads_the_floats_yaml_1_2_reads(text: str, value: object) -> None:
    assert read_document(f"x: {text}\n", "rules.yaml") == {"x": value}
    assert read_document(f"x: '{text}'\n", "rules.yaml") == {"x": text}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("orders: {windows: [90,\n", r"rules\.yml: not valid YAML: .*line 2"),
        ("orders:\n  windows: [90]\n  windows: [30]\n", r"duplicate key 'windows' \(line 3"),
        ("orders:\n  1: x\n", r"keys must be strings \(line 2"),
        ("orders: &o {windows: [90]}\nmoney: *o\n", "aliases"),
        ("- a\n- b\n", "top level must be a mapping"),
        ("orders: {}\n---\nmoney: {}\n", "expected a single document"),
        ("orders: {windowz: [90]}\n", r"orders\.windowz: unknown key"),
    ],
)
def test_yaml_is_held_to_what_toml_can_say(text: str, message: str) -> None:
    with pytest.raises(RulesError, match=message):
        parse_rules(text.encode(), "rules.yml")


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("count_status: yes", r'reads yes as a boolean; quote it \("yes"\) .*line 2, column 17'),
        ("key_actions: [login, on]", "reads on as a boolean"),
        ("windows: [014]", "reads 014 as an octal number; write it without the leading 0"),
        ("windows: [1:30]", "reads 1:30 as a base-60 number"),
        ("label: 2026-11-27", "reads 2026-11-27 as a date"),
    ],
)
def test_yaml_values_that_are_not_what_they_look_are_refused(line: str, message: str) -> None:
    text = f"orders:\n  {line}\n"
    with pytest.raises(RulesError, match=message):
        parse_rules(text.encode(), "rules.yaml")


def test_a_yaml_syntax_error_is_one_line_with_a_hint() -> None:
    text = "segments:\n  - name: eu\n    when: region == 'eu: north'\n"
    with pytest.raises(RulesError) as caught:
        parse_rules(text.encode(), "shop.yaml")
    (message,) = caught.value.problems
    assert "\n" not in message and "unicode string" not in message
    assert message == (
        "shop.yaml: not valid YAML: mapping values are not allowed here; a value containing "
        "': ' or ' #' needs quotes (line 3, column 24)"
    )


def test_quoted_yaml_values_are_taken_as_written() -> None:
    text = default_rules_yaml().replace("name: new", 'name: "no"', 1)
    assert '"no"' in text
    lifecycle = parse_rules(text.encode(), "rules.yaml").dimensions[0]
    assert "no" in [c.name for c in lifecycle.classes]


def test_a_yaml_file_reports_field_errors_like_toml() -> None:
    text = default_rules_yaml().replace("spend_90d > 200", "spend_90d >", 1)
    with pytest.raises(RulesError, match=r"rules\.yaml: dimensions\[1\]\.classes\[0\]\.when"):
        parse_rules(text.encode(), "rules.yaml")


@pytest.mark.parametrize(
    ("text", "source"),
    [
        (b"", "empty.toml"),
        (b"# nothing\n", "empty.yaml"),
        (b"[orders]\nwindows = [90]\n", "cut.toml"),
    ],
)
def test_a_file_with_nothing_to_classify_is_refused(text: bytes, source: str) -> None:
    # A file caught half-written by a hot reload must not drop every customer's classes.
    with pytest.raises(RulesError, match="no dimension and no segment"):
        parse_rules(text, source)


def test_missing_file_is_a_rules_error(tmp_path: Path) -> None:
    with pytest.raises(RulesError, match="cannot read"):
        load_rules(tmp_path / "nope.toml")


def test_placed_counting_and_rates() -> None:
    text = default_rules_text().decode().replace('count_status = "paid"', 'count_status = "placed"')
    text = text.replace("rates = {}", "rates = { EUR = 1.1 }")
    rules = parse_rules(text.encode(), "x")
    assert rules.counting == 3
    assert str(rules.rates["EUR"]) == "1.1"


def test_generated_features_follow_the_rules_windows_and_scores() -> None:
    text = default_rules_text().replace(b"windows = [90]", b"windows = [30, 90]")
    text += b'\n[scores.s]\nfeature = "spend_30d"\ncuts = [10, 20, 30, 40]\nbetter = "lower"\n'
    text += b'\n[scores.g]\nfeature = "region"\ncuts = [1, 2, 3, 4]\nbetter = "higher"\n'
    rules = parse_rules(text, "x")
    state = CustomerState("c1")
    for n, (days_ago, amount) in enumerate([(100, 1000), (60, 2500), (10, 1250), (0, 500)]):
        ms = T0 - days_ago * DAY_MS
        state.apply(Order(f"e{n}", "c1", ms, amount, "USD", "paid", f"o{n}", "EU"), rules.activity)
    f = rules.features_at(
        facts_of(state, rules.counting, rules.calendar), rules.calendar.day_of(T0)
    )
    assert (f["orders_30d"], f["spend_30d"]) == (2, 17.5)
    assert (f["orders_90d"], f["spend_90d"]) == (3, 42.5)
    assert f["s_score"] == 4  # 17.5 lies between the cuts 10 and 20, lower is better
    assert f["g_score"] is None  # text is never scored
    assert (f["r_score"], f["f_score"], f["m_score"]) == (5, 3, 2)  # 4 orders, 52.50 spent
    assert f["days_since_first_order"] == 100 and f["days_since_last_order"] == 0


def test_every_problem_in_a_file_is_reported_each_with_a_suggestion() -> None:
    text = default_rules_text().decode()
    for old, new in [
        ('feature = "days_since_last_order"', 'feature = "days_since_last_ordr"'),
        ("orders_90d >= 4", "orders_90 >= 4"),
        ('{ name = "low" }', '{ name = "low", whn = "orders_total > 0" }'),
        ('when = "orders_total >= 2 and monetary_total > 40"', 'when = "orders_totl >= 2"'),
    ]:
        assert old in text
        text = text.replace(old, new, 1)
    with pytest.raises(RulesError) as caught:
        parse_rules(text.encode(), "rules.toml")
    assert caught.value.problems == (
        "rules.toml: scores.r.feature: unknown feature 'days_since_last_ordr' "
        "(did you mean 'days_since_last_order'?)",
        "rules.toml: dimensions[1].classes[0].when: unknown feature 'orders_90' "
        "(did you mean 'orders_90d'?)",
        "rules.toml: dimensions[1].classes[2].whn: unknown key (did you mean 'when'?) "
        "(allowed: label, name, when)",
        "rules.toml: segments[0].when: unknown feature 'orders_totl' "
        "(did you mean 'orders_total'?)",
    )  # r_score, whose score failed, is not reported again where the rfm classes use it


def test_a_class_label_defaults_to_its_name() -> None:
    text = default_rules_text().decode()
    text = text.replace('{ name = "high", when', '{ name = "high", label = "High value", when')
    text = text.replace('name = "old_customer"', 'name = "old_customer"\nlabel = "Old customers"')
    rules = parse_rules(text.encode(), "x")
    value_tier = next(d for d in rules.dimensions if d.name == "value_tier")
    assert [c.label for c in value_tier.classes] == ["High value", "medium", "low"]
    assert rules.dimensions[-1].classes[0].label == "Old customers"
    assert load_rules().dimensions[-1].classes[0].label == "in"
    with pytest.raises(RulesError, match=r"classes\[0\]\.label: must be a non-empty text"):
        parse_rules(text.replace('label = "High value"', "label = 3").encode(), "x")


def test_a_condition_may_be_written_over_several_lines() -> None:
    one_line = with_segment("orders_total >= 2 and monetary_total > 40")
    toml = default_rules_text().decode() + (
        '\n[[segments]]\nname = "probe"\nwhen = """orders_total >= 2\n  and monetary_total > 40"""\n'
    )
    yaml_text = default_rules_yaml() + (
        "segments:\n- name: probe\n  when: |\n    orders_total >= 2\n    and monetary_total > 40\n"
    ).replace("segments:\n", "", 1)
    single = parse_rules(one_line.encode(), "one.toml")
    for text, source in ((toml, "multi.toml"), (yaml_text, "multi.yaml")):
        rules = parse_rules(text.encode(), source)
        assert rules.dimension_names == single.dimension_names
        state = CustomerState("c")
        for n, amount in enumerate((30_00, 20_00), start=1):
            order = Order(f"e{n}", "c", T0 + n * DAY_MS, amount, "USD", "paid", f"o{n}", None)
            process_event(state, order, rules, T0 + n * DAY_MS, T0 + n * DAY_MS)
        assert state.classes["probe"] == "in"


def test_a_rules_file_may_start_with_a_byte_order_mark(tmp_path: Path) -> None:
    for name in ("rules.toml", "rules.yaml"):
        path = tmp_path / name
        text = default_rules_yaml() if name.endswith("yaml") else default_rules_text().decode()
        path.write_bytes(b"\xef\xbb\xbf" + text.encode())
        assert load_rules(path).version == load_rules().version


def recipes() -> list[bytes]:
    """The rules files of docs/rules.md's recipes, in order."""
    text = (Path(__file__).parents[2] / "docs/rules.md").read_text()
    section = text.split("## Recipes from the playbooks", 1)[1]
    return [block.split("```", 1)[0].encode() for block in section.split("```toml\n")[1:]]


def test_the_8_class_rfm_recipe_marks_r_f_and_m_high_or_low() -> None:
    rfm = recipes()[0]
    rules = parse_rules(rfm, "docs/rules.md")
    cases = {  # orders (day, cents) -> the class on day 100
        "important_value": [(60, 10_000), (95, 10_000), (100, 5_000)],  # R 5, F 4, M 4
        "important_development": [(100, 25_000)],  # R 5, F 2, M 4
        "important_retention": [(15, 10_000), (20, 10_000), (30, 10_000)],  # R 2, F 4, M 4
        "important_win_back": [(30, 20_000)],  # R 2, F 2, M 4
        "general_value": [(90, 1_000), (99, 1_000)],  # R 5, F 3, M 1
        "general_development": [(99, 1_000)],  # R 5, F 2, M 1
        "general_retention": [(20, 1_000), (25, 1_000)],  # R 2, F 3, M 1
        "general_win_back": [(20, 1_000)],  # R 2, F 2, M 1
    }
    assert [c.name for c in rules.dimensions[0].classes] == list(cases)  # each class reached
    day = 20_454 + 100
    for expected, orders in cases.items():
        state = CustomerState("c1")
        for n, (at, amount) in enumerate(orders):
            ms = T0 + at * DAY_MS
            order = Order(f"e{n}", "c1", ms, amount, "USD", "paid", f"o{n}", None)
            process_event(state, order, rules, T0 + 100 * DAY_MS, 0)
        facts = facts_of(state, rules.counting, rules.calendar)
        assert rules.classes_at(facts, day) == {"rfm_value": expected}, (expected, orders)


def test_the_purchase_cycle_recipe_fires_on_the_overdue_day() -> None:
    rules = parse_rules(recipes()[1], "docs/rules.md")
    state = CustomerState("c1")
    for n, at in enumerate([0, 10, 20]):  # a 10-day cycle: overdue after 20 days
        ms = T0 + at * DAY_MS
        order = Order(f"e{n}", "c1", ms, 1_000, "USD", "paid", f"o{n}", None)
        process_event(state, order, rules, ms, 0)
    assert state.classes == {"cycle": "on_cycle"}
    assert state.due_day == 20_454 + 20 + 21  # the first day more than 2 x 10 days after
