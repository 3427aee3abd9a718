"""The BG/NBD and Gamma-Gamma formulas against an independent implementation (mpmath at 40
digits, with its own 2F1), on a grid that includes the extreme customers where a plain series
is slow or cancels: many repeat purchases, horizons long against alpha + T, a close to 1."""

from __future__ import annotations

import itertools
import math

import mpmath as mp
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from worker.core.predict import (
    BgNbd,
    GammaGamma,
    bgnbd_log_likelihood,
    clv,
    expected_order_value,
    expected_purchases,
    gamma_gamma_log_likelihood,
    p_alive,
)

mp.mp.dps = 40
REL = 1e-9
TINY = 1e-290  # below this a double underflows before the formula does

MODELS = [
    BgNbd(0.243, 4.414 * 7, 0.793, 2.426),  # CDNOW, days
    BgNbd(2.5, 0.05, 0.15, 20.0),  # frequent buyers, alpha far below a day
    BgNbd(0.1, 120.0, 6.0, 0.6),
    BgNbd(1.3, 3.0, 1.0000001, 0.4),  # a at the removable singularity of eq. (10)
    BgNbd(0.7, 10.0, 0.9, 60.0),  # large b: c - a - b of the series barely moves with x
    BgNbd(0.94, 16.65, 9.66, 34.8),  # the z -> 1 - z connection formula cancels badly here
    BgNbd(3.38, 37.98, 4.02, 2.64),  # ... and its first series passes near a pole here
]
HISTORIES = [
    (0, 0, 0),
    (3, 29, 30),
    (50, 29, 30),
    (0, 0, 400),
    (1, 0, 1),
    (1, 10, 10),
    (3, 100, 101),
    (20, 300, 300),
    (20, 50, 3000),
    (200, 700, 700),
    (1000, 2000, 2001),
    (5000, 3000, 3000),
]
HORIZONS = [1, 30, 90, 365, 3650]


def _m(m: BgNbd) -> tuple[mp.mpf, mp.mpf, mp.mpf, mp.mpf]:
    return mp.mpf(m.r), mp.mpf(m.alpha), mp.mpf(m.a), mp.mpf(m.b)


def ref_p_alive(m: BgNbd, x: int, t_x: float, T: float) -> mp.mpf:
    r, alpha, a, b = _m(m)
    if x == 0:
        return mp.mpf(1)
    return 1 / (1 + a / (b + x - 1) * ((alpha + T) / (alpha + t_x)) ** (r + x))


def ref_expected(
    m: BgNbd, x: int, t_x: float, T: float, t: float, *, a_shift: mp.mpf = 0
) -> mp.mpf:
    r, alpha, a, b = _m(m)
    a += a_shift
    z = mp.mpf(t) / (alpha + T + t)
    body = 1 - ((alpha + T) / (alpha + T + t)) ** (r + x) * mp.hyp2f1(
        r + x, b + x, a + b + x - 1, z
    )
    return (a + b + x - 1) / (a - 1) * body * ref_p_alive(m, x, t_x, T)


def ref_log_likelihood(m: BgNbd, x: int, t_x: float, T: float) -> mp.mpf:
    r, alpha, a, b = _m(m)
    head = mp.gamma(r + x) * alpha**r / mp.gamma(r)
    main = mp.beta(a, b + x) / mp.beta(a, b) / (alpha + T) ** (r + x)
    extra = mp.beta(a + 1, b + x - 1) / mp.beta(a, b) / (alpha + t_x) ** (r + x) if x else 0
    return mp.log(head * (main + extra))


def close(value: float, ref: mp.mpf) -> bool:
    if abs(ref) < TINY:
        return abs(value) < 1e-280
    return bool(abs(mp.mpf(value) - ref) <= REL * abs(ref))


@pytest.mark.parametrize("m", MODELS, ids=lambda m: f"r{m.r}-a{m.a}-b{m.b}")
def test_bgnbd_matches_mpmath_on_the_grid(m: BgNbd) -> None:
    for (x, t_x, T), t in itertools.product(HISTORIES, HORIZONS):
        assert close(p_alive(m, x, t_x, T), ref_p_alive(m, x, t_x, T)), (x, t_x, T)
        log_likelihood = ref_log_likelihood(m, x, t_x, T)  # a log: absolute error counts
        assert abs(bgnbd_log_likelihood(m, x, t_x, T) - log_likelihood) <= REL * max(
            1, abs(log_likelihood)
        )
        got = expected_purchases(m, x, t_x, T, t)
        assert close(got, ref_expected(m, x, t_x, T, t)), (x, t_x, T, t, got)


