"""BG/NBD and Gamma-Gamma: the standard buy-till-you-die and spend models, in pure Python.

Per customer: ``x`` repeat purchases (distinct order days minus one), ``t_x`` days from the
first to the last order day, ``T`` days from the first order day to the evaluation day, and
``m`` the mean spend of the repeat order days. Population parameters come from a fit
(``segment-worker fit``); all times are in days.

References: Fader, Hardie and Lee (2005), "Counting Your Customers the Easy Way: An
Alternative to the Pareto/NBD Model" and "RFM and CLV: Using Iso-value Curves for Customer
Base Analysis".
"""

from __future__ import annotations

import math
from bisect import bisect_right
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Final

from worker.core.features import Facts, Features
from worker.core.state import OrderIndex
from worker.errors import SegmentWorkerError

_EPS: Final = 1e-17
_MAX_TERMS: Final = 100_000
# Largest |h| / radius of a Taylor step: a ratio of 1/2 gains a bit per term.
_STEP: Final = 0.5
_MAX_LOSS: Final = 1e4  # digits the connection formula may cancel: 4 of 16
_FAR: Final = 0.05  # distance from a pole of the connection formula it keeps (see below)
MONTH_DAYS: Final = 30  # discounting step of clv(): one payment per 30 days
DEFAULT_HORIZONS: Final = (90, 365)
CROSSING_DAYS: Final = 2**15  # ~90 years: a model feature that takes longer never crosses


class NumericError(SegmentWorkerError):
    """Raised when a series does not converge within its term budget (a parameter bug)."""


@dataclass(frozen=True, slots=True)
class BgNbd:
    """Population parameters of the purchase (r, alpha in days) and dropout (a, b) processes."""

    r: float
    alpha: float
    a: float
    b: float


@dataclass(frozen=True, slots=True)
class GammaGamma:
    """Population parameters of the spend model (shape p per transaction, q and v)."""

    p: float
    q: float
    v: float


@dataclass(frozen=True, slots=True)
class History:
    """What both models read of one customer: ``x`` repeat order days, ``t_x`` days from the
    first to the last order day, the first order day (T counts from it) and the mean spend
    of the repeat order days in the base currency (the first day left out: Gamma-Gamma)."""

    x: int
    t_x: int
    first_day: int
    repeat_mean: float


def history(index: OrderIndex, day: int) -> History | None:
    """The customer's history as of the end of UTC ``day`` (later orders are left out), or
    None without a counted order by then."""
    days = index.days
    upto = bisect_right(days, day)
    if not upto:
        return None
    first, x = days[0], upto - 1
    amounts = index.day_amounts
    repeat = sum([amounts[d] for d in days[1:upto]]) / 100 / x if x else 0.0
    return History(x, days[upto - 1] - first, first, repeat)


def bgnbd_log_likelihood(m: BgNbd, x: int, t_x: float, T: float) -> float:
    """ln P(x, t_x, T | r, alpha, a, b) for one customer."""
    r, alpha, a, b = m.r, m.alpha, m.a, m.b
    a1 = math.lgamma(r + x) - math.lgamma(r) + r * math.log(alpha)
    a2 = math.lgamma(a + b) + math.lgamma(b + x) - math.lgamma(b) - math.lgamma(a + b + x)
    a3 = -(r + x) * math.log(alpha + T)
    if x == 0:
        return a1 + a2 + a3
    a4 = math.log(a) - math.log(b + x - 1) - (r + x) * math.log(alpha + t_x)
    top = max(a3, a4)
    return a1 + a2 + top + math.log(math.exp(a3 - top) + math.exp(a4 - top))


def p_alive(m: BgNbd, x: int, t_x: float, T: float) -> float:
    """Probability that a customer with this history has not dropped out by ``T``."""
    if x == 0:
        return 1.0
    log_odds = (
        math.log(m.a)
        - math.log(m.b + x - 1)
        + (m.r + x) * (math.log(m.alpha + T) - math.log(m.alpha + t_x))
    )
    # 1 / (1 + e^log_odds), without overflow for a long-silent frequent buyer.
    if log_odds > 0:
        e = math.exp(-log_odds)
        return e / (1.0 + e)
    return 1.0 / (1.0 + math.exp(log_odds))


