"""An independent oracle for ``worker.replay.Replayer`` (the histories it is run over come from
``tests/traffic.py``).

The oracle recomputes, from the specification alone (docs/cli.md "Replay", docs/contracts.md,
docs/rules.md, DESIGN.md sections 2-6, ``worker/core/default_rules.toml``), what replay must
output: segment changes, rejected lines and the final per-customer state. It shares no code
with ``worker``: it parses lines with the standard ``json`` module (exact decimals), keeps the
*set* of accepted events per customer, recomputes every statistic from that set, and re-classifies
every customer at every midnight of the shop's time zone that the clock crosses, with the
default rules written out as plain if/elif code. Nothing is incremental and nothing predicts due days, so it is slow but
easy to check by reading.

Spec points the oracle encodes (and the tests therefore hold the core to):

- The clock is the greatest ``occurred_at`` of the lines that pass the event contract (the
  parser). A currency without a rate is refused later, by the rules, after the clock moved.
- Days are dates in the shop's zone (``[calendar] timezone``): an instant's day is its local
  date, counted from 1970-01-01, and day D begins at its local midnight M(D) (computed with
  ``zoneinfo`` here, by a route of its own: ``datetime`` arithmetic, no caching, no search).
- When the clock moves from C to C' > C, every midnight M(D) with C < M(D) <= C' is visited
  in increasing order and every known customer, in ascending id order, is re-classified at D;
  differences are emitted as ``timer`` changes stamped M(D). Then the event is applied and
  its customer re-classified at day(C').
- An order counts (count_status = paid) iff some event of its order_id is ``paid`` and none is
  a ``cancelled``/``refunded`` event of amount 0; its time and amount are those of the max
  (is_paid, ms, amount) over its placed/paid events, less the amounts of its cancelled/refunded
  events (one per event id, the largest if an id comes with several); if those reach the
  amount, it does not count.
- A key action is a visit whose action is login, add_to_cart, checkout, app_open or search.
- A profile states traits (``consent`` flags as ``<flag>_consent``); a customer's trait is
  the statement latest in time, at one instant the greatest in null < false < true < text
  (the tests state no numbers); null removes it. With ``suppress`` (``[consent] suppress``),
  while ``marketing_consent`` is false the customer's changes on those dimensions are not
  emitted (each counted in ``withheld``); once it is not, each such dimension emits one
  change from the class last emitted to its class then, if they differ.
"""

from __future__ import annotations

import hashlib
import json
import re
from bisect import bisect_left, bisect_right
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import ROUND_HALF_EVEN, Decimal
from zoneinfo import ZoneInfo

DAY = 86_400_000
HOUR = 3_600_000
MINUTE = 60_000
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
DIMENSIONS = ("lifecycle", "value_tier", "rfm", "membership", "tenure", "old_customer")
STATUSES = ("placed", "paid", "cancelled", "refunded")
BASE_CURRENCY = "USD"  # default rules: base USD, no rates
MAX_FUTURE_MS = 5 * MINUTE  # ParseLimits() defaults, from docs/contracts.md
MAX_ID_LENGTH = 200
MAX_AMOUNT = Decimal(10) ** 12
WINDOW_DAYS = 90
KEY_ACTIONS = frozenset({"login", "add_to_cart", "checkout", "app_open", "search"})
# An order in a currency with no rate passed the event contract: it moves the clock, then is
# refused (see the module docstring). False: refused before the clock sees it.
CURRENCY_REJECTS_MOVE_CLOCK = True

_TIMESTAMP = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})T(\d{2}):(\d{2}):(\d{2})(?:\.(\d{1,9}))?(Z|([+-])(\d{2}):(\d{2}))"
)
_DECIMAL_TEXT = re.compile(r"[0-9]+(\.[0-9]{1,2})?")


# --- time and money -----------------------------------------------------------------------


