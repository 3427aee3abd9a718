from hypothesis import given, settings
from hypothesis import strategies as st

from tests.core.strategies import T0, histories, state_of
from worker.core.changes import Cause, change_id
from worker.core.engine import evaluate, fire_timer, next_change_day, process_event
from worker.core.events import Order, Reason, Rejection, Visit
from worker.core.features import facts_of, window_edges
from worker.core.rules import Rules, default_rules_text, load_rules, parse_rules
from worker.core.state import CustomerState
from worker.core.timeutil import DAY_MS, format_ms, parse_rfc3339

RULES = load_rules()
day_of = RULES.calendar.day_of
days = st.integers(min_value=day_of(T0), max_value=day_of(T0) + 900)


def classes_at(state: CustomerState, day: int) -> dict:
    facts = facts_of(state, RULES.counting, RULES.calendar)
    return RULES.classify(RULES.features_at(facts, day))


@given(histories, days)
def test_classification_is_total_and_deterministic(events: list, day: int) -> None:
    state = state_of(events)
    first, second = classes_at(state, day), classes_at(state, day)
    assert first == second
    assert list(first) == list(RULES.dimension_names)
    for dim in RULES.dimensions:
        assert first[dim.name] is None or first[dim.name] in {c.name for c in dim.classes}


@settings(max_examples=150)
@given(histories, days)
def test_next_change_day_matches_a_day_by_day_scan(events: list, day: int) -> None:
    assert_due_day_is_the_first_change(events, day)


@st.composite
def crossing_days(draw: st.DrawFn) -> tuple[list, int]:
    """A history and a day next to one of its crossings: a days-since feature reaching a
    threshold of the rules (score cuts included) or an order entering or leaving a window,
    drawn at the crossing -2..+1 so that "tomorrow" is often the crossing itself."""
    events = draw(histories)
    facts = facts_of(state_of(events), RULES.counting, RULES.calendar)
    assert RULES.fixed_offsets is not None
    crossings = [
        anchor + offset
        for name, offsets in RULES.fixed_offsets.items()
        if (anchor := facts.anchors.get(name)) is not None
        for offset in offsets
    ]
    crossings += [d + n for d in facts.index.days for n in (0, *RULES.windows)]
    if not crossings:  # visits only, no counted order and no visit anchor
        return events, day_of(T0)
    return events, draw(st.sampled_from(crossings)) + draw(st.integers(-2, 1))


@settings(max_examples=300)
@given(crossing_days())
def test_next_change_day_finds_a_crossing_at_any_distance(case: tuple[list, int]) -> None:
    assert_due_day_is_the_first_change(*case)


def assert_due_day_is_the_first_change(events: list, day: int) -> None:
    """The exact search names the first day a class changes; the bounded one never later."""
    state = state_of(events)
    facts = facts_of(state, RULES.counting, RULES.calendar)
    now = classes_at(state, day)
    features = RULES.features_at(facts, day)
    due = next_change_day(facts, features, RULES, day, now, exact_checks=10_000)
    horizon = day + 1200
    scanned = next((d for d in range(day + 1, horizon) if classes_at(state, d) != now), None)
    assert due == scanned or (scanned is None and due is not None and due >= horizon)
    # With few exact checks the answer may be an earlier wake-up, never a later day.
    wake_up = next_change_day(facts, features, RULES, day, now, exact_checks=1)
    if scanned is not None:
        assert wake_up is not None
        assert wake_up <= scanned


@given(st.integers(0, 400), st.integers(0, 400))
def test_r_scores_recent_customers_high(recent: int, older: int) -> None:
    def r_score(days_ago: int) -> int:
        state = state_of([Order("e", "c1", T0, 5000, "USD", "paid", "A", None)])
        facts = facts_of(state, RULES.counting, RULES.calendar)
        return RULES.features_at(facts, day_of(T0) + days_ago)["r_score"]

    if recent <= older:
        assert r_score(recent) >= r_score(older)
    assert r_score(0) == 5
    assert r_score(400) == 1