def test_a_equal_to_one_is_the_limit() -> None:
    exact = BgNbd(1.3, 3.0, 1.0, 0.4)
    for (x, t_x, T), t in itertools.product(HISTORIES, HORIZONS):
        ref = ref_expected(exact, x, t_x, T, t, a_shift=mp.mpf("1e-25"))
        assert close(expected_purchases(exact, x, t_x, T, t), ref), (x, t_x, T, t)


def test_gamma_gamma_matches_mpmath() -> None:
    g = GammaGamma(6.25, 3.74, 15.44)
    for x, mean in itertools.product([1, 2, 7, 100, 5000], [0.01, 1.0, 22.35, 5000.0]):
        p, q, v = mp.mpf(g.p), mp.mpf(g.q), mp.mpf(g.v)
        ref_value = (p * v + p * x * mean) / (p * x + q - 1)
        assert close(expected_order_value(g, x, mean), ref_value)
        px = p * x
        density = (
            mp.gamma(px + q)
            / (mp.gamma(px) * mp.gamma(q))
            * v**q
            * mp.mpf(mean) ** (px - 1)
            * mp.mpf(x) ** px
            / (x * mp.mpf(mean) + v) ** (px + q)
        )
        log_density = mp.log(density)
        assert abs(gamma_gamma_log_likelihood(g, x, mean) - log_density) <= REL * max(
            1, abs(log_density)
        )


def test_clv_discounts_each_month_from_its_end() -> None:
    m = MODELS[0]
    for x, t_x, T in HISTORIES:
        assert clv(m, 40.0, x, t_x, T, horizon=365) == pytest.approx(
            40.0 * expected_purchases(m, x, t_x, T, 365), rel=1e-15
        )
        ref, before = mp.mpf(0), mp.mpf(0)
        for end in [*range(30, 365, 30), 365]:
            upto = ref_expected(m, x, t_x, T, end)
            ref += (upto - before) * mp.mpf("1.1") ** (-mp.mpf(end) / 365)
            before = upto
        assert close(clv(m, 40.0, x, t_x, T, horizon=365, annual_discount=0.1), 40 * ref), (
            x,
            t_x,
            T,
        )


models = st.builds(
    BgNbd,
    st.floats(0.01, 10),
    st.floats(0.01, 500),
    st.floats(0.05, 20),
    st.floats(0.05, 50),
)


@st.composite
def histories(draw: st.DrawFn) -> tuple[int, int, int]:
    x = draw(st.integers(0, 300))
    t_x = draw(st.integers(0, 2000)) if x else 0
    return x, t_x, t_x + draw(st.integers(0, 2000))


@settings(max_examples=300, deadline=None)
@given(models, histories(), st.integers(1, 400))
def test_p_alive_is_a_probability_falling_with_silence(
    m: BgNbd, history: tuple[int, int, int], later: int
) -> None:
    x, t_x, T = history
    now, then = p_alive(m, x, t_x, T), p_alive(m, x, t_x, T + later)
    assert 0 <= then <= now <= 1
    if x and now > 1e-300:
        assert then < now
    assert expected_purchases(m, x, t_x, T + later, 90) <= expected_purchases(m, x, t_x, T, 90)
    assert clv(m, 10.0, x, t_x, T + later, horizon=365, annual_discount=0.2) <= clv(
        m, 10.0, x, t_x, T, horizon=365, annual_discount=0.2
    )


@settings(max_examples=200, deadline=None)
@given(models, histories(), st.integers(1, 3650), st.integers(1, 3650))
def test_expected_purchases_grow_with_the_horizon(
    m: BgNbd, history: tuple[int, int, int], t: int, more: int
) -> None:
    x, t_x, T = history
    short = expected_purchases(m, x, t_x, T, t)
    assert 0 <= short <= expected_purchases(m, x, t_x, T, t + more) * (1 + 1e-12)
    assert math.isfinite(short)