def expected_purchases(m: BgNbd, x: int, t_x: float, T: float, t: float) -> float:
    """E[purchases in (T, T + t] | x, t_x, T]: BG/NBD eq. (10).

    The paper's ``(a+b+x-1)/(a-1) * (1 - ((alpha+T)/(alpha+T+t))^(r+x) 2F1(r+x, b+x;
    a+b+x-1; z))`` is evaluated after Euler's transformation, ``(1-z)^(r+x) 2F1(r+x, b+x;
    c; z) = (1-z)^(a-1) 2F1(a+b-1-r, a-1; c; z)``: its series converges fast however large
    ``x`` is (c grows with x, the numerator parameters do not), and the factor ``a-1`` of
    every term cancels the ``1/(a-1)`` analytically, so a = 1 is no singularity.
    """
    if t <= 0:
        return 0.0
    z = t / (m.alpha + T + t)
    c = m.a + m.b + x - 1
    eps = m.a - 1
    log1mz = math.log1p(-z)
    head = -log1mz if eps == 0 else -math.expm1(eps * log1mz) / eps
    tail = math.exp(eps * log1mz) * _reduced_2f1(m.a + m.b - 1 - m.r, m.a, c, z)
    return (c * head - tail) * p_alive(m, x, t_x, T)


def _reduced_2f1(A: float, a: float, C: float, z: float) -> float:
    """G(z) with 2F1(A, a-1; C; z) = 1 + (a-1) G(z) / C, for 0 <= z < 1 and C > -1 (the
    factor C, which eq. (10) multiplies back, is taken out so that C = 0 is no pole either).

    Three ways, the cheapest that is accurate: for z > 1/2, the connection formula to series
    in 1 - z, unless it cancels too many digits; the power series at 0, when its terms
    (like n^-s z^n) die out soon enough; else that series up to 1/2 and then Taylor steps
    towards 1 whose coefficients follow from the equation G solves, z(1-z)G'' + (C - (A+a)z)G'
    - A(a-1)G = AC (a three-term recurrence), each step at most half the distance to the
    singularity at 1, so that every series converges at least like 2^-n.
    """
    B = a - 1
    if z > 0.5 and _reflection_safe(A, B, C):
        first, second = _reflected_2f1(A, B, C, z)
        excess = first + second - 1
        if abs(first) + abs(second) + 1 <= _MAX_LOSS * abs(excess):  # few digits cancelled
            return C * excess / B
    z0 = z if z <= 0.5 or _direct_terms(C - A - a + 2, z) <= _taylor_terms(z) else 0.5
    # Series at 0: G = A sum_{n>=1} (A+1)_{n-1} (a)_{n-1} / ((C+1)_{n-1} n!) z^n, and G'.
    term = A * z0
    g, dg = term, A
    n = 1
    while abs(term) > _EPS * abs(g) or n < 2:
        term *= (A + n) * (a + n - 1) / ((C + n) * (n + 1)) * z0
        dg += term * (n + 1) / z0
        g += term
        n += 1
        if n > _MAX_TERMS:
            raise NumericError(f"2F1 series at z={z0} did not converge")
    here = z0
    while here < z:
        # At most half way to the singularity at 1, and short enough that the solution
        # singular at 0 (steep like z^(1-C)) cannot amplify rounding: |q0| h / p0 <= 2.
        p0 = here * (1 - here)
        q0 = abs(C - (A + a) * here)
        h = min(z - here, _STEP * (1 - here), 2 * p0 / q0 if q0 else 1.0)
        g, dg = _taylor_step((A, B, C), here, h, g, dg)
        here = z if h == z - here else here + h
    return g


def _reflection_safe(A: float, B: float, C: float) -> bool:
    """Whether 2F1(A, B; C; z) may try z -> 1 - z: the connection formula has poles where
    C - A - B is an integer, (F - 1) / B cancels for B near 0, and large parameters overflow
    its gamma functions."""
    m = C - A - B
    return abs(m - round(m)) > _FAR and abs(B) > _FAR and _FAR < C < 20 and abs(A) < 20


def _reflected_2f1(A: float, B: float, C: float, z: float) -> tuple[float, float]:
    """The two terms whose sum is 2F1(A, B; C; z) for 1/2 < z < 1, each a series in 1 - z
    (Abramowitz and Stegun 15.3.6) converging at least like 2^-n; they can cancel, so the
    caller checks their size against the sum."""
    w, m = 1 - z, C - A - B
    first = math.gamma(C) * math.gamma(m) * _rgamma(C - A) * _rgamma(C - B)
    second = math.gamma(C) * math.gamma(-m) * _rgamma(A) * _rgamma(B)
    return first * _series(A, B, 1 - m, w), w**m * second * _series(C - A, C - B, 1 + m, w)


def _rgamma(x: float) -> float:
    """1 / Gamma(x), zero at the poles."""
    if x <= 0 and x == math.floor(x):
        return 0.0
    return 1 / math.gamma(x)


def _series(A: float, B: float, C: float, z: float) -> float:
    """The plain hypergeometric series, for |z| <= 1/2; while C + n < 0 a term can still
    grow, so the sum runs past that point before it may stop."""
    term = total = 1.0
    n = 0
    while abs(term) > _EPS * abs(total) or n < max(2, 2 - C):
        term *= (A + n) * (B + n) / ((C + n) * (n + 1)) * z
        total += term
        n += 1
        if n > _MAX_TERMS:
            raise NumericError(f"2F1 series at z={z} did not converge")
    return total


