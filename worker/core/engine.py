"""The one step function every runner shares: fold an event or let time pass, re-classify,
emit transitions, and work out when this customer could next change with no new event.

Replay, the live worker and the tests all call these functions, so they cannot disagree.
Nothing here reads a clock: ``now_ms`` (classification instant) and ``emitted_ms`` (stamp on
output) are always passed in.
"""

from __future__ import annotations

from bisect import bisect_right
from decimal import ROUND_HALF_EVEN, Decimal
from typing import Final

from mypy_extensions import mypyc_attr

from worker.core.changes import Cause, CauseType, SegmentChange, change_id, snapshot
from worker.core.dimensions import Classes
from worker.core.events import MAX_AMOUNT, Event, Order, Profile, Reason, Rejection, Visit
from worker.core.features import (
    Facts,
    Features,
    day_offsets,
    facts_of,
    score_limits,
    window_edges,
)
from worker.core.predict import CROSSING_DAYS
from worker.core.rules import Rules
from worker.core.state import MAX_TRAITS, CustomerState, OrderIndex

EXACT_CHECKS = 2
_CAUSE: Final[dict[type, CauseType]] = {Order: "order", Visit: "visit", Profile: "profile"}


@mypyc_attr(native_class=False)  # the compiled core cannot subclass list natively
class Changes(list[SegmentChange]):
    """The changes to emit, and the dimension of each change consent withheld (the live
    worker counts them, replay's summary reports them). As cheap to make as a list: the
    class default stands until a change is withheld."""

    withheld: tuple[str, ...] = ()


def process_event(
    state: CustomerState, event: Event, rules: Rules, now_ms: int, emitted_ms: int
) -> Changes | Rejection:
    """Apply ``event`` to ``state`` (in place) and return the resulting class changes.

    A rejection leaves the state untouched. Classification happens at ``now_ms`` (the clock),
    or at the event's own time if that is later; a late event lands in its own day's window.
    """
    converted = _admit(state, event, rules)
    if isinstance(converted, Rejection):
        return converted
    event = converted
    calendar = rules.calendar
    index = state.index(rules.counting, calendar)
    seen = _classified_inputs(state, index, rules.counts_key_actions)
    changed = state.apply(event, rules.activity)
    if state.rules_version == rules.version and (
        not changed
        or (
            not isinstance(event, Profile)  # traits are read as they are: any move counts
            and _classified_inputs(state, index, rules.counts_key_actions) == seen
        )
    ):
        # Nothing classification reads moved (a duplicate, a status that does not count, a
        # visit on a day already seen) under the same rules: classes and due day stand.
        return Changes()
    cause = Cause(_CAUSE[type(event)], event.event_id, event.occurred_ms)
    return evaluate(
        state, rules, calendar.day_of(max(now_ms, event.occurred_ms)), cause, emitted_ms
    )


def absorb(state: CustomerState, event: Event, rules: Rules) -> Rejection | None:
    """Apply ``event`` without classifying: for input re-read after Redis lost writes, whose
    changes subscribers already have; the customer is classified once the re-read is over."""
    converted = _admit(state, event, rules)
    if isinstance(converted, Rejection):
        return converted
    state.apply(converted, rules.activity)
    return None


def _admit(state: CustomerState, event: Event, rules: Rules) -> Event | Rejection:
    """The event as the state takes it (an order in the base currency), or why not."""
    if isinstance(event, Order) and event.currency != rules.base_currency:
        return convert(event, rules)
    if isinstance(event, Profile) and (held := state.traits_held_after(event)) > MAX_TRAITS:
        return Rejection(
            Reason.TRAIT_LIMIT,
            "traits",
            f"the customer would hold {held} traits, over the limit of {MAX_TRAITS}",
        )
    return event


def fire_timer(state: CustomerState, rules: Rules, due_day: int, emitted_ms: int) -> Changes:
    """Re-classify at the start of ``due_day`` (its local midnight): the changes that time
    alone brought."""
    cause = Cause("timer", None, rules.calendar.start_ms(due_day))
    return evaluate(state, rules, due_day, cause, emitted_ms)


def reevaluate(state: CustomerState, rules: Rules, now_ms: int, emitted_ms: int) -> Changes:
    """Re-classify under new rules; changes carry the rules version as their cause."""
    day = rules.calendar.day_of(now_ms)
    return evaluate(state, rules, day, Cause("rules_change", rules.version, now_ms), emitted_ms)


