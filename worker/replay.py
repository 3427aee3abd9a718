"""Replay recorded history through the core with an event-time clock.

The clock is the greatest ``occurred_at`` seen so far; whenever it moves, every time-driven
change that fell due on the way is fired first, in due order, exactly as the live worker's
timer would have. Input is streamed, so memory grows with customers, not events.
"""

from __future__ import annotations

import heapq
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

from worker.core.changes import SegmentChange
from worker.core.engine import Changes, fire_timer, process_event
from worker.core.events import ParseLimits, Rejection, parse_event
from worker.core.rules import Rules
from worker.core.state import CustomerState

ChangeSink = Callable[[SegmentChange], None]
RejectSink = Callable[[int, Rejection, bytes], None]


@dataclass
class Summary:
    lines: int = 0
    applied: int = 0
    changes: int = 0
    rejected: Counter[str] = field(default_factory=Counter)
    withheld: Counter[str] = field(
        default_factory=Counter
    )  # changes consent withheld, by dimension

    @property
    def rejected_total(self) -> int:
        return sum(self.rejected.values())


class Replayer:
    def __init__(
        self,
        rules: Rules,
        on_change: ChangeSink,
        on_reject: RejectSink,
        *,
        limits: ParseLimits,
        future_reference_ms: int,
    ) -> None:
        self.rules = rules
        self.on_change = on_change
        self.on_reject = on_reject
        self.limits = limits
        self.future_reference_ms = future_reference_ms
        self.states: dict[str, CustomerState] = {}
        self.clock_ms: int | None = None
        self.summary = Summary()
        self._due: list[tuple[int, str]] = []

    def feed(self, raw: bytes, line_no: int) -> None:
        self.summary.lines += 1
        event = parse_event(raw, None, now_ms=self.future_reference_ms, limits=self.limits)
        if isinstance(event, Rejection):
            self._reject(line_no, event, raw)
            return
        if self.clock_ms is None or event.occurred_ms > self.clock_ms:
            self.advance(event.occurred_ms)
        assert self.clock_ms is not None
        state = self.states.get(event.customer_id)
        fresh = state is None
        if state is None:
            state = CustomerState(event.customer_id)
        previous_due = state.due_day
        result = process_event(state, event, self.rules, self.clock_ms, self.clock_ms)
        if isinstance(result, Rejection):
            self._reject(line_no, result, raw)
            return
        if fresh:
            self.states[event.customer_id] = state
        self.summary.applied += 1
        self._emit(result)
        if state.due_day != previous_due:
            self._index(state)

    def advance(self, to_ms: int) -> None:
        """Move the clock forward, firing every time-driven change due up to ``to_ms``."""
        due = self._due
        start = self.rules.calendar.start_ms  # due days are the shop's dates
        while due and start(due[0][0]) <= to_ms:
            day, customer_id = heapq.heappop(due)
            state = self.states[customer_id]
            if state.due_day != day:
                continue  # superseded by a later update
            if self.clock_ms is None or self.clock_ms < start(day):
                self.clock_ms = start(day)
            self._emit(fire_timer(state, self.rules, day, self.clock_ms))
            self._index(state)
        self.clock_ms = to_ms if self.clock_ms is None else max(self.clock_ms, to_ms)

    def _index(self, state: CustomerState) -> None:
        if state.due_day is not None:
            heapq.heappush(self._due, (state.due_day, state.customer_id))

    def _emit(self, changes: Changes) -> None:
        self.summary.changes += len(changes)
        self.summary.withheld.update(changes.withheld)
        for change in changes:
            self.on_change(change)

    def _reject(self, line_no: int, rejection: Rejection, raw: bytes) -> None:
        self.summary.rejected[rejection.reason.value] += 1
        self.on_reject(line_no, rejection, raw)
