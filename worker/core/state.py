"""Per-customer sufficient statistics and their update from one event.

The statistics are a function of the *set* of events seen, never of their arrival order:
each order is one record keyed by order id whose fields only ever move by set union (status
flags) or by max (the counting event), and visits only move min/max timestamps. That is
what makes the update idempotent for a repeated event and commutative within a customer,
which in turn is what lets a crashed worker re-read Kafka without double counting.
"""

from __future__ import annotations

from bisect import bisect_left, insort
from dataclasses import dataclass, field
from typing import Final

from worker.core.events import Event, Order
from worker.core.timeutil import DAY_MS

PLACED: Final = 1
PAID: Final = 2
CANCELLED: Final = 4
REFUNDED: Final = 8
STATUS_FLAG: Final = {"placed": PLACED, "paid": PAID, "cancelled": CANCELLED, "refunded": REFUNDED}
VOIDED: Final = CANCELLED | REFUNDED
NO_TIME: Final = -(2**62)


@dataclass(slots=True)
class OrderRecord:
    """One order as far as we know it.

    ``ms``/``amount`` come from its best placed-or-paid event (paid beats placed, then the
    latest), independent of which status counts, so changing that setting is retroactive.
    """

    flags: int = 0
    paid: bool = False
    ms: int = NO_TIME
    amount: int = 0

    def absorb(self, flag: int, ms: int, amount: int) -> bool:
        """Merge one status event; returns whether anything changed."""
        changed = not self.flags & flag
        self.flags |= flag
        if flag & VOIDED:
            return changed
        candidate = (flag == PAID, ms, amount)
        if candidate > (self.paid, self.ms, self.amount):
            self.paid, self.ms, self.amount = candidate
            changed = True
        return changed

    def contribution(self, counting: int) -> tuple[int, int] | None:
        """(ms, amount) while this order counts under ``counting``, else None."""
        if self.flags & counting and not self.flags & VOIDED:
            return (self.ms, self.amount)
        return None


class OrderIndex:
    """Counted orders sorted by time, with running totals and per-day sums.

    Derived from the records and kept up to date on every apply, so that a customer with
    tens of thousands of orders costs O(log n + window days) per event, never a re-sort.
    """

    __slots__ = ("counted", "counting", "day_amounts", "day_counts", "days", "total", "version")

    def __init__(self, records: dict[str, OrderRecord], counting: int) -> None:
        self.counting = counting
        self.version = 0  # bumped on every move: "did anything counted change?" in O(1)
        contributions = (r.contribution(counting) for r in records.values())
        self.counted = sorted(c for c in contributions if c is not None)
        self.day_counts: dict[int, int] = {}
        self.day_amounts: dict[int, int] = {}
        for ms, amount in self.counted:
            self._add_day(ms // DAY_MS, amount)
        self.total = sum(amount for _, amount in self.counted)
        self.days = sorted(self.day_counts)

    def _add_day(self, day: int, amount: int) -> bool:
        """Count one order on ``day``; True if the day is new."""
        count = self.day_counts[day] = self.day_counts.get(day, 0) + 1
        self.day_amounts[day] = self.day_amounts.get(day, 0) + amount
        return count == 1

    def move(self, before: tuple[int, int] | None, after: tuple[int, int] | None) -> None:
        if before == after:
            return
        self.version += 1
        if before is not None:
            del self.counted[bisect_left(self.counted, before)]
            self.total -= before[1]
            day = before[0] // DAY_MS
            self.day_counts[day] -= 1
            self.day_amounts[day] -= before[1]
            if not self.day_counts[day]:
                del self.day_counts[day], self.day_amounts[day]
                del self.days[bisect_left(self.days, day)]
        if after is not None:
            insort(self.counted, after)
            self.total += after[1]
            if self._add_day(after[0] // DAY_MS, after[1]):
                insort(self.days, after[0] // DAY_MS)


@dataclass(slots=True)
class CustomerState:
    customer_id: str
    orders: dict[str, OrderRecord] = field(default_factory=dict)
    first_visit_ms: int | None = None
    last_visit_ms: int | None = None
    region: str | None = None
    region_ms: int = -1
    # Derived, not part of the statistics: what was last emitted, and when it was entered.
    classes: dict[str, str | None] = field(default_factory=dict)
    since_ms: dict[str, int] = field(default_factory=dict)
    rules_version: str = ""
    due_day: int | None = None
    _index: OrderIndex | None = field(default=None, compare=False, repr=False)

    def apply(self, event: Event) -> bool:
        """Fold one event in; returns whether the statistics changed."""
        changed = self._absorb_region(event.region, event.occurred_ms)
        if isinstance(event, Order):
            record = self.orders.get(event.order_id)
            if record is None:
                record = self.orders[event.order_id] = OrderRecord()
            index = self._index
            before = None if index is None else record.contribution(index.counting)
            if not record.absorb(STATUS_FLAG[event.status], event.occurred_ms, event.amount_minor):
                return changed
            if index is not None:
                index.move(before, record.contribution(index.counting))
            return True
        ms = event.occurred_ms
        if self.last_visit_ms is None or ms > self.last_visit_ms:
            self.last_visit_ms = ms
            changed = True
        if self.first_visit_ms is None or ms < self.first_visit_ms:
            self.first_visit_ms = ms
            changed = True
        return changed

    def _absorb_region(self, region: str | None, ms: int) -> bool:
        # Latest event wins; ties broken by the value so that arrival order never matters.
        if region is None or (ms, region) <= (self.region_ms, self.region or ""):
            return False
        self.region, self.region_ms = region, ms
        return True

    def index(self, counting: int) -> OrderIndex:
        """The counted orders under ``counting``: PAID, or PLACED | PAID for shops with no
        payment step. A cancel or refund voids an order, whatever the arrival order."""
        if self._index is None or self._index.counting != counting:
            self._index = OrderIndex(self.orders, counting)
        return self._index

    def counted(self, counting: int) -> list[tuple[int, int]]:
        """(ms, amount) of every order that counts, sorted by time."""
        return list(self.index(counting).counted)