def evaluate(
    state: CustomerState, rules: Rules, day: int, cause: Cause, emitted_ms: int
) -> Changes:
    facts = facts_of(state, rules.counting, rules.calendar)
    features: Features | None = None  # every feature as a mapping: only where more is read
    if rules.search_reads_features:
        features = rules.features_at(facts, day)  # the due-day search reads them too
        classes = rules.classify(features)
    else:
        classes = rules.classes_at(facts, day)
    changes = Changes()
    if classes != state.classes or state.withheld:
        features = rules.features_at(facts, day) if features is None else features
        dims = list(rules.dimension_names) + sorted(set(state.classes) - set(classes))
        snap = snapshot(facts, features, rules.windows)
        if rules.model is not None:
            snap.update(rules.model.values(facts, day))
        withhold = withheld_dimensions(state, rules)
        emitted = dict(classes) if withhold else classes
        for dim in dims:
            old, new = state.classes.get(dim), classes.get(dim)
            if dim in withhold:
                if state.withheld.get(dim, old) != new:
                    changes.withheld += (dim,)
                if old != new:
                    state.withheld[dim], emitted[dim] = new, old
                else:
                    state.withheld.pop(dim, None)
                continue
            state.withheld.pop(dim, None)  # consent given back: from the class last emitted
            if old == new:
                continue
            changes.append(
                SegmentChange(
                    change_id(state.customer_id, dim, cause, old, new),
                    state.customer_id,
                    dim,
                    old,
                    new,
                    cause,
                    emitted_ms,
                    snap,
                    rules.version,
                )
            )
            if new is None:
                state.since_ms.pop(dim, None)
            else:
                state.since_ms[dim] = cause.occurred_ms
        state.classes = emitted
    state.rules_version = rules.version
    state.due_day = next_change_day(facts, features, rules, day, classes)
    return changes


def withheld_dimensions(state: CustomerState, rules: Rules) -> frozenset[str]:
    """The dimensions whose changes are withheld from this customer's subscribers: the rules'
    ``[consent] suppress`` while the customer's consent trait is false (not merely absent)."""
    consent = rules.consent
    if not consent.suppress:
        return frozenset()
    held = state.traits.get(consent.trait)
    return consent.suppress if held is not None and held[1] is False else frozenset()


def next_change_day(
    facts: Facts,
    features: Features | None,
    rules: Rules,
    day: int,
    classes: Classes,
    *,
    exact_checks: int = EXACT_CHECKS,
) -> int | None:
    """The first day after ``day`` on which some class could differ, if no event arrives.

    Classes are step functions of the day whose steps can only sit where a days-since
    feature crosses a value it is compared with, or where an order enters or leaves a
    window. The first ``exact_checks`` candidate days are classified; if none changes a
    class, the next candidate is returned as a wake-up (classes cannot change before it),
    which bounds the cost for customers with many orders in a window. ``features`` are the
    features at ``day`` (None: computed here if needed).
    """
    first = exact_checks + 1  # every source is sorted: its first few are all we can need
    candidates = window_edges(
        facts,
        day,
        rules.windows,
        first,
        orders=rules.counts_order_windows,
        keys=rules.counts_key_actions,
    )
    offsets = rules.fixed_offsets
    model_limits = rules.model_limits
    at_day: Features = {}  # what thresholds and model crossings read, if any are used
    if rules.search_reads_features:
        at_day = rules.features_at(facts, day) if features is None else features
    if offsets is None:
        limits = rules.thresholds(at_day)
        offsets = day_offsets(limits + score_limits(rules.scores))
        model_limits = tuple((n, v) for n, v, _ in limits)  # crossings() skips the rest
    anchors = facts.anchors
    for name, deltas in offsets.items():
        anchor = anchors.get(name)
        if anchor is not None:
            start = bisect_right(deltas, day - anchor)  # anchor + delta > day
            candidates.update([anchor + o for o in deltas[start : start + first]])
    if rules.model is not None and model_limits:
        # Only crossings before the first few other candidates can matter.
        known = sorted(candidates)[:first]
        before = known[-1] if len(known) == first else day + CROSSING_DAYS
        candidates.update(rules.model.crossings(facts, day, at_day, model_limits, before))
    for checked, candidate in enumerate(sorted(candidates)[:first]):
        if checked == exact_checks:
            return candidate
        if rules.classes_at(facts, candidate) != classes:
            return candidate
    return None


def _classified_inputs(
    state: CustomerState, index: OrderIndex, key_counts: bool
) -> tuple[int, int | None, str | None, tuple[int, int] | int | None]:
    """Everything features are computed from: the counted orders (by version), the last
    visit's day, the region and the key actions: when ``key_counts`` are read, the kept ones
    (by length and earliest: a new one either lengthens the list or, pruning older ones,
    moves its earliest), else the latest's day."""
    last = state.last_visit_ms
    keys = state.key_actions
    calendar = index.calendar
    if not keys:
        key_part: tuple[int, int] | int | None = None
    elif key_counts:
        key_part = (len(keys), keys[0])
    else:
        key_part = calendar.last_day_of(keys)
    visit_day = None if last is None else calendar.day_of(last)
    return (index.version, visit_day, state.region, key_part)


def convert(order: Order, rules: Rules) -> Order | Rejection:
    """``order`` in the base currency, or why it cannot be (no rate, or out of bounds
    after the rate): also what `produce` checks before it sends an order."""
    rate = rules.rates.get(order.currency)
    if rate is None:
        return Rejection(
            Reason.UNSUPPORTED_CURRENCY,
            "currency",
            f"no rate from {order.currency} to {rules.base_currency} in the rules file",
        )
    amount = (Decimal(order.amount_minor) * rate).quantize(Decimal(1), rounding=ROUND_HALF_EVEN)
    if amount > MAX_AMOUNT * 100:  # a large rate: keep the stored amounts within their bounds
        return Rejection(Reason.INVALID_VALUE, "amount", "amount exceeds 1e12 in the base currency")
    return Order(
        order.event_id,
        order.customer_id,
        order.occurred_ms,
        int(amount),
        rules.base_currency,
        order.status,
        order.order_id,
        order.region,
    )
