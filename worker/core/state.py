"""Per-customer sufficient statistics and their update from one event.

The statistics are a function of the *set* of events seen, never of their arrival order:
each order is one record keyed by order id whose fields only ever move by set union (status
flags, refunds keyed by event id) or by max (the counting event), and visits only move
min/max timestamps and the set of recent key-action instants. That is what makes the update
idempotent for a repeated event and commutative within a customer, which in turn is what lets
a crashed worker re-read Kafka without double counting.
"""

from __future__ import annotations

from bisect import bisect_left, insort
from dataclasses import dataclass, field
from typing import Final, Protocol

from worker.core.events import Event, Order, Profile, TraitValue
from worker.core.timeutil import Calendar

PLACED: Final = 1
PAID: Final = 2
CANCELLED: Final = 4
REFUNDED: Final = 8
STATUS_FLAG: Final = {"placed": PLACED, "paid": PAID, "cancelled": CANCELLED, "refunded": REFUNDED}
VOIDED: Final = CANCELLED | REFUNDED
NO_TIME: Final = -(2**62)
# Trait names a customer's state holds at most (a profile that would pass it is refused):
# bounds a state's size whatever the CRM sends over the years.
MAX_TRAITS: Final = 50


@dataclass(slots=True)
class OrderRecord:
    """One order as far as we know it.

    ``ms``/``amount`` come from its best placed-or-paid event (paid beats placed, then the
    latest), independent of which status counts, so changing that setting is retroactive.
    A cancel or refund stating no amount (0) voids the order (its flag); one stating an
    amount is kept by event id in ``refunds`` and weighed against the amount only when the
    order is counted, so a refund that arrives before its order still counts.
    """

    flags: int = 0
    paid: bool = False
    ms: int = NO_TIME
    amount: int = 0
    refunds: dict[str, int] | None = None  # event id -> amount refunded or cancelled

    def absorb(self, flag: int, ms: int, amount: int, event_id: str) -> bool:
        """Merge one status event; returns whether anything changed."""
        if flag & VOIDED and amount:
            refunds = self.refunds if self.refunds is not None else {}
            self.refunds = refunds
            if refunds.get(event_id, -1) >= amount:  # re-sent (the larger amount wins)
                return False
            refunds[event_id] = amount
            return True
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
        """(ms, amount less partial refunds) while this order counts under ``counting``, else
        None: not in a counting status, voided, or refunded in full (one refund or several)."""
        if not self.flags & counting or self.flags & VOIDED:
            return None
        if self.refunds:
            left = self.amount - sum(self.refunds.values())
            return (self.ms, left) if left > 0 else None
        return (self.ms, self.amount)


class OrderIndex:
    """Counted orders sorted by time, with running totals and per-day sums.

    Derived from the records and kept up to date on every apply, so that a customer with
    tens of thousands of orders costs O(log n + window days) per event, never a re-sort.
    """

    __slots__ = (
        "calendar", "counted", "counting", "day_amounts", "day_counts", "days", "total", "version"
    )  # fmt: skip

    def __init__(self, counted: list[tuple[int, int]], counting: int, calendar: Calendar) -> None:
        """``counted``: (ms, amount) of every order that counts under ``counting``, any order."""
        self.counting = counting
        self.calendar = calendar  # orders are counted on the shop's local dates
        self.version = 0  # bumped on every move: "did anything counted change?" in O(1)
        # Built for every state decoded from Redis: plain loops, no generators or helpers.
        counted.sort()
        self.counted = counted
        counts: dict[int, int] = {}
        amounts: dict[int, int] = {}
        day_of = calendar.day_of
        total = 0
        for ms, amount in counted:
            day = day_of(ms)
            if day in counts:  # a test and in-place adds: no method call per order
                counts[day] += 1
                amounts[day] += amount
            else:
                counts[day] = 1
                amounts[day] = amount
            total += amount
        self.day_counts, self.day_amounts, self.total = counts, amounts, total
        self.days = sorted(counts)

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
            day = self.calendar.day_of(before[0])
            self.day_counts[day] -= 1
            self.day_amounts[day] -= before[1]
            if not self.day_counts[day]:
                del self.day_counts[day], self.day_amounts[day]
                del self.days[bisect_left(self.days, day)]
        if after is not None:
            insort(self.counted, after)
            self.total += after[1]
            day = self.calendar.day_of(after[0])
            if self._add_day(day, after[1]):
                insort(self.days, day)