def parse_time(text: str) -> int | None:
    """Epoch ms of an RFC 3339 timestamp with a mandatory offset; None if it is not one."""
    m = _TIMESTAMP.fullmatch(text)
    if m is None:
        return None
    try:
        year, month, day, hour, minute, second = (int(g) for g in m.group(1, 2, 3, 4, 5, 6))
        moment = datetime(year, month, day, hour, minute, second, tzinfo=UTC)
    except ValueError:
        return None
    ms = (moment - EPOCH) // timedelta(milliseconds=1) + int((m[7] or "").ljust(3, "0")[:3])
    if m[8] != "Z":
        offset = (int(m[10]) * 60 + int(m[11])) * MINUTE
        ms += -offset if m[9] == "+" else offset
    return ms


def local_day(ms: int, zone: ZoneInfo) -> int:
    """The shop's date holding ``ms``, as days since 1970-01-01."""
    local = (EPOCH + timedelta(milliseconds=ms)).astimezone(zone)
    return (local.date() - EPOCH.date()).days


def midnight(day: int, zone: ZoneInfo) -> int:
    """Epoch ms of the local midnight that begins ``day`` (the zones tested have one)."""
    d = EPOCH.date() + timedelta(days=day)
    start = datetime(d.year, d.month, d.day, tzinfo=zone)
    return (start - EPOCH) // timedelta(milliseconds=1)


def ms_of(text: str) -> int:
    """Epoch ms of a timestamp known to be valid."""
    ms = parse_time(text)
    assert ms is not None, text
    return ms


def text_of(ms: int) -> str:
    """UTC, millisecond precision, 'Z': the output format of every timestamp."""
    moment = EPOCH + timedelta(milliseconds=ms)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{ms % 1000:03d}Z"


def optional_text(ms: int | None) -> str | None:
    """``text_of`` that passes None through."""
    return None if ms is None else text_of(ms)


def money(cents: int) -> str:
    """Exact minor units as a two-decimal string."""
    return f"{cents // 100}.{cents % 100:02d}"


def cents_of(amount: Decimal | int) -> int:
    """Minor units: round half to even at the cent."""
    return int((Decimal(amount) * 100).quantize(Decimal(1), rounding=ROUND_HALF_EVEN))


# --- input lines --------------------------------------------------------------------------


@dataclass(frozen=True)
class Order:
    """An order event that passed the contract (amount in exact minor units)."""

    event_id: str
    customer_id: str
    ms: int
    cents: int
    currency: str
    status: str
    order_id: str
    region: str | None


@dataclass(frozen=True)
class Visit:
    """A visit event that passed the contract."""

    event_id: str
    customer_id: str
    ms: int
    action: str
    region: str | None


@dataclass(frozen=True)
class Profile:
    """A profile event that passed the contract: its trait statements, sorted by name."""

    event_id: str
    customer_id: str
    ms: int
    traits: tuple[tuple[str, object], ...]


@dataclass(frozen=True)
class Reject:
    """A refused line: the dead-letter reason code and the offending field."""

    reason: str
    field: str | None


class _Refused(Exception):
    """Raised when a line breaks the contract; carries the Reject."""

    def __init__(self, reason: str, name: str | None) -> None:
        super().__init__(reason)
        self.reject = Reject(reason, name)


def _text_field(doc: dict[str, object], name: str) -> str:
    """A required string field (null counts as absent)."""
    value = doc.get(name)
    if value is None:
        raise _Refused("missing_field", name)
    if not isinstance(value, str):
        raise _Refused("wrong_type", name)
    return value


def _identifier(doc: dict[str, object], name: str) -> str:
    """A required id: 1..200 characters."""
    value = _text_field(doc, name)
    if not 1 <= len(value) <= MAX_ID_LENGTH:
        raise _Refused("invalid_value", name)
    return value


def _optional_text(doc: dict[str, object], name: str) -> str | None:
    """An optional string field."""
    value = doc.get(name)
    if value is None:
        return None
    if not isinstance(value, str):
        raise _Refused("wrong_type", name)
    return value


