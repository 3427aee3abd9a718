import pytest

from worker.core.conditions import HELPERS, ConditionError, FeatureKind, compile_condition

KINDS = {
    "orders_total": FeatureKind.INVARIANT,
    "region": FeatureKind.INVARIANT,
    "avg_interval_days": FeatureKind.INVARIANT,
    "days_since_last_order": FeatureKind.DAYS_SINCE,
    "orders_90d": FeatureKind.WINDOW,
}


def run(text: str, **features: object) -> bool:
    compiled = compile_condition(text, KINDS, frozenset({"region"}))
    fn = eval(f"lambda f: {compiled.source}", dict(HELPERS))  # test-only: source is whitelisted
    return bool(fn(features))


def test_boolean_logic_and_chains() -> None:
    assert run("orders_total >= 2 and not region == 'West'", orders_total=3, region="East")
    assert run("1 < orders_total <= 3", orders_total=3)
    assert not run("1 < orders_total <= 3", orders_total=4)
    assert run("region in ('A', 'B') or orders_total > 9", region="B", orders_total=0)


def test_missing_values_make_ordering_comparisons_false() -> None:
    assert not run("days_since_last_order <= 60", days_since_last_order=None)
    assert not run("days_since_last_order > 60", days_since_last_order=None)
    assert run("region == None", region=None)
    assert not run("avg_interval_days * 2 > 1", avg_interval_days=None)


def test_arithmetic_that_overflows_is_missing() -> None:
    big = " * ".join(["1000000000000000"] * 30)  # an int of 451 digits: too large for a float
    assert not run(f"{big} / 3 > 1")
    assert run(f"({big} / 3) == None")


def test_the_largest_constants_are_accepted() -> None:
    assert run("orders_total < 1000000000000000", orders_total=10**15 - 1)
    assert run("orders_total > -1e15", orders_total=0)


def test_days_since_thresholds_are_extracted_with_their_other_side() -> None:
    compiled = compile_condition("days_since_last_order > 2 * avg_interval_days", KINDS)
    assert compiled.thresholds == (("days_since_last_order", "_mul(2, f['avg_interval_days'])"),)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("__import__('os').system('x')", "Call is not allowed"),
        ("orders_total.real > 1", "Attribute is not allowed"),
        ("orderz_total > 1", "did you mean 'orders_total'"),
        ("days_since_last_order + 1 > 30", "compare it directly"),
        ("days_since_last_order > orders_90d", "does not change as time passes"),
        ("region in region", "literal list"),
        ("orders_total >", "syntax error"),
        ("[x for x in (1,)]", "ListComp is not allowed"),
        ("region > 3", "'region' is text"),
        ("orders_total < 'a'", "'orders_total' is a number"),
        ("orders_total > 1e309", "finite"),
        ("orders_total > 1000000000000001", "at most 1e15"),
        ("orders_total > " + "1" * 1000, "longer than 1000"),
        ("not " * 40 + "orders_total", "nested more than 40"),
        ("region == 'a' * 10000000000", "numbers only"),
        ("orders_total == (1,) * 1000000000", "numbers only"),
        ("region + region == 'aa'", "numbers only"),
        ("-region == 'a'", "numbers only"),
    ],
)
def test_unsafe_or_invalid_conditions_are_refused(text: str, message: str) -> None:
    with pytest.raises(ConditionError, match=message.replace("(", r"\(").replace(")", r"\)")):
        compile_condition(text, KINDS, frozenset({"region"}))
