"""A seeded shop-history generator for the oracle tests: replay input with the faults real feeds
have (late, re-sent and invalid lines), and the order.v1 / visit.v1 documents it is made of.

Like the oracle, it shares no code with ``worker``: the histories must not inherit the
worker's own idea of a valid event.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass

from tests.oracle import DAY, HOUR, MINUTE, money, ms_of, text_of


def encode(doc: dict[str, object]) -> bytes:
    """One JSON line, UTF-8, compact."""
    return json.dumps(doc, ensure_ascii=False, separators=(",", ":")).encode()


def amount_value(rng: random.Random, cents: int) -> object:
    """``cents`` written the ways producers do: decimal string, number, whole number."""
    roll = rng.random()
    if roll < 0.45:
        return money(cents)
    if roll < 0.8:
        return cents / 100
    if roll < 0.9 and cents % 100 == 0:
        return cents // 100
    # A number with a third decimal: the contract rounds half to even at the cent.
    return (cents * 10 + rng.choice((0, 5, 5, 4, 6))) / 1000


def order_doc(
    event_id: str,
    customer_id: str,
    ms: int,
    amount: object,
    status: str,
    *,
    order_id: str | None = None,
    region: str | None = None,
    currency: str = "USD",
) -> dict[str, object]:
    """An order.v1 document (``type`` set, as replay input carries it)."""
    doc: dict[str, object] = {
        "type": "order",
        "event_id": event_id,
        "customer_id": customer_id,
        "occurred_at": text_of(ms),
        "amount": amount,
        "currency": currency,
        "status": status,
    }
    if order_id is not None:
        doc["order_id"] = order_id
    if region is not None:
        doc["region"] = region
    return doc


def visit_doc(
    event_id: str, customer_id: str, ms: int, action: str, region: str | None = None
) -> dict[str, object]:
    """A visit.v1 document."""
    doc: dict[str, object] = {
        "type": "visit",
        "event_id": event_id,
        "customer_id": customer_id,
        "occurred_at": text_of(ms),
        "action": action,
    }
    if region is not None:
        doc["region"] = region
    return doc


@dataclass(frozen=True)
class Persona:
    """How one kind of customer behaves."""

    name: str
    share: float
    sessions_per_year: float
    buy: float  # probability of an order per session
    absence: float  # probability that the next gap is a long absence (> 180 days)
    basket: float  # median order value in dollars


PERSONAS = (
    Persona("browser", 0.18, 8, 0.0, 0.10, 0),
    Persona("one_timer", 0.25, 3, 0.3, 0.15, 35),
    Persona("regular", 0.30, 12, 0.45, 0.08, 45),
    Persona("lapser", 0.19, 10, 0.5, 0.40, 40),
    Persona("big_spender", 0.08, 30, 0.7, 0.05, 110),
)
REGIONS = ("EU", "NA", "APAC", "LATAM")
ACTIONS = ("page_view", "page_view", "search", "add_to_cart", "login", "app_open")


class _Feed:
    """Deliveries being collected: (delivery key, sequence, line)."""

    def __init__(self) -> None:
        self.items: list[tuple[int, int, bytes]] = []

    def put(self, key: int, line: bytes) -> None:
        """Deliver ``line`` at ``key`` (ties keep insertion order)."""
        self.items.append((key, len(self.items), line))


def _customer_ids(rng: random.Random, count: int) -> list[str]:
    """``count`` distinct customer ids."""
    # Unpadded numbers, so that id order is not numeric order; a few non-ASCII ids.
    ids = [f"c{i}" for i in range(count)]
    for i in rng.sample(range(count), max(1, count // 100)):
        ids[i] = rng.choice(("Zoë-", "Łukasz-", "ünal-", "cust_")) + str(i)
    return ids


def _order_flow(
    rng: random.Random,
    feed: _Feed,
    cid: str,
    *,
    tag: str,
    at: int,
    cents: int,
    region: str | None,
    late: float,
) -> None:
    """One order's events, delivered mostly in time order."""

    def put(ms: int, doc: dict[str, object], delay: int = 0) -> None:
        """Deliver ``doc`` at its time, plus ``delay`` or, sometimes, a random lateness."""
        if not delay and rng.random() < late:
            delay = rng.choice((rng.randrange(HOUR, DAY), rng.randrange(DAY, 6 * DAY)))
        feed.put(ms + delay, encode(doc))

    oid = f"{cid}:{tag}"
    amount = amount_value(rng, cents)
    paid_at = at + rng.randrange(MINUTE, 3 * HOUR)
    roll = rng.random()
    if roll < 0.42:  # a shop without order ids: the paid event is the order
        put(at, order_doc(f"{oid}:paid", cid, at, amount, "paid", region=region))
    elif roll < 0.77:  # placed, then paid (sometimes for a different amount: a coupon)
        paid_amount = amount_value(rng, max(0, cents - rng.randrange(500)))
        put(at, order_doc(f"{oid}:placed", cid, at, amount, "placed", order_id=oid))
        put(
            paid_at,
            order_doc(
                f"{oid}:paid",
                cid,
                paid_at,
                paid_amount if rng.random() < 0.1 else amount,
                "paid",
                order_id=oid,
                region=region,
            ),
        )
    elif roll < 0.84:  # abandoned: placed, never paid
        put(at, order_doc(f"{oid}:placed", cid, at, amount, "placed", order_id=oid))
    elif roll < 0.90:  # paid, then refunded or cancelled days later
        put(at, order_doc(f"{oid}:paid", cid, at, amount, "paid", order_id=oid, region=region))
        void_at = at + rng.randrange(HOUR, 40 * DAY)
        status = rng.choice(("cancelled", "refunded"))
        put(void_at, order_doc(f"{oid}:{status}", cid, void_at, amount, status, order_id=oid))
    elif roll < 0.94:  # the cancel arrives before the payment it voids
        cancel_at = paid_at + rng.randrange(MINUTE, HOUR)
        put(at, order_doc(f"{oid}:placed", cid, at, amount, "placed", order_id=oid))
        put(
            cancel_at,
            order_doc(f"{oid}:cancelled", cid, cancel_at, amount, "cancelled", order_id=oid),
        )
        put(
            paid_at,
            order_doc(f"{oid}:paid", cid, paid_at, amount, "paid", order_id=oid),
            delay=cancel_at - paid_at + rng.randrange(MINUTE, 2 * DAY),
        )
    else:  # payment retried: two paid events, the later one wins
        put(at, order_doc(f"{oid}:paid", cid, at, amount, "paid", order_id=oid))
        again = at + rng.randrange(MINUTE, 2 * DAY)
        put(again, order_doc(f"{oid}:paid2", cid, again, amount, "paid", order_id=oid))