def _amount(doc: dict[str, object]) -> int:
    """Minor units of a number (any precision) or a decimal string (<= 2 places)."""
    value = doc.get("amount")
    if value is None:
        raise _Refused("missing_field", "amount")
    if isinstance(value, str):
        if _DECIMAL_TEXT.fullmatch(value) is None:
            raise _Refused(
                "negative_amount" if value.startswith("-") else "invalid_value", "amount"
            )
        number = Decimal(value)
    elif isinstance(value, int | Decimal) and not isinstance(value, bool):
        number = Decimal(value)
    else:
        raise _Refused("wrong_type", "amount")
    if number < 0:
        raise _Refused("negative_amount", "amount")
    if number > MAX_AMOUNT:
        raise _Refused("invalid_value", "amount")
    return cents_of(number)


def read_line(raw: bytes, reference_ms: int) -> Order | Visit | Profile | Reject:
    """The event contract (order.v1 / visit.v1 / profile.v1) applied to one input line."""
    try:
        doc = json.loads(raw.decode("utf-8"), parse_float=Decimal)
    except UnicodeDecodeError:
        return Reject("invalid_utf8", None)
    except ValueError:
        return Reject("invalid_json", None)
    if not isinstance(doc, dict):
        return Reject("not_an_object", None)
    try:
        kind = doc.get("type")
        if kind not in ("order", "visit", "profile"):
            raise _Refused("unknown_type", "type")
        event_id = _identifier(doc, "event_id")
        customer_id = _identifier(doc, "customer_id")
        ms = parse_time(_text_field(doc, "occurred_at"))
        if ms is None:
            raise _Refused("invalid_timestamp", "occurred_at")
        if ms > reference_ms + MAX_FUTURE_MS:
            raise _Refused("future_timestamp", "occurred_at")
        if kind == "profile":
            traits, flags = doc.get("traits"), doc.get("consent", {})
            if traits is None:
                raise _Refused("missing_field", "traits")
            if not isinstance(traits, dict) or not isinstance(flags, dict):
                raise _Refused(
                    "wrong_type", "traits" if not isinstance(traits, dict) else "consent"
                )
            stated = traits | {f"{flag}_consent": given for flag, given in flags.items()}
            return Profile(event_id, customer_id, ms, tuple(sorted(stated.items())))
        if kind == "visit":
            action = _text_field(doc, "action")
            if not 1 <= len(action) <= 100:
                raise _Refused("invalid_value", "action")
            return Visit(event_id, customer_id, ms, action, _optional_text(doc, "region"))
        cents = _amount(doc)
        currency = _text_field(doc, "currency")
        if not (len(currency) == 3 and currency.isascii() and currency.isupper()):
            raise _Refused("invalid_value", "currency")
        status = _text_field(doc, "status")
        if status not in STATUSES:
            raise _Refused("unknown_status", "status")
        order_id = _optional_text(doc, "order_id")
        if order_id is not None:
            order_id = _identifier(doc, "order_id")
        region = _optional_text(doc, "region")
        return Order(
            event_id, customer_id, ms, cents, currency, status, order_id or event_id, region
        )
    except _Refused as refused:
        return refused.reject


# --- per-customer statistics, recomputed from the set of events ----------------------------


@dataclass
class Stats:
    """Everything that does not depend on the day, derived from a customer's event set."""

    orders: list[tuple[int, int]]  # counted orders (ms, cents), sorted
    days: list[int]  # local day of each counted order, same order
    prefix: list[int]  # prefix[i] = cents of the first i counted orders
    first_visit_ms: int | None
    last_visit_ms: int | None
    visit_day: int | None  # local day of the last visit
    key_days: list[int]  # local day of every distinct key action, sorted
    region: str | None

    @property
    def n(self) -> int:
        """orders_total."""
        return len(self.orders)

    @property
    def total(self) -> int:
        """monetary_total in cents."""
        return self.prefix[-1]


