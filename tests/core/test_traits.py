"""profile.v1: a customer's own traits, as parsed, kept in the state and read by conditions."""

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.core.strategies import ACTIVITY, T0
from worker.core.codec import decode_state, encode_state
from worker.core.engine import Changes, process_event
from worker.core.events import Order, ParseLimits, Profile, Reason, Rejection, parse_event
from worker.core.rules import RulesError, default_rules_text, parse_rules
from worker.core.state import MAX_TRAITS, CustomerState
from worker.core.timeutil import DAY_MS, format_ms
from worker.core.views import describe
from worker.replay import Replayer

LIMITS = ParseLimits()
RULES = parse_rules(
    default_rules_text()
    + b"""
[[segments]]
name = "gold_women_80s"
when = "trait.gender == 'F' and trait.birth_year <= 1990 and trait.crm_level in ('gold', 'platinum')"

[[segments]]
name = "no_marketing"
when = "trait.marketing_consent == False"
""",
    "traits",
)


def profile(event_id: str, at: int, **traits: object) -> bytes:
    doc = {"type": "profile", "event_id": event_id, "customer_id": "c1"}
    return orjson.dumps({**doc, "occurred_at": format_ms(at), "traits": traits})


def parse(raw: bytes) -> Profile | Rejection:
    event = parse_event(raw, None, now_ms=T0 + 10**12, limits=LIMITS)
    assert isinstance(event, Profile | Rejection)
    return event


def test_a_profile_parses_with_consent_flags_as_traits() -> None:
    doc = orjson.loads(profile("p1", T0, gender="F", birth_year=1988, vip=True, income=None))
    event = parse(orjson.dumps({**doc, "consent": {"marketing": False}}))
    assert event == Profile(
        "p1",
        "c1",
        T0,
        (
            ("birth_year", 1988),
            ("gender", "F"),
            ("income", None),
            ("marketing_consent", False),
            ("vip", True),
        ),
    )


@pytest.mark.parametrize(
    ("traits", "reason"),
    [
        ({f"t{i}": i for i in range(51)}, Reason.TRAIT_LIMIT),
        ({"x" * 65: 1}, Reason.TRAIT_LIMIT),
        ({"note": "x" * 257}, Reason.TRAIT_LIMIT),
        ({"address": {"city": "Beijing"}}, Reason.WRONG_TYPE),
        ({"tags": ["a"]}, Reason.WRONG_TYPE),
        ({"Gender": "F"}, Reason.INVALID_VALUE),
        ({"1st": "F"}, Reason.INVALID_VALUE),
    ],
)
def test_traits_out_of_bounds_are_refused_with_a_reason(
    traits: dict[str, object], reason: Reason
) -> None:
    refused = parse(profile("p1", T0, **traits))
    assert isinstance(refused, Rejection)
    assert (refused.reason, refused.field) == (reason, "traits")


trait_values = st.one_of(
    st.none(), st.booleans(), st.integers(-5, 5), st.sampled_from([1.0, 2.5]), st.text(max_size=3)
)
statements = st.lists(
    st.tuples(st.integers(0, 5), st.dictionaries(st.sampled_from(["a", "b", "c"]), trait_values)),
    max_size=12,
)


def state_of(events: list[tuple[int, dict[str, object]]]) -> CustomerState:
    state = CustomerState("c1")
    for n, (at, traits) in enumerate(events):
        state.apply(Profile(f"p{n}", "c1", T0 + at, tuple(sorted(traits.items()))), ACTIVITY)
    return state


@given(statements, st.randoms(use_true_random=False))
def test_the_latest_statement_of_each_trait_wins_in_any_arrival_order(events, rnd) -> None:
    shuffled = list(events)
    rnd.shuffle(shuffled)
    first, second = state_of(events), state_of(shuffled + events)
    assert first.traits == second.traits
    assert encode_state(first) == encode_state(second)
    assert decode_state("c1", encode_state(first)) == first
    for name, (at, value) in first.traits.items():
        stated = [(T0 + t, traits[name]) for t, traits in events if name in traits]
        assert at == max(t for t, _ in stated) and (at, value) in stated