def _bad_line(rng: random.Random, cid: str, serial: int, at: int) -> tuple[int, bytes]:
    """One invalid line near ``at`` (its delivery key, its bytes)."""
    eid = f"bad{serial}"
    good = order_doc(eid, cid, at, "12.50", "paid")
    kind = rng.randrange(8)
    if kind == 0:  # truncated JSON
        return at, encode(good)[:-3]
    if kind == 1:
        good["amount"] = rng.choice((-5, "-3.10", -0.5))
    elif kind == 2:
        good["status"] = rng.choice(("shipped", "PAID", ""))
    elif kind == 3:
        del good[rng.choice(("customer_id", "amount", "status", "currency", "occurred_at"))]
    elif kind == 4:
        visit = visit_doc(eid, cid, at, "page_view")
        del visit["action"]
        return at, encode(visit)
    elif kind == 5:
        # No rate for EUR: refused by the rules, after the clock moved (maybe days ahead).
        ahead = rng.choice((0, 0, rng.randrange(HOUR), rng.randrange(DAY, 3 * DAY)))
        good = order_doc(eid, cid, at + ahead, "9.99", "paid", currency="EUR", region="EU")
        return at, encode(good)
    elif kind == 6:
        good["occurred_at"] = text_of(at)[:10]  # a date, no time or offset
    else:
        good["occurred_at"] = "2101-01-01T00:00:00.000Z"  # beyond the future limit
    return at, encode(good)