def stats_of(events: Iterable[Order | Visit], zone: ZoneInfo) -> Stats:
    """Recompute the statistics of an event set from scratch."""
    by_order: dict[str, list[Order]] = {}
    visits: list[int] = []
    key_instants: set[int] = set()  # distinct instants: a re-sent login is the same login
    tagged: list[tuple[int, str]] = []
    for event in events:
        if event.region is not None:
            tagged.append((event.ms, event.region))
        if isinstance(event, Visit):
            visits.append(event.ms)
            if event.action in KEY_ACTIONS:
                key_instants.add(event.ms)
        else:
            by_order.setdefault(event.order_id, []).append(event)
    counted = []
    for records in by_order.values():
        statuses = {r.status for r in records}
        voids = [r for r in records if r.status in ("cancelled", "refunded")]
        if "paid" not in statuses or any(r.cents == 0 for r in voids):
            continue
        best = max(
            (r.status == "paid", r.ms, r.cents) for r in records if r.status in ("placed", "paid")
        )
        refunded: dict[str, int] = {}
        for r in voids:
            refunded[r.event_id] = max(refunded.get(r.event_id, 0), r.cents)
        left = best[2] - sum(refunded.values())
        if left > 0 or (left == 0 and not refunded):
            counted.append((best[1], left))
    counted.sort()
    prefix = [0]
    for _, cents in counted:
        prefix.append(prefix[-1] + cents)
    return Stats(
        orders=counted,
        days=[local_day(ms, zone) for ms, _ in counted],
        prefix=prefix,
        first_visit_ms=min(visits) if visits else None,
        last_visit_ms=max(visits) if visits else None,
        visit_day=local_day(max(visits), zone) if visits else None,
        key_days=sorted(local_day(ms, zone) for ms in key_instants),
        region=max(tagged)[1] if tagged else None,
    )


@dataclass
class Features:
    """The rule features at one local day (money in cents, so comparisons are exact)."""

    orders_total: int
    monetary_total: int
    has_visit: bool
    last_order_gap_days: int | None
    days_since_first_order: int | None
    days_since_last_order: int | None
    days_since_last_visit: int | None
    days_since_last_activity: int | None
    days_since_last_key_action: int | None
    key_actions_90d: int
    orders_90d: int
    spend_90d: int
    r_score: int | None
    f_score: int
    m_score: int


def features_at(s: Stats, day: int) -> Features:
    """Features of ``s`` at local day ``day``."""
    n = s.n
    first_day = s.days[0] if n else None
    last_day = s.days[-1] if n else None
    visit_day = s.visit_day
    key_day = s.key_days[-1] if s.key_days else None
    known = [d for d in (last_day, visit_day) if d is not None]
    activity_day = max(known) if known else None
    lo = bisect_left(s.days, day - WINDOW_DAYS + 1)
    hi = bisect_right(s.days, day)
    since_last = None if last_day is None else day - last_day
    r_score = None
    if since_last is not None:  # lower is better: 5 when <= 14, ... 1 above 120
        r_score = 5
        for cut in (14, 30, 60, 120):
            if since_last > cut:
                r_score -= 1
    f_score = 1 + sum(1 for cut in (2, 3, 5, 10) if n >= cut)
    m_score = 1 + sum(1 for cut in (50, 150, 400, 1000) if s.total >= cut * 100)
    return Features(
        orders_total=n,
        monetary_total=s.total,
        has_visit=s.last_visit_ms is not None,
        last_order_gap_days=s.days[-1] - s.days[-2] if n >= 2 else None,
        days_since_first_order=None if first_day is None else day - first_day,
        days_since_last_order=since_last,
        days_since_last_visit=None if visit_day is None else day - visit_day,
        days_since_last_activity=None if activity_day is None else day - activity_day,
        days_since_last_key_action=None if key_day is None else day - key_day,
        key_actions_90d=sum(1 for d in s.key_days if day - WINDOW_DAYS < d <= day),
        orders_90d=hi - lo,
        spend_90d=s.prefix[hi] - s.prefix[lo],
        r_score=r_score,
        f_score=f_score,
        m_score=m_score,
    )


def _gt(value: int | None, limit: int) -> bool:
    """``value > limit``; false for a null feature."""
    return value is not None and value > limit


def _le(value: int | None, limit: int) -> bool:
    """``value <= limit``; false for a null feature."""
    return value is not None and value <= limit


