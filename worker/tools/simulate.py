"""Seeded, realistic shop traffic: the input of the sample file, the benchmark, the demo and
the chaos run.

Customers follow personas (browsers, one-time buyers, regulars, loyal big spenders, lapsers
who drift away and sometimes come back), activity is heavy-tailed, orders go placed -> paid
and are sometimes cancelled or refunded. On top of that the feed misbehaves the way real ones
do, at set rates: duplicates, events delivered out of order or days late, and malformed
payloads of every kind the parser rejects. Generation is streamed: memory grows with
customers, not events, and the same seed gives the same bytes.
"""

from __future__ import annotations

import heapq
import random
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Final, Literal

import orjson

from worker.core.timeutil import DAY_MS, format_ms

Topic = Literal["orders", "visits", "profiles"]
HOUR_MS: Final = 3_600_000
ACTIONS: Final = ("page_view", "page_view", "page_view", "search", "add_to_cart", "login")
REGIONS: Final = ("EU", "NA", "APAC", "LATAM")
CHANNELS: Final = ("web", "app", "email")


@dataclass(frozen=True, slots=True)
class Persona:
    name: str
    weight: float
    session_gap_days: float  # median days between sessions
    buy_probability: float  # per session
    basket: float  # median order amount
    active_days: float  # median days before drifting away
    comeback: float  # probability of returning after drifting away


PERSONAS: Final = (
    Persona("browser", 0.30, 12, 0.0, 0, 120, 0.1),
    Persona("one_time", 0.22, 10, 0.25, 45, 40, 0.15),
    Persona("regular", 0.25, 9, 0.35, 60, 300, 0.3),
    Persona("loyal", 0.06, 4, 0.5, 110, 700, 0.6),
    Persona("lapser", 0.17, 7, 0.4, 70, 90, 0.5),
)


@dataclass(frozen=True, slots=True)
class FeedFaults:
    """How badly the feed behaves; rates are per emitted event."""

    duplicate: float = 0.0
    out_of_order: float = 0.0  # delivered minutes to hours late
    late: float = 0.0  # delivered days late
    malformed: float = 0.0

    @classmethod
    def realistic(cls) -> FeedFaults:
        return cls(duplicate=0.01, out_of_order=0.05, late=0.005, malformed=0.01)


@dataclass(frozen=True, slots=True)
class SimEvent:
    """One delivery: ``delivered_ms`` is when the feed hands it over (its order in the stream)."""

    delivered_ms: int
    topic: Topic
    key: bytes
    value: bytes

    def jsonl(self) -> bytes:
        """The value as a replay line: the ``type`` field says which stream it came from."""
        if self.value[:1] != b"{" or b'"type"' in self.value[:16]:
            return self.value
        kind = {"orders": b"order", "visits": b"visit", "profiles": b"profile"}[self.topic]
        return b'{"type":"' + kind + b'",' + self.value[1:]


@dataclass(slots=True)
class _Customer:
    id: str
    persona: Persona
    activity: float  # heavy-tailed multiplier on how often they come
    region: str | None
    drift_ms: int  # when they drift away
    orders: int = 0


