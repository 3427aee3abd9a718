"""rules diff: the moves a rules change would cause, counted per dimension."""

from worker.core.events import Order
from worker.core.rules import default_rules_text, parse_rules
from worker.core.rulesdiff import class_moves, render
from worker.core.state import CustomerState
from worker.core.timeutil import DAY_MS

OLD = parse_rules(default_rules_text(), "old")
DAY = 20_500


def customer(cid: str, orders: int, spend_each: int) -> CustomerState:
    state = CustomerState(cid)
    for n in range(orders):
        state.apply(
            Order(
                f"{cid}-{n}",
                cid,
                (DAY - n) * DAY_MS,
                spend_each * 100,
                "USD",
                "paid",
                f"{cid}-{n}",
                None,
            ),
            OLD.activity,
        )
    return state


def test_a_lower_membership_threshold_moves_exactly_the_customers_in_between() -> None:
    text = default_rules_text().replace(
        b'{ name = "member", when = "orders_total >= 3" }',
        b'{ name = "member", when = "orders_total >= 2" }',
    )
    new = parse_rules(text, "new")
    states = [
        customer("a", 1, 10),
        customer("b", 2, 10),
        customer("c", 2, 10),
        customer("d", 3, 10),
    ]
    moves = class_moves(states, OLD, new, DAY * DAY_MS)
    assert moves["membership"][("ordinary", "member")] == 2
    assert moves["membership"][("member", "member")] == 1
    assert moves["membership"][("ordinary", "ordinary")] == 1
    assert sum(n for (a, b), n in moves["lifecycle"].items() if a != b) == 0
    assert "membership: 2 of 4 customers would move" in render(moves)


def test_a_new_segment_and_a_removed_one_show_as_moves_from_and_to_nothing() -> None:
    text = (
        default_rules_text()
        .replace(b'name = "old_customer"', b'name = "big_spender"')
        .replace(
            b'when = "orders_total >= 2 and monetary_total > 40"', b'when = "monetary_total > 100"'
        )
    )
    new = parse_rules(text, "new")
    moves = class_moves([customer("a", 3, 50), customer("b", 1, 10)], OLD, new, DAY * DAY_MS)
    assert moves["big_spender"][(None, "in")] == 1
    assert moves["old_customer"][("in", None)] == 1