def classify(f: Features) -> tuple[str | None, ...]:
    """The default rules, one dimension after the other, in DIMENSIONS order."""
    n = f.orders_total
    lifecycle = None
    if n > 0 or f.has_visit:
        bought = f.days_since_last_order
        acted = f.days_since_last_key_action
        if n == 0 and _le(f.days_since_last_visit, 180):
            lifecycle = "potential"
        elif n >= 2 and _gt(f.last_order_gap_days, 180) and _le(bought, 30):
            lifecycle = "returning"
        elif n == 1 and _le(f.days_since_first_order, 30):
            lifecycle = "new"
        elif _le(bought, 60) or _le(acted, 30):
            lifecycle = "active"
        elif (bought is None or bought > 180) and (acted is None or acted > 180):
            lifecycle = "churned"
        else:
            lifecycle = "churn_risk"

    value_tier = None
    if n >= 1:
        if f.orders_90d >= 4 and f.spend_90d > 200_00:
            value_tier = "high"
        elif f.orders_90d in (2, 3) and f.spend_90d > 100_00:  # "2-3 purchases", literally
            value_tier = "medium"
        else:
            value_tier = "low"

    rfm = None
    if n >= 1:
        r, fs, m = f.r_score, f.f_score, f.m_score
        assert r is not None
        if r >= 4 and fs >= 4 and m >= 4:
            rfm = "champions"
        elif r >= 3 and fs >= 4:
            rfm = "loyal"
        elif r == 5 and fs == 1:
            rfm = "new"
        elif r == 4 and fs == 1:
            rfm = "promising"
        elif r >= 4 and fs >= 2:
            rfm = "potential_loyalist"
        elif r == 3 and fs >= 2:
            rfm = "need_attention"
        elif r == 3:
            rfm = "about_to_sleep"
        elif r <= 2 and fs >= 4 and m >= 4:
            rfm = "cant_lose"
        elif r <= 2 and fs >= 3:
            rfm = "at_risk"
        else:
            rfm = "hibernating"

    membership = None
    if n >= 1 or f.has_visit:
        if n >= 10:
            membership = "super_member"
        elif n >= 3:
            membership = "member"
        else:
            membership = "ordinary"

    tenure = None
    if n >= 1:
        if _gt(f.days_since_first_order, 365):
            tenure = "long"
        elif _gt(f.days_since_first_order, 90):
            tenure = "mid"
        else:
            tenure = "short"

    old_customer = "in" if n >= 2 and f.monetary_total > 40_00 else None
    return (lifecycle, value_tier, rfm, membership, tenure, old_customer)


def snapshot(s: Stats, f: Features) -> dict[str, object]:
    """The ``state`` of a change event, in segment_change.v1 field order."""
    return {
        "orders_total": f.orders_total,
        "monetary_total": money(f.monetary_total),
        "orders_90d": f.orders_90d,
        "spend_90d": money(f.spend_90d),
        "first_order_at": optional_text(s.orders[0][0] if s.orders else None),
        "last_order_at": optional_text(s.orders[-1][0] if s.orders else None),
        "last_visit_at": optional_text(s.last_visit_ms),
        "days_since_first_order": f.days_since_first_order,
        "days_since_last_order": f.days_since_last_order,
        "days_since_last_visit": f.days_since_last_visit,
        "region": s.region,
        "r_score": f.r_score,
        "f_score": f.f_score,
        "m_score": f.m_score,
    }


def change_id(
    customer_id: str,
    dimension: str,
    cause: tuple[str, str | None, int],
    old: str | None,
    new: str | None,
) -> str:
    """blake2b-128 over the unit-separated transition and its cause."""
    parts = (customer_id, dimension, cause[0], cause[1] or "", str(cause[2]), old or "", new or "")
    return hashlib.blake2b("\x1f".join(parts).encode(), digest_size=16).hexdigest()