def _direct_terms(s: float, z: float) -> float:
    """About how many terms the series at 0 needs at ``z``: they decay like n^-s z^n."""
    geometric = 40 / -math.log(z)
    return geometric if s <= 0 else min(geometric, math.exp(min(40 / s, 50)))


def _taylor_terms(z: float) -> float:
    """About what continuing from 1/2 to ``z`` costs, in series-term equivalents (a Taylor
    term costs about two): a series to 1/2, then steps halving the distance to 1."""
    return 55 + 110 * math.ceil(math.log2(0.5 / (1 - z)))


def _taylor_step(
    params: tuple[float, float, float], z0: float, h: float, g: float, dg: float
) -> tuple[float, float]:
    """G and G' at z0 + h from their values at z0 (see _reduced_2f1)."""
    A, B, C = params
    p0, p1, q0 = z0 * (1 - z0), 1 - 2 * z0, C - (A + B + 1) * z0
    c0, c1 = g, dg  # Taylor coefficients of G around z0
    value, slope = c0 + c1 * h, c1
    hn = h  # h^(n+1), the power beside c_(n+2) in the slope
    small = 0  # consecutive negligible terms: one can vanish by accident, two in a row not
    n = 0
    while small < 2:
        rhs = A * C if n == 0 else 0.0
        c2 = ((n + A) * (n + B) * c0 - (n + 1) * (p1 * n + q0) * c1 + rhs) / (
            p0 * (n + 1) * (n + 2)
        )
        slope += (n + 2) * c2 * hn
        hn *= h
        add = c2 * hn
        value += add
        small = small + 1 if abs(add) <= _EPS * abs(value) else 0
        c0, c1 = c1, c2
        n += 1
        if n > _MAX_TERMS:
            raise NumericError(f"2F1 continuation at z={z0} did not converge")
    return value, slope


def gamma_gamma_log_likelihood(g: GammaGamma, x: int, mean: float) -> float:
    """ln density of the observed mean spend ``mean`` over ``x`` >= 1 repeat order days."""
    p, q, v = g.p, g.q, g.v
    px = p * x
    return (
        math.lgamma(px + q)
        - math.lgamma(px)
        - math.lgamma(q)
        + q * math.log(v)
        + (px - 1) * math.log(mean)
        + px * math.log(x)
        - (px + q) * math.log(x * mean + v)
    )


def expected_order_value(g: GammaGamma, x: int, mean: float) -> float:
    """E[spend per order day | x repeat days averaging ``mean``] (Gamma-Gamma, q > 1):
    a weighted mean of the population mean p*v/(q-1) and the customer's own."""
    return (g.p * (g.v + x * mean)) / (g.p * x + g.q - 1)


def clv(
    m: BgNbd,
    value: float,
    x: int,
    t_x: float,
    T: float,
    *,
    horizon: int,
    annual_discount: float = 0.0,
) -> float:
    """Expected spend over the next ``horizon`` days: expected purchases times ``value``
    (the expected order value); with a discount rate, purchases are counted per 30-day
    step (the last one shorter) and each step's are discounted from its end, by
    ``(1 + annual_discount) ** (-end / 365)``. Either way CLV falls as T grows."""
    if annual_discount == 0:
        return value * expected_purchases(m, x, t_x, T, horizon)
    total, before = 0.0, 0.0
    for step_end in range(MONTH_DAYS, horizon + MONTH_DAYS, MONTH_DAYS):
        end = min(step_end, horizon)
        upto = expected_purchases(m, x, t_x, T, end)
        total += (upto - before) * (1 + annual_discount) ** (-end / 365)
        before = upto
    return value * total


def model_features(horizons: Iterable[int]) -> dict[str, str]:
    """Feature name -> what it means, for a ``[model]`` with these horizons."""
    out = {
        "p_alive": "BG/NBD probability the customer has not dropped out (null without orders)",
        "expected_order_value": "Gamma-Gamma expected spend per order day",
    }
    for h in horizons:
        out[f"expected_orders_{h}d"] = f"expected order days in the next {h} days"
        out[f"clv_{h}d"] = f"expected spend in the next {h} days (discounted if configured)"
    return out


