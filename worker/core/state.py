"""Per-customer sufficient statistics and their update from one event.

The statistics are a function of the *set* of events seen, never of their arrival order:
each order is one record keyed by order id whose fields only ever move by set union (status
flags) or by max (the counting event), and visits only move min/max timestamps. That is
what makes the update idempotent for a repeated event and commutative within a customer,
which in turn is what lets a crashed worker re-read Kafka without double counting.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Final

from worker.core.events import Event, Order

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

    def apply(self, event: Event) -> bool:
        """Fold one event in; returns whether the statistics changed."""
        changed = self._absorb_region(event.region, event.occurred_ms)
        if isinstance(event, Order):
            record = self.orders.get(event.order_id)
            if record is None:
                record = self.orders[event.order_id] = OrderRecord()
            flag = STATUS_FLAG[event.status]
            return record.absorb(flag, event.occurred_ms, event.amount_minor) or changed
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

    def counted(self, counting: int) -> list[tuple[int, int]]:
        """(ms, amount) of every order that counts, sorted by time.

        ``counting`` is the status mask that makes an order count: PAID, or PLACED | PAID for
        shops with no payment step. A cancel or refund voids the order, whatever its order.
        """
        return sorted(
            (r.ms, r.amount)
            for r in self.orders.values()
            if r.flags & counting and not r.flags & VOIDED
        )