@dataclass
class Customer:
    """The accepted events of one customer, and the classes last emitted for them."""

    id: str
    zone: ZoneInfo
    events: set[Order | Visit] = field(default_factory=set)
    profiles: set[Profile] = field(default_factory=set)
    classes: tuple[str | None, ...] = (None,) * len(DIMENSIONS)
    current: tuple[str | None, ...] = (None,) * len(DIMENSIONS)  # emitted or not
    since: dict[str, int] = field(default_factory=dict)
    _stats: Stats | None = None

    def add(self, event: Order | Visit | Profile) -> None:
        """Set union: an event seen before changes nothing."""
        if isinstance(event, Profile):
            self.profiles.add(event)
        elif event not in self.events:
            self.events.add(event)
            self._stats = None

    @property
    def stats(self) -> Stats:
        """Statistics of the current event set (recomputed after each new event)."""
        if self._stats is None:
            self._stats = stats_of(self.events, self.zone)
        return self._stats

    def traits(self) -> dict[str, object]:
        """Per trait, the statement latest in time (null: removed, still a statement)."""
        latest: dict[str, tuple[tuple[int, int, int, str], object]] = {}
        for profile in self.profiles:
            for name, value in profile.traits:
                if isinstance(value, bool):
                    rank = (1, int(value), "")
                elif isinstance(value, str):
                    rank = (2, 0, value)
                else:
                    assert value is None, "the oracle's tests state no numbers"
                    rank = (0, 0, "")
                key = (profile.ms, *rank)
                if name not in latest or key > latest[name][0]:
                    latest[name] = (key, value)
        return {name: value for name, (_, value) in latest.items()}

    def classes_at(self, day: int) -> tuple[str | None, ...]:
        """What the rules say at ``day`` for the current event set."""
        return classify(features_at(self.stats, day))


# --- the oracle -----------------------------------------------------------------------------