class Simulator:
    """Streams :class:`SimEvent` in delivery order, starting at ``start_ms``."""

    def __init__(
        self,
        seed: int,
        customers: int,
        start_ms: int,
        *,
        faults: FeedFaults | None = None,
        signup_days: float = 180,
    ) -> None:
        self.rng = random.Random(seed)
        self.faults = faults or FeedFaults()
        self.start_ms = start_ms
        self._agenda: list[tuple[int, int, _Customer]] = []
        self._outbox: list[tuple[int, int, SimEvent]] = []
        self._seq = 0
        self._recent: list[SimEvent] = []
        weights = [p.weight for p in PERSONAS]
        for n in range(customers):
            persona = self.rng.choices(PERSONAS, weights)[0]
            customer = _Customer(
                id=f"cus_{n:07d}",
                persona=persona,
                activity=min(20.0, self.rng.paretovariate(2.5)),
                region=self.rng.choice(REGIONS) if self.rng.random() < 0.8 else None,
                drift_ms=0,
            )
            first = start_ms + int(self.rng.uniform(0, signup_days) * DAY_MS)
            customer.drift_ms = first + self._days(persona.active_days)
            self._schedule(first, customer)

    def __iter__(self) -> Iterator[SimEvent]:
        while self._agenda:
            at, _, customer = heapq.heappop(self._agenda)
            yield from self._deliver_until(at)
            self._session(at, customer)
        yield from self._deliver_until(2**62)

    def _days(self, median: float) -> int:
        return int(median * self.rng.lognormvariate(0, 0.6) * DAY_MS)

    def _schedule(self, at: int, customer: _Customer) -> None:
        self._seq += 1
        heapq.heappush(self._agenda, (at, self._seq, customer))

    def _deliver_until(self, at: int) -> Iterator[SimEvent]:
        while self._outbox and self._outbox[0][0] <= at:
            yield heapq.heappop(self._outbox)[2]

    def _session(self, at: int, customer: _Customer) -> None:
        rng, persona = self.rng, customer.persona
        t = at
        for _ in range(rng.choice((1, 1, 2, 3, 4))):
            self._visit(t, customer)
            t += rng.randrange(20_000, 600_000)
        if rng.random() < persona.buy_probability:
            self._order(t, customer)
        gap = max(HOUR_MS, int(self._days(persona.session_gap_days) / customer.activity))
        following = at + gap
        if following > customer.drift_ms:
            if rng.random() >= persona.comeback:
                return  # gone for good
            following = customer.drift_ms + self._days(240)
            customer.drift_ms = following + self._days(persona.active_days)
        self._schedule(following, customer)

    def _visit(self, at: int, customer: _Customer) -> None:
        doc: dict[str, object] = {
            "event_id": self._id(),
            "customer_id": customer.id,
            "occurred_at": format_ms(at),
            "action": self.rng.choice(ACTIONS),
            "channel": self.rng.choice(CHANNELS),
        }
        if customer.region is not None:
            doc["region"] = customer.region
        self._emit(at, "visits", customer.id, doc)

    def _order(self, at: int, customer: _Customer) -> None:
        rng = self.rng
        customer.orders += 1
        order_id = f"ord_{customer.id[4:]}_{customer.orders}"
        amount = round(customer.persona.basket * rng.lognormvariate(0, 0.7), 2)
        base: dict[str, object] = {
            "customer_id": customer.id,
            "order_id": order_id,
            "amount": amount if rng.random() < 0.7 else f"{amount:.2f}",
            "currency": "USD",
            "items": rng.randint(1, 6),
        }
        if customer.region is not None:
            base["region"] = customer.region
        paid_at = at + rng.randrange(5_000, 900_000)
        self._emit(at, "orders", customer.id, self._status(base, at, "placed"))
        if rng.random() < 0.04:
            self._emit(paid_at, "orders", customer.id, self._status(base, paid_at, "cancelled"))
            return
        self._emit(paid_at, "orders", customer.id, self._status(base, paid_at, "paid"))
        if rng.random() < 0.03:
            refund_at = paid_at + rng.randrange(DAY_MS, 20 * DAY_MS)
            self._emit(refund_at, "orders", customer.id, self._status(base, refund_at, "refunded"))

    def _status(self, base: dict[str, object], at: int, status: str) -> dict[str, object]:
        return {"event_id": self._id(), **base, "occurred_at": format_ms(at), "status": status}

    def _id(self) -> str:
        return f"ev_{self.rng.getrandbits(64):016x}"

    def _emit(self, at: int, topic: Topic, customer_id: str, doc: dict[str, object]) -> None:
        rng, faults = self.rng, self.faults
        delivered = at
        roll = rng.random()
        if roll < faults.late:
            delivered += rng.randrange(DAY_MS, 10 * DAY_MS)
        elif roll < faults.late + faults.out_of_order:
            delivered += rng.randrange(60_000, 6 * HOUR_MS)
        value = orjson.dumps(doc)
        if rng.random() < faults.malformed:
            value = _malform(rng, doc)
        event = SimEvent(delivered, topic, customer_id.encode(), value)
        self._push(event)
        if rng.random() < faults.duplicate:
            self._push(SimEvent(delivered + rng.randrange(0, HOUR_MS), topic, event.key, value))

    def _push(self, event: SimEvent) -> None:
        self._seq += 1
        heapq.heappush(self._outbox, (event.delivered_ms, self._seq, event))


def _malform(rng: random.Random, doc: dict[str, object]) -> bytes:
    """A broken version of ``doc``: one of each kind of damage the parser knows."""
    bad = dict(doc)
    kind = rng.randrange(10)
    if kind == 0:
        return orjson.dumps(doc)[: rng.randrange(1, 30)]  # truncated JSON
    if kind == 1:
        return orjson.dumps(doc)[:-1] + b',"note":"\xff\xfe"}'  # invalid UTF-8
    if kind == 2:
        return b"[" + orjson.dumps(doc) + b"]"
    if kind == 3:
        del bad[rng.choice(["event_id", "customer_id", "occurred_at"])]
    elif kind == 4:
        bad["occurred_at"] = "2026-03-01 10:00"  # no offset
    elif kind == 5:
        bad["occurred_at"] = "2999-01-01T00:00:00Z"
    elif kind == 6:
        bad["customer_id"] = 12345
    elif kind == 7:
        bad["attributes"] = {"pad": "x" * 65_600}
    elif "amount" in bad:
        if kind == 8:
            bad["amount"] = -abs(float(str(bad["amount"]))) - 1
        else:
            bad["status"] = "shipped"
    else:
        bad["action"] = ""
    return orjson.dumps(bad)