def test_null_removes_a_trait_and_conditions_read_traits() -> None:
    state = CustomerState("c1")
    born = parse(profile("p1", T0, gender="F", birth_year=1988, crm_level="gold"))
    assert isinstance(born, Profile)
    changes = process_event(state, born, RULES, T0, T0)
    assert isinstance(changes, list)
    assert [(c.dimension, c.to_class, c.cause.type) for c in changes] == [
        ("gold_women_80s", "in", "profile"),
    ]
    assert describe(state, RULES, T0 // 86_400_000)["traits"] == {
        "birth_year": 1988,
        "crm_level": "gold",
        "gender": "F",
    }
    dropped = parse(profile("p2", T0 + 1, crm_level=None, birth_year="nineteen eighty-eight"))
    assert isinstance(dropped, Profile)
    changes = process_event(state, dropped, RULES, T0 + 1, T0 + 1)
    assert isinstance(changes, list)
    assert [(c.dimension, c.to_class) for c in changes] == [("gold_women_80s", None)]
    assert state.present_traits() == {"birth_year": "nineteen eighty-eight", "gender": "F"}
    # An older statement arriving late changes nothing.
    late = parse(profile("p0", T0 - 1, crm_level="platinum"))
    assert isinstance(late, Profile)
    assert process_event(state, late, RULES, T0 + 2, T0 + 2) == []
    assert "crm_level" not in state.present_traits()


def test_a_consent_flag_can_be_a_condition() -> None:
    state = CustomerState("c1")
    doc = orjson.loads(profile("p1", T0))
    event = parse(orjson.dumps({**doc, "consent": {"marketing": False}}))
    assert isinstance(event, Profile)
    changes = process_event(state, event, RULES, T0, T0)
    assert isinstance(changes, list)
    assert [(c.dimension, c.to_class) for c in changes] == [("no_marketing", "in")]


@pytest.mark.parametrize(
    ("condition", "message"),
    [
        ("trait == 1", "unknown feature 'trait'"),
        ("region.x == 1", "Attribute is not allowed in a condition"),
        ("trait.Gender == 'F'", "trait names are a-z"),
    ],
)
def test_trait_conditions_are_checked_at_load(condition: str, message: str) -> None:
    text = default_rules_text() + f'[[segments]]\nname = "s"\nwhen = "{condition}"\n'.encode()
    with pytest.raises(RulesError, match=message):
        parse_rules(text, "x")


def test_replay_reads_profile_lines() -> None:
    changes: list[tuple[str, str | None, str]] = []
    replayer = Replayer(
        RULES,
        lambda c: changes.append((c.dimension, c.to_class, c.cause.type)),
        lambda *_: pytest.fail("rejected"),
        limits=LIMITS,
        future_reference_ms=T0 + 10**12,
    )
    replayer.feed(profile("p1", T0, gender="F", birth_year=1980, crm_level="platinum"), 1)
    assert changes == [("gold_women_80s", "in", "profile")]
    assert replayer.states["c1"].present_traits()["crm_level"] == "platinum"


def test_a_profile_that_would_pass_the_bound_per_customer_is_refused_and_changes_nothing() -> None:
    state = CustomerState("c1")
    first = parse(profile("p1", T0, **{f"t{i}": i for i in range(MAX_TRAITS - 1)}))
    assert isinstance(first, Profile)
    assert isinstance(process_event(state, first, RULES, T0, T0), list)
    removal = parse(profile("p2", T0, gone=None))  # a removal holds its name too
    assert isinstance(removal, Profile)
    assert process_event(state, removal, RULES, T0, T0) == []
    assert len(state.traits) == MAX_TRAITS
    before = encode_state(state)
    over = parse(profile("p3", T0 + 1, t0=100, gender="F"))
    assert isinstance(over, Profile)
    refused = process_event(state, over, RULES, T0 + 1, T0 + 1)
    assert isinstance(refused, Rejection)
    assert (refused.reason, refused.field) == (Reason.TRAIT_LIMIT, "traits")
    assert encode_state(state) == before
    known = parse(profile("p4", T0 + 1, t0=100, gone="back"))  # names it holds: taken
    assert isinstance(known, Profile)
    assert isinstance(process_event(state, known, RULES, T0 + 1, T0 + 1), list)
    assert state.present_traits()["t0"] == 100 and state.present_traits()["gone"] == "back"