@dataclass(frozen=True, slots=True)
class Model:
    """The rules file's ``[model]``: fitted parameters and what to derive from them."""

    bgnbd: BgNbd
    gamma_gamma: GammaGamma
    horizons: tuple[int, ...]
    annual_discount: float

    @property
    def feature_names(self) -> tuple[str, ...]:
        return tuple(model_features(self.horizons))

    def values(self, facts: Facts, day: int, names: Iterable[str] | None = None) -> Features:
        """The model's features at ``day`` (T counts from the first order day to ``day``):
        all of them, or only ``names`` (what the rules' conditions read)."""
        wanted = self.feature_names if names is None else tuple(names)
        inputs = _inputs(facts)
        if inputs is None:
            return dict.fromkeys(wanted)
        scored = self._scored(inputs, day)
        orders: dict[int, float] = {}  # expected purchases per horizon, shared with clv
        return {name: self._value(name, scored, orders) for name in wanted}

    def _scored(self, inputs: tuple[int, int, int, float], day: int) -> tuple[int, int, int, float]:
        x, t_x, first, mean = inputs
        T = max(day - first, t_x)  # an order dated after ``day`` counts as made on it
        return x, t_x, T, expected_order_value(self.gamma_gamma, x, mean)

    def _value(
        self, name: str, scored: tuple[int, int, int, float], orders: dict[int, float]
    ) -> float:
        x, t_x, T, value = scored
        m = self.bgnbd
        if name == "p_alive":
            return p_alive(m, x, t_x, T)
        if name == "expected_order_value":
            return value
        kind, h = name.rsplit("_", 1)
        horizon = int(h[:-1])
        if kind == "clv" and self.annual_discount:
            return clv(m, value, x, t_x, T, horizon=horizon, annual_discount=self.annual_discount)
        expected = orders.get(horizon)
        if expected is None:
            expected = orders[horizon] = expected_purchases(m, x, t_x, T, horizon)
        return expected if kind == "expected_orders" else value * expected

    def crossings(
        self,
        facts: Facts,
        day: int,
        features: Features,
        limits: Iterable[tuple[str, object]],
        before: int,
    ) -> set[int]:
        """Days in (``day``, ``before``) on which a comparison of a model feature with one of
        ``limits`` can flip with no new event. Every model feature falls (weakly) as T grows,
        so the only such day is the first on which the value reaches the limit, or goes
        below it when it sits on it: found by bisection over whole days."""
        inputs = _inputs(facts)
        if inputs is None:
            return set()
        names = set(self.feature_names)
        days: set[int] = set()
        for name, limit in limits:
            if (
                name not in names
                or not isinstance(limit, int | float)
                or isinstance(limit, bool)
                or limit < 0  # every model feature is >= 0
            ):
                continue
            now = features[name]
            if not isinstance(now, float) or now < limit:
                continue
            strict = now == limit  # already on it: the flip is to strictly below

            def gap(d: int, name: str = name, limit: float = limit) -> float:
                return self._value(name, self._scored(inputs, d), {}) - limit

            found = _first_day(gap, strict, day, now - limit, before)
            if found is not None:
                days.add(found)
        return days


def _inputs(facts: Facts) -> tuple[int, int, int, float] | None:
    """(x, t_x, first order day, mean repeat spend), or None without an order."""
    x = facts.invariant["repeat_purchases"]
    first = facts.anchors["days_since_first_order"]
    if not isinstance(x, int) or first is None:
        return None
    return x, day_span(facts), first, repeat_mean(facts, x)


def _first_day(
    gap: Callable[[int], float], strict: bool, day: int, gap_now: float, before: int
) -> int | None:
    """The first d in (day, before) at which the falling ``gap`` reaches 0 (goes below 0 if
    ``strict``), else None. Secant steps between the bracket's ends, with a bisection
    whenever a step failed to halve the bracket: the values are smooth in d, so this takes
    a few evaluations where plain bisection over years of days takes fifteen."""

    def past(g: float) -> bool:
        return g < 0 if strict else g <= 0

    lo, hi = day, before - 1
    if hi <= lo:
        return None
    g_lo, g_hi = gap_now, gap(hi)
    if not past(g_hi):
        return None
    bisect = False
    while hi - lo > 1:
        width = hi - lo
        if bisect or g_lo == g_hi:
            mid = (lo + hi) // 2
        else:
            mid = min(max(lo + round(width * g_lo / (g_lo - g_hi)), lo + 1), hi - 1)
        g = gap(mid)
        if past(g):
            hi, g_hi = mid, g
        else:
            lo, g_lo = mid, g
        bisect = not bisect and (hi - lo) * 2 > width
    return hi


def day_span(facts: Facts) -> int:
    span = facts.invariant["purchase_span_days"]
    return span if isinstance(span, int) else 0


def repeat_mean(facts: Facts, x: int) -> float:
    """Mean spend of the repeat order days (the first day left out), base currency."""
    if not x:
        return 0.0
    index = facts.index
    return (index.total - index.day_amounts[index.days[0]]) / 100 / x
