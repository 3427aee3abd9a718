"""What a rules change would do before it is deployed: per dimension, how many customers
would move from which class to which."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable

from worker.core.features import facts_of
from worker.core.rules import Rules
from worker.core.state import CustomerState

Moves = dict[str, Counter[tuple[str | None, str | None]]]


def classes_under(state: CustomerState, rules: Rules, day: int) -> dict[str, str | None]:
    facts = facts_of(state, rules.counting, rules.calendar)
    return rules.classify(rules.features_at(facts, day))


def class_moves(states: Iterable[CustomerState], old: Rules, new: Rules, at_ms: int) -> Moves:
    """Both rule sets evaluated at the same instant ``at_ms`` (each on its own calendar's date
    for it), so that only the rules differ. Unmoved customers are counted too, as (class,
    class)."""
    moves: Moves = {}
    old_day, new_day = old.calendar.day_of(at_ms), new.calendar.day_of(at_ms)
    for state in states:
        before, after = classes_under(state, old, old_day), classes_under(state, new, new_day)
        for dim in dict.fromkeys([*before, *after]):
            moves.setdefault(dim, Counter())[(before.get(dim), after.get(dim))] += 1
    return moves


def render(moves: Moves) -> list[str]:
    lines = []
    for dim, counter in moves.items():
        total = sum(counter.values())
        moved = sum(n for (a, b), n in counter.items() if a != b)
        lines.append(f"{dim}: {moved:,} of {total:,} customers would move")
        for (a, b), n in sorted(counter.items(), key=lambda item: (-item[1], str(item[0]))):
            if a != b:
                lines.append(f"  {a or '-':>20} -> {b or '-':<20} {n:>9,}")
    return lines