CONSENT_RULES = parse_rules(default_rules_text() + b'[consent]\nsuppress = ["value_tier"]\n', "c")


def paid(n: int, at: int, amount_minor: int) -> Order:
    return Order(f"o{n}", "c1", at, amount_minor, "USD", "paid", f"o{n}", None)


def consent(event_id: str, at: int, given: bool) -> Profile:
    return Profile(event_id, "c1", at, (("marketing_consent", given),))


def test_withdrawn_consent_withholds_changes_on_chosen_dimensions_until_it_returns() -> None:
    state, rules = CustomerState("c1"), CONSENT_RULES
    emitted: list[tuple[str, str | None, str | None]] = []
    withheld: list[str] = []

    def step(event: Order | Profile) -> None:
        changes = process_event(state, event, rules, event.occurred_ms, event.occurred_ms)
        assert isinstance(changes, Changes)
        emitted.extend((c.dimension, c.from_class, c.to_class) for c in changes)
        withheld.extend(changes.withheld)

    step(paid(1, T0, 15_000))
    assert ("value_tier", None, "low") in emitted and not state.withheld
    step(consent("p1", T0 + 1, False))
    emitted.clear()
    for n in range(2, 5):  # three more orders: low -> medium (2) -> medium -> high (4)
        step(paid(n, T0 + n * DAY_MS, 15_000))
    assert [e for e in emitted if e[0] == "value_tier"] == []
    assert any(e[0] == "lifecycle" for e in emitted)  # other dimensions are not withheld
    assert withheld == ["value_tier", "value_tier"]  # low -> medium, medium -> high
    assert state.classes["value_tier"] == "low" and state.withheld == {"value_tier": "high"}
    assert describe(state, rules, T0 // DAY_MS + 4)["withheld"] == {"value_tier": "high"}
    assert decode_state("c1", encode_state(state)) == state
    emitted.clear()
    step(consent("p2", T0 + 5 * DAY_MS, True))  # consent returns: the class since last emitted
    assert emitted == [("value_tier", "low", "high")] and withheld == ["value_tier"] * 2
    assert state.classes["value_tier"] == "high" and not state.withheld
    assert "withheld" not in describe(state, rules, T0 // DAY_MS + 5)


def test_a_class_that_moves_back_while_withheld_emits_nothing_when_consent_returns() -> None:
    state, rules = CustomerState("c1"), CONSENT_RULES
    for event in (paid(1, T0, 15_000), consent("p1", T0 + 1, False), paid(2, T0 + 2, 15_000)):
        process_event(state, event, rules, event.occurred_ms, event.occurred_ms)
    assert state.withheld == {"value_tier": "medium"}
    refund = Order("r2", "c1", T0 + 3, 0, "USD", "refunded", "o2", None)  # back to low
    changes = process_event(state, refund, rules, T0 + 3, T0 + 3)
    assert isinstance(changes, Changes) and changes.withheld == ("value_tier",)
    assert [c for c in changes if c.dimension == "value_tier"] == []
    assert not state.withheld and state.classes["value_tier"] == "low"
    assert process_event(state, consent("p2", T0 + 4, True), rules, T0 + 4, T0 + 4) == []


def test_consent_rules_are_checked_at_load() -> None:
    with pytest.raises(RulesError, match="unknown dimension or segment 'value_teir'"):
        parse_rules(default_rules_text() + b'[consent]\nsuppress = ["value_teir"]\n', "c")
    with pytest.raises(RulesError, match=r"consent\.trait"):
        parse_rules(default_rules_text() + b'[consent]\ntrait = "Consent"\n', "c")