def test_change_ids_are_deterministic_and_cause_specific() -> None:
    def run(event_id: str) -> list[str]:
        state = CustomerState("c1")
        event = Order(event_id, "c1", T0, 5000, "USD", "paid", "A", None)
        result = process_event(state, event, RULES, T0, T0)
        assert not isinstance(result, Rejection)
        return [c.event_id for c in result]

    first = [("lifecycle", "new"), ("value_tier", "low"), ("rfm", "new")]
    first += [("membership", "ordinary"), ("tenure", "short")]
    cause = Cause("order", "e1", T0)
    assert run("e1") == [change_id("c1", dim, cause, None, to) for dim, to in first]
    assert set(run("e1")).isdisjoint(run("e2"))


def test_duplicate_event_emits_nothing_and_timer_fires_on_due_day() -> None:
    state = CustomerState("c1")
    order = Order("e1", "c1", T0, 5000, "USD", "paid", "A", None)
    first = process_event(state, order, RULES, T0, T0)
    assert isinstance(first, list)
    assert [(c.dimension, c.to_class) for c in first] == [
        ("lifecycle", "new"),
        ("value_tier", "low"),
        ("rfm", "new"),
        ("membership", "ordinary"),
        ("tenure", "short"),
    ]
    assert process_event(state, order, RULES, T0, T0) == []
    due = day_of(T0) + 15  # 15 days since the order: R score 5 -> 4
    assert state.due_day == due
    changes = fire_timer(state, RULES, due, due * DAY_MS)
    timer = Cause("timer", None, due * DAY_MS)
    assert [(c.dimension, c.from_class, c.to_class, c.cause) for c in changes] == [
        ("rfm", "new", "promising", timer)
    ]


def test_foreign_currency_needs_a_rate() -> None:
    order = Order("e1", "c1", T0, 1000, "EUR", "paid", "A", None)
    rejected = process_event(CustomerState("c1"), order, RULES, T0, T0)
    assert isinstance(rejected, Rejection) and rejected.reason is Reason.UNSUPPORTED_CURRENCY
    text = default_rules_text().replace(b"rates = {}", b"rates = { EUR = 1.5 }")
    state = CustomerState("c1")
    changes = process_event(state, order, parse_rules(text, "x"), T0, T0)
    assert isinstance(changes, list) and len(changes) == 5
    assert changes[0].state["monetary_total"] == "15.00"
    assert state.counted(RULES.counting, RULES.calendar) == [(T0, 1500)]


def test_rules_change_reclassifies_and_drops_removed_dimensions() -> None:
    state = CustomerState("c1")
    process_event(state, Visit("v1", "c1", T0, "login", None), RULES, T0, T0)
    text = default_rules_text().split(b"[[segments]]")[0]
    text = text.replace(b'name = "potential", when', b'name = "prospect", when')
    new_rules = parse_rules(text, "x")
    changes = evaluate(
        state, new_rules, day_of(T0), Cause("rules_change", new_rules.version, T0), T0
    )
    moved = [(c.dimension, c.from_class, c.to_class, c.rules_version) for c in changes]
    assert moved == [("lifecycle", "potential", "prospect", new_rules.version)]


def test_an_uncounted_status_changes_neither_classes_nor_due_day() -> None:
    state = CustomerState("c1")
    process_event(state, Visit("v1", "c1", T0, "login", None), RULES, T0, T0)
    classes, due = dict(state.classes), state.due_day
    placed = Order("e1", "c1", T0, 5000, "USD", "placed", "A", None)
    assert process_event(state, placed, RULES, T0, T0) == []  # counting is 'paid'
    assert (state.classes, state.due_day) == (classes, due)
    paid = Order("e2", "c1", T0, 5000, "USD", "paid", "A", None)
    moved = process_event(state, paid, RULES, T0, T0)
    assert isinstance(moved, list)
    assert [(c.dimension, c.from_class, c.to_class, c.cause.event_id) for c in moved] == [
        ("lifecycle", "potential", "new", "e2"),
        ("value_tier", None, "low", "e2"),
        ("rfm", None, "new", "e2"),
        ("tenure", None, "short", "e2"),
    ]