def history(
    seed: int,
    customers: int = 2000,
    events: int = 20_000,
    start: str = "2025-01-01T00:00:00.000Z",
    days: int = 730,
    *,
    bad: float = 0.01,
    late: float = 0.04,
    duplicate: float = 0.01,
) -> tuple[list[bytes], int]:
    """A seeded shop history: at least ``events`` lines over ``days`` days, and an as-of.

    Personas (browsers, one-timers, regulars, lapsers, big spenders) with heavy-tailed activity,
    bursts and long absences; placed/paid pairs, abandoned carts, cancels and refunds (some
    before the payment arrives), retried payments, visits with and without region; delivery
    mostly in time order with ``late`` events hours or days behind the clock, ``duplicate``
    re-sent lines and ``bad`` invalid lines.
    """
    rng = random.Random(seed)
    t0 = ms_of(start)
    end = t0 + days * DAY
    ids = _customer_ids(rng, customers)
    personas = rng.choices(PERSONAS, [p.share for p in PERSONAS], k=customers)
    activity = [min(rng.paretovariate(1.6), 12.0) for _ in range(customers)]
    pace = events / (customers * 60)  # sessions scale: about ``events`` lines in all
    feed = _Feed()
    serial = 0

    def session(i: int, at: int) -> None:
        """Customer ``i`` comes by at ``at``: a few visits, maybe an order."""
        nonlocal serial
        cid, persona = ids[i], personas[i]
        home = REGIONS[i % len(REGIONS)]
        for _ in range(rng.choice((0, 1, 1, 1, 2, 3))):
            serial += 1
            ms = at + rng.randrange(0, HOUR)
            region = rng.choice((home, None, None, rng.choice(REGIONS)))
            doc = visit_doc(f"{cid}:v{serial}", cid, ms, rng.choice(ACTIONS), region)
            key = ms + (rng.randrange(HOUR, 5 * DAY) if rng.random() < late else 0)
            feed.put(key, encode(doc))
        if rng.random() < persona.buy:
            serial += 1
            dollars = rng.lognormvariate(0, 0.8) * persona.basket
            cents = min(int(dollars * 100), 5_000_00)
            region = home if rng.random() < 0.5 else None
            ms = at + rng.randrange(0, 2 * HOUR)
            _order_flow(
                rng, feed, cid, tag=f"o{serial}", at=ms, cents=cents, region=region, late=late
            )

    for i in range(customers):
        persona = personas[i]
        per_day = persona.sessions_per_year * activity[i] * pace / 365
        at = t0 + int(rng.random() ** 2 * (end - t0) * 0.9)  # most join early
        while at < end:
            burst = rng.randrange(1, 4) if rng.random() < 0.3 else 1
            for _ in range(burst):  # a burst: sessions a few hours or days apart
                session(i, at)
                at += rng.randrange(HOUR, 3 * DAY)
            if rng.random() < persona.absence:
                at += rng.randrange(181, 420) * DAY + rng.randrange(DAY)
            else:
                at += int(rng.expovariate(per_day) * DAY) + rng.randrange(HOUR)

    while len(feed.items) < events:  # top up with extra activity of weighted customers
        i = rng.choices(range(customers), activity)[0]
        session(i, t0 + rng.randrange(days * DAY))

    for key, _, line in list(feed.items):
        if rng.random() < duplicate:  # re-sent soon, or much later
            feed.put(key + rng.choice((0, rng.randrange(HOUR), rng.randrange(10 * DAY))), line)
        if rng.random() < bad:
            serial += 1
            cid = ids[rng.randrange(customers)]
            bad_key, bad_line = _bad_line(rng, cid, serial, key + rng.randrange(HOUR))
            feed.put(bad_key, bad_line)

    feed.items.sort()
    as_of = end + rng.randrange(20, 60) * DAY + rng.randrange(DAY)
    return [line for _, _, line in feed.items], as_of