def contributions(records: dict[str, OrderRecord], counting: int) -> list[tuple[int, int]]:
    """(ms, amount) of the records that count under ``counting``, in the records' order."""
    every = [r.contribution(counting) for r in records.values()]
    return [c for c in every if c is not None]


class PackedOrders(Protocol):
    """A stored state's orders, left as the codec read them: a state read for a visit or a
    timer (most of them) is classified and written back without building an order record."""

    def records(self) -> dict[str, OrderRecord]:
        """The order records, built (once: the state keeps them from then on)."""

    def counted(self, counting: int) -> list[tuple[int, int]]:
        """What :func:`contributions` gives for the records."""


class StoredParts(Protocol):
    """What a codec read of a stored state and may write back as it was: the since instants
    are built only when something reads them (a class change; a batch seldom does)."""

    def since_ms(self) -> dict[str, int]:
        """The since instants as stored."""


@dataclass(frozen=True, slots=True)
class Activity:
    """Which visits are key actions (activity, as a purchase is), and for how long their
    instants are kept: as long as the longest window needs, counted back from the latest."""

    actions: frozenset[str]
    keep_ms: int


@dataclass(slots=True, eq=False, init=False)
class CustomerState:  # noqa: PLW1641  # mutable: compared, never hashed
    customer_id: str
    # Read through ``orders``. None: none yet, or still in ``_packed`` (a state as decoded).
    _orders: dict[str, OrderRecord] | None
    first_visit_ms: int | None
    last_visit_ms: int | None
    # Instants of distinct key actions, sorted: the latest, and those within keep_ms of it.
    key_actions: list[int]
    region: str | None
    region_ms: int
    # Per trait, its latest statement: (occurred_ms, value); value None: removed then.
    traits: dict[str, tuple[int, TraitValue]]
    # Derived, not part of the statistics: what was last emitted, and when it was entered.
    classes: dict[str, str | None]
    # Read through ``since_ms``. None: still in ``_stored`` (a state as decoded).
    _since: dict[str, int] | None
    # Per dimension whose change consent withholds: the class the customer is in now, while
    # ``classes`` keeps the one last emitted (what subscribers, audiences and counts know).
    withheld: dict[str, str | None]
    rules_version: str
    due_day: int | None
    _packed: PackedOrders | None = field(repr=False)
    _stored: StoredParts | None = field(repr=False)
    _index: OrderIndex | None = field(repr=False)

    def __init__(  # noqa: PLR0917  # positional: the codec builds one per customer read
        self,
        customer_id: str,
        orders: dict[str, OrderRecord] | None = None,
        first_visit_ms: int | None = None,
        last_visit_ms: int | None = None,
        key_actions: list[int] | None = None,
        region: str | None = None,
        region_ms: int = -1,
        traits: dict[str, tuple[int, TraitValue]] | None = None,
        classes: dict[str, str | None] | None = None,
        since_ms: dict[str, int] | None = None,
        withheld: dict[str, str | None] | None = None,
        rules_version: str = "",
        due_day: int | None = None,
        packed: PackedOrders | None = None,
        stored: StoredParts | None = None,
    ) -> None:
        """``packed``: the orders as a codec read them, in place of ``orders``; ``stored``:
        the rest as it read it, in place of ``since_ms``."""
        self.customer_id = customer_id
        self._orders = orders
        self.first_visit_ms, self.last_visit_ms = first_visit_ms, last_visit_ms
        self.key_actions = [] if key_actions is None else key_actions
        self.region, self.region_ms = region, region_ms
        self.traits = {} if traits is None else traits
        self.classes = {} if classes is None else classes
        self._since = {} if since_ms is None and stored is None else since_ms
        self.withheld = {} if withheld is None else withheld
        self.rules_version, self.due_day = rules_version, due_day
        self._packed, self._stored, self._index = packed, stored, None

    @property
    def orders(self) -> dict[str, OrderRecord]:
        orders = self._orders
        if orders is None:
            packed = self._packed
            orders = self._orders = {} if packed is None else packed.records()
            self._packed = None
        return orders

    @property
    def since_ms(self) -> dict[str, int]:
        since = self._since
        if since is None:
            stored = self._stored
            since = self._since = {} if stored is None else stored.since_ms()
        return since

    @since_ms.setter
    def since_ms(self, since: dict[str, int]) -> None:
        self._since = since

    @property
    def stored(self) -> StoredParts | None:
        """What the codec read: it writes back what is unchanged as it was read."""
        return self._stored

    @property
    def since_unread(self) -> bool:
        """Whether the since instants are still as stored, never read."""
        return self._since is None

    @property
    def packed_orders(self) -> PackedOrders | None:
        """The orders as decoded, while nothing has read them: the codec writes them back
        as they were read."""
        return self._packed

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, CustomerState):
            return NotImplemented
        return self._compared() == other._compared()

    def _compared(self) -> tuple[object, ...]:
        return (
            self.customer_id, self.orders, self.first_visit_ms, self.last_visit_ms,
            self.key_actions, self.region, self.region_ms, self.traits, self.classes,
            self.since_ms, self.withheld, self.rules_version, self.due_day,
        )  # fmt: skip

    def apply(self, event: Event, activity: Activity) -> bool:
        """Fold one event in; returns whether the statistics changed."""
        changed = self._absorb_region(event.region, event.occurred_ms)
        if isinstance(event, Order):
            orders = self.orders
            record = orders.get(event.order_id)
            if record is None:
                record = orders[event.order_id] = OrderRecord()
            index = self._index
            before = None if index is None else record.contribution(index.counting)
            flag = STATUS_FLAG[event.status]
            if not record.absorb(flag, event.occurred_ms, event.amount_minor, event.event_id):
                return changed
            if index is not None:
                index.move(before, record.contribution(index.counting))
            return True
        if isinstance(event, Profile):
            return self._absorb_traits(event.traits, event.occurred_ms)
        ms = event.occurred_ms
        if self.last_visit_ms is None or ms > self.last_visit_ms:
            self.last_visit_ms = ms
            changed = True
        if self.first_visit_ms is None or ms < self.first_visit_ms:
            self.first_visit_ms = ms
            changed = True
        if event.action in activity.actions:
            changed = self._absorb_key_action(ms, activity.keep_ms) or changed
        return changed

    def _absorb_traits(self, traits: tuple[tuple[str, TraitValue], ...], ms: int) -> bool:
        # Per trait the latest statement wins; a tie is broken by the value, so that arrival
        # order never matters.
        changed = False
        for name, value in traits:
            held = self.traits.get(name)
            if held is None or (ms, _rank(value)) > (held[0], _rank(held[1])):
                self.traits[name] = (ms, value)
                changed = True
        return changed

    def traits_held_after(self, profile: Profile) -> int:
        """How many trait names the state would hold with ``profile`` in (removed ones too:
        a removal is kept, so that an older statement arriving late cannot bring it back)."""
        return len(self.traits) + sum(name not in self.traits for name, _ in profile.traits)

    def present_traits(self) -> dict[str, TraitValue]:
        """The traits as they stand (the removed ones left out)."""
        return {name: value for name, (_, value) in self.traits.items() if value is not None}

    def _absorb_key_action(self, ms: int, keep_ms: int) -> bool:
        # Kept: {t in all key actions : t >= latest - keep_ms}, whatever the arrival order.
        keys = self.key_actions
        at = bisect_left(keys, ms)
        if (at < len(keys) and keys[at] == ms) or (keys and ms < keys[-1] - keep_ms):
            return False
        keys.insert(at, ms)
        del keys[: bisect_left(keys, keys[-1] - keep_ms)]
        return True

    def _absorb_region(self, region: str | None, ms: int) -> bool:
        # Latest event wins; ties broken by the value so that arrival order never matters.
        if region is None or (ms, region) <= (self.region_ms, self.region or ""):
            return False
        self.region, self.region_ms = region, ms
        return True

    def index(self, counting: int, calendar: Calendar) -> OrderIndex:
        """The counted orders under ``counting``: PAID, or PLACED | PAID for shops with no
        payment step, by local date of ``calendar``. Cancels and refunds void an order or
        reduce its amount, whatever the arrival order."""
        index = self._index
        if (
            index is None
            or index.counting != counting
            or (index.calendar is not calendar and index.calendar != calendar)  # `is`: cheap
        ):
            packed = self._packed
            counted = (
                contributions(self.orders, counting) if packed is None else packed.counted(counting)
            )
            index = self._index = OrderIndex(counted, counting, calendar)
        return index

    def counted(self, counting: int, calendar: Calendar) -> list[tuple[int, int]]:
        """(ms, amount) of every order that counts, sorted by time."""
        return list(self.index(counting, calendar).counted)


def _rank(value: TraitValue) -> tuple[int, str]:
    """A total order over trait values of any type (ties between statements at one instant)."""
    if value is None:
        return (0, "")
    if isinstance(value, bool):
        return (1, str(int(value)))
    if isinstance(value, str):
        return (3, value)
    return (2, f"{float(value)!r} {type(value).__name__}")