@settings(max_examples=200)
@given(histories, days, st.integers(1, 4), st.booleans(), st.booleans())
def test_window_edges_holds_the_earliest_edges_of_every_window(
    events: list, day: int, first: int, orders: bool, keys: bool
) -> None:
    windows = (7, 30, 90)
    facts = facts_of(state_of(events), RULES.counting, RULES.calendar)
    dated = (set(facts.index.days) if orders else set()) | (set(facts.key_days) if keys else set())
    every = {d for d in dated if d > day}
    every |= {d + n for d in dated for n in windows if d + n > day}
    edges = window_edges(facts, day, windows, first, orders=orders, keys=keys)
    assert edges <= every
    assert sorted(every)[:first] == sorted(edges)[:first]


BERLIN = parse_rules(
    default_rules_text().replace(b'timezone = "UTC"', b'timezone = "Europe/Berlin"'), "berlin"
)


def at(text: str) -> int:
    return parse_rfc3339(text)


def run(events: list[Order | Visit], rules: Rules, until: int) -> tuple[CustomerState, list]:
    """Process ``events`` in order and fire every timer up to ``until``, as replay does."""
    state, changes = CustomerState("c1"), []
    for event in events:
        while state.due_day is not None and rules.calendar.start_ms(state.due_day) <= (
            event.occurred_ms
        ):
            changes += fire_timer(state, rules, state.due_day, 0)
        moved = process_event(state, event, rules, event.occurred_ms, 0)
        assert isinstance(moved, list)
        changes += moved
    while state.due_day is not None and rules.calendar.start_ms(state.due_day) <= until:
        changes += fire_timer(state, rules, state.due_day, 0)
    return state, changes


def moves(changes: list, dimension: str) -> list[tuple[str, str | None]]:
    return [
        (format_ms(c.cause.occurred_ms), c.to_class) for c in changes if c.dimension == dimension
    ]


def test_a_window_edge_and_a_timer_across_clock_changes_fall_at_local_midnight() -> None:
    """Berlin: orders at 00:30 local (still the day before in UTC) in winter; the first leaves
    the 90-day window at a summer-time midnight (22:00 UTC), and a lifecycle timer after the
    autumn change fires at a winter-time one (23:00 UTC)."""
    orders = [
        Order(
            f"o{d}", "c1", at(f"2026-01-0{d}T00:30:00+01:00"), 6_000, "USD", "paid", f"o{d}", None
        )
        for d in (5, 6, 7, 8)
    ]
    state, changes = run(orders, BERLIN, at("2026-04-10T00:00:00Z"))
    assert moves(changes, "value_tier") == [
        ("2026-01-04T23:30:00.000Z", "low"),
        ("2026-01-05T23:30:00.000Z", "medium"),
        ("2026-01-07T23:30:00.000Z", "high"),  # 4 orders of 60 on 5-8 January, Berlin dates
        ("2026-04-04T22:00:00.000Z", "medium"),  # 5 January leaves on 5 April, CEST midnight
        ("2026-04-06T22:00:00.000Z", "low"),
    ]
    # In UTC the same orders are dated 4-7 January: the first leaves a day earlier.
    _, utc = run(orders, RULES, at("2026-04-10T00:00:00Z"))
    assert ("2026-04-04T00:00:00.000Z", "medium") in moves(utc, "value_tier")

    autumn = Order("n", "c1", at("2026-10-10T12:00:00+02:00"), 1_000, "USD", "paid", "n", None)
    state, changes = run([autumn], BERLIN, at("2026-11-20T00:00:00Z"))
    assert ("2026-11-09T23:00:00.000Z", "active") in moves(changes, "lifecycle")  # 31 days
    assert format_ms(BERLIN.calendar.start_ms(state.due_day)).endswith("T23:00:00.000Z")