class Oracle:
    """Replay recomputed from the specification, one input line at a time."""

    def __init__(
        self,
        rules_version: str,
        reference_ms: int,
        timezone: str = "UTC",
        suppress: frozenset[str] = frozenset(),
    ) -> None:
        self.rules_version = rules_version
        self.suppress = suppress
        self.withheld: Counter[str] = Counter()
        self.reference_ms = reference_ms
        self.zone = ZoneInfo(timezone)
        self.customers: dict[str, Customer] = {}
        self.clock: int | None = None
        self.changes: list[dict[str, object]] = []
        self.rejects: list[tuple[int, str, str | None]] = []

    def feed(self, raw: bytes, line_no: int) -> None:
        """One input line: reject it, or move the clock and apply it."""
        event = read_line(raw, self.reference_ms)
        if isinstance(event, Reject):
            self.rejects.append((line_no, event.reason, event.field))
            return
        unsupported = isinstance(event, Order) and event.currency != BASE_CURRENCY
        if unsupported and not CURRENCY_REJECTS_MOVE_CLOCK:
            self.rejects.append((line_no, "unsupported_currency", "currency"))
            return
        self.advance(event.ms)
        if unsupported:
            self.rejects.append((line_no, "unsupported_currency", "currency"))
            return
        customer = self.customers.get(event.customer_id)
        if customer is None:
            customer = self.customers[event.customer_id] = Customer(event.customer_id, self.zone)
        customer.add(event)
        assert self.clock is not None
        kind = {Order: "order", Visit: "visit", Profile: "profile"}[type(event)]
        today = local_day(self.clock, self.zone)
        self._classify(customer, today, (kind, event.event_id, event.ms), self.clock)

    def advance(self, to_ms: int) -> None:
        """Move the clock to ``to_ms`` if later, visiting every midnight on the way."""
        if self.clock is None:
            self.clock = to_ms
            return
        day = local_day(self.clock, self.zone) + 1
        while (start := midnight(day, self.zone)) <= to_ms:
            for customer_id in sorted(self.customers):
                self._classify(self.customers[customer_id], day, ("timer", None, start), start)
            day += 1
        self.clock = max(self.clock, to_ms)

    def _classify(
        self, c: Customer, day: int, cause: tuple[str, str | None, int], emitted_ms: int
    ) -> None:
        features = features_at(c.stats, day)
        now = classify(features)
        if now == c.classes == c.current:
            return
        withdrawn = self.suppress and c.traits().get("marketing_consent") is False
        state = snapshot(c.stats, features)
        told = list(now)
        for i, (dimension, old, was, new) in enumerate(
            zip(DIMENSIONS, c.classes, c.current, now, strict=True)
        ):
            if withdrawn and dimension in self.suppress:
                if was != new:
                    self.withheld[dimension] += 1
                told[i] = old
                continue
            if old == new:
                continue
            self.changes.append(
                {
                    "event_id": change_id(c.id, dimension, cause, old, new),
                    "customer_id": c.id,
                    "dimension": dimension,
                    "from": old,
                    "to": new,
                    "occurred_at": text_of(cause[2]),
                    "emitted_at": text_of(emitted_ms),
                    "cause": {"type": cause[0], "event_id": cause[1]},
                    "state": state,
                    "rules_version": self.rules_version,
                }
            )
            if new is None:
                c.since.pop(dimension, None)
            else:
                c.since[dimension] = cause[2]
        c.classes, c.current = tuple(told), now

    def classes_of(self, customer_id: str) -> dict[str, str | None]:
        """The customer's current class per dimension."""
        return dict(zip(DIMENSIONS, self.customers[customer_id].classes, strict=True))

    def state_out(self, customer_id: str) -> dict[str, object]:
        """The --state-out record at the clock, without ``next_change_at``."""
        assert self.clock is not None
        c = self.customers[customer_id]
        s = c.stats
        f = features_at(s, self.today())
        return {
            "customer_id": customer_id,
            "orders_total": f.orders_total,
            "monetary_total": money(f.monetary_total),
            "first_order_at": optional_text(s.orders[0][0] if s.orders else None),
            "last_order_at": optional_text(s.orders[-1][0] if s.orders else None),
            "first_visit_at": optional_text(s.first_visit_ms),
            "last_visit_at": optional_text(s.last_visit_ms),
            "region": s.region,
            **({"traits": traits} if (traits := self.present_traits(c)) is not None else {}),
            "orders_90d": f.orders_90d,
            "spend_90d": money(f.spend_90d),
            "r_score": f.r_score,
            "f_score": f.f_score,
            "m_score": f.m_score,
            # BG/NBD and Gamma-Gamma inputs: repeat order days, their mean spend.
            "repeat_purchases": len(set(s.days)) - 1 if s.days else None,
            "repeat_order_value": repeat_order_value(s),
            "classes": self.classes_of(customer_id),
            **({"withheld": withheld} if (withheld := self.withheld_of(c)) else {}),
            "since": {dim: text_of(ms) for dim, ms in sorted(c.since.items())},
            "rules_version": self.rules_version,
        }

    @staticmethod
    def present_traits(c: Customer) -> dict[str, object] | None:
        """The traits not removed, by name; None for a customer never stated any."""
        if not any(p.traits for p in c.profiles):
            return None
        return {k: v for k, v in sorted(c.traits().items()) if v is not None}

    @staticmethod
    def withheld_of(c: Customer) -> dict[str, str | None]:
        """The classes the customer is in but was not told of, by dimension."""
        pairs = zip(DIMENSIONS, c.classes, c.current, strict=True)
        return {d: now for d, told, now in sorted(pairs) if told != now}

    def today(self) -> int:
        """The local day of the clock."""
        assert self.clock is not None
        return local_day(self.clock, self.zone)

    def first_change_day(self, customer_id: str, until_day: int) -> int | None:
        """The first day in (clock day, until_day) on which a class of this customer would
        change with no new event, or None."""
        assert self.clock is not None
        c = self.customers[customer_id]
        for day in range(self.today() + 1, until_day):
            if c.classes_at(day) != c.current:
                return day
        return None


def repeat_order_value(s: Stats) -> float | None:
    """Mean spend of the order days after the first one (None without such a day)."""
    repeat = [cents for (_, cents), day in zip(s.orders, s.days, strict=True) if day != s.days[0]]
    days = len({day for day in s.days if day != s.days[0]}) if s.days else 0
    return sum(repeat) / 100 / days if days else None


def run_oracle(
    lines: list[bytes],
    as_of_ms: int,
    rules_version: str,
    reference_ms: int,
    timezone: str = "UTC",
    *,
    suppress: frozenset[str] = frozenset(),
) -> Oracle:
    """Feed every line (numbered from 1), then advance to ``as_of_ms``."""
    oracle = Oracle(rules_version, reference_ms, timezone, suppress)
    for line_no, raw in enumerate(lines, start=1):
        oracle.feed(raw, line_no)
    oracle.advance(as_of_ms)
    return oracle