def test_key_actions_keep_a_customer_active_and_a_visitor_churns() -> None:
    """Issue 15, case 2: one order on 5 January, then a login every 10 days until November."""
    order = Order("o", "c1", at("2026-01-05T10:00:00Z"), 3_000, "USD", "paid", "o", None)
    logins = [
        Visit(f"l{n}", "c1", at("2026-01-15T08:00:00Z") + n * 10 * DAY_MS, "login", None)
        for n in range(30)  # the last on 2026-11-01
    ]
    page_views = [Visit(f"p{v.event_id}", "c1", v.occurred_ms, "page_view", None) for v in logins]
    _, changes = run([order, *logins], RULES, at("2027-06-01T00:00:00Z"))
    assert moves(changes, "lifecycle") == [
        ("2026-01-05T10:00:00.000Z", "new"),
        ("2026-02-05T00:00:00.000Z", "active"),
        ("2026-12-02T00:00:00.000Z", "churn_risk"),  # 31 days after the last login
        ("2027-05-01T00:00:00.000Z", "churned"),  # 181 days after it
    ]
    # Page views at the same instants are no key actions: churn risk from 7 March, 61 days
    # after the order, as before.
    _, viewed = run([order, *page_views], RULES, at("2026-04-01T00:00:00Z"))
    assert ("2026-03-07T00:00:00.000Z", "churn_risk") in moves(viewed, "lifecycle")

    visitor = [Visit("v", "c1", at("2026-01-06T09:00:00Z"), "page_view", None)]
    state, changes = run(visitor, RULES, at("2026-12-01T00:00:00Z"))
    assert moves(changes, "lifecycle") == [
        ("2026-01-06T09:00:00.000Z", "potential"),
        ("2026-07-06T00:00:00.000Z", "churned"),
    ]
    facts = facts_of(state, RULES.counting, RULES.calendar)
    f = RULES.features_at(facts, RULES.calendar.day_of(at("2026-01-20T00:00:00Z")))
    assert (f["days_since_last_key_action"], f["key_actions_90d"]) == (None, 0)
    state, _ = run([order, *logins[:3]], RULES, at("2026-02-10T00:00:00Z"))
    f = RULES.features_at(
        facts_of(state, RULES.counting, RULES.calendar), day_of(at("2026-02-10T00:00:00Z"))
    )
    assert (f["days_since_last_key_action"], f["key_actions_90d"]) == (6, 3)


def test_a_second_key_action_on_a_day_counts_where_the_rules_count_them() -> None:
    engaged = parse_rules(
        default_rules_text() + b'\n[[segments]]\nname = "engaged"\nwhen = "key_actions_90d >= 2"\n',
        "engaged",
    )
    assert engaged.counts_key_actions and not RULES.counts_key_actions
    first = Visit("l1", "c1", at("2026-01-15T08:00:00Z"), "login", None)
    second = Visit("l2", "c1", at("2026-01-15T09:00:00Z"), "search", None)
    _, changes = run([first, second], engaged, at("2026-01-16T00:00:00Z"))
    assert moves(changes, "engaged") == [("2026-01-15T09:00:00.000Z", "in")]
    state, _ = run([first], RULES, at("2026-01-16T00:00:00Z"))
    assert process_event(state, second, RULES, second.occurred_ms, 0) == []  # nothing read moved
    assert state.key_actions == [first.occurred_ms, second.occurred_ms]
    _, changes = run([first, second], engaged, at("2026-04-20T00:00:00Z"))
    assert moves(changes, "engaged")[-1] == ("2026-04-15T00:00:00.000Z", None)  # 90 days on


def test_a_timer_enters_and_leaves_a_list_of_days() -> None:
    """`days_since_last_order in (7, 8)` flips on day 7 and day 9 with no event; its list's
    days were once left out of the due-day search, so no timer ever fired for it."""
    rules = parse_rules(
        default_rules_text()
        + b'\n[[segments]]\nname = "week_after"\nwhen = "days_since_last_order in (7, 8)"\n',
        "x",
    )
    state = CustomerState("c1")
    process_event(state, Order("e1", "c1", T0, 5000, "USD", "paid", "A", None), rules, T0, T0)
    moves = []
    while state.due_day is not None and state.due_day <= day_of(T0) + 10:
        due = state.due_day
        changes = fire_timer(state, rules, due, due * DAY_MS)
        moves += [
            (due - day_of(T0), c.from_class, c.to_class)
            for c in changes
            if c.dimension == "week_after"
        ]
    assert moves == [(7, None, "in"), (9, "in", None)]
