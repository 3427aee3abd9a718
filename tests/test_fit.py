"""The fits against the published CDNOW results and the populations they must refuse."""

from __future__ import annotations

import datetime as dt
import math
from pathlib import Path

import pytest

from worker.core.events import Order
from worker.core.predict import History, history
from worker.core.state import PAID, CustomerState
from worker.core.timeutil import DAY_MS
from worker.fit import FitError, bgnbd_inputs, fit_bgnbd, fit_gamma_gamma, nelder_mead

CDNOW = Path(__file__).parent / "data" / "cdnow_sample.txt"
EPOCH = dt.date(1970, 1, 1)
CALIBRATION_END = (dt.date(1997, 9, 30) - EPOCH).days


def cdnow_states() -> dict[str, CustomerState]:
    """Every CDNOW purchase as a paid order, whatever the calibration period."""
    states: dict[str, CustomerState] = {}
    for i, line in enumerate(CDNOW.read_text().splitlines()):
        _, customer, date, _, amount = line.split()
        day = (dt.date(int(date[:4]), int(date[4:6]), int(date[6:])) - EPOCH).days
        state = states.setdefault(customer, CustomerState(customer))
        cents = round(float(amount) * 100)
        state.apply(Order(f"e{i}", customer, day * DAY_MS, cents, "USD", "paid", f"o{i}", None))
    return states


@pytest.fixture(scope="module")
def cdnow() -> list[History]:
    states = cdnow_states().values()
    return [h for s in states if (h := history(s.index(PAID), CALIBRATION_END)) is not None]


def test_cdnow_reproduces_the_published_fits(cdnow: list[History]) -> None:
    assert len(cdnow) == 2357
    model, log_likelihood = fit_bgnbd(bgnbd_inputs(cdnow, CALIBRATION_END))
    assert model.r == pytest.approx(0.243, rel=0.01)
    assert model.alpha / 7 == pytest.approx(4.414, rel=0.01)  # published in weeks
    assert model.a == pytest.approx(0.793, rel=0.01)
    assert model.b == pytest.approx(2.426, rel=0.01)
    # The paper's -9582.4 is in weeks: each repeat purchase's rate density is 7x in days.
    repeats = sum(h.x for h in cdnow)
    assert log_likelihood + repeats * math.log(7) == pytest.approx(-9582.4, abs=0.1)
    spend, customers = fit_gamma_gamma((h.x, h.repeat_mean) for h in cdnow)
    assert customers == 946
    assert spend.p == pytest.approx(6.25, rel=0.01)
    assert spend.q == pytest.approx(3.74, rel=0.01)
    assert spend.v == pytest.approx(15.44, rel=0.01)


def test_history_leaves_later_orders_out(cdnow: list[History]) -> None:
    # Customer 0001 of the sample: 1997-01-01, -01-18, -08-02 (and 1997-12-12, after the end).
    state = cdnow_states()["0001"]
    assert history(state.index(PAID), CALIBRATION_END) == History(2, 213, 9862, (29.73 + 14.96) / 2)
    assert history(state.index(PAID), 9861) is None


def test_nelder_mead_finds_a_curved_valley() -> None:
    optimum = nelder_mead(lambda p: 100 * (p[1] - p[0] ** 2) ** 2 + (1 - p[0]) ** 2, [-1.2, 1.0])
    assert optimum.point == pytest.approx((1.0, 1.0), abs=1e-4)


def test_degenerate_populations_are_refused() -> None:
    with pytest.raises(FitError, match="at least 20 needed"):
        fit_bgnbd([(1, 3, 10)] * 19)
    with pytest.raises(FitError, match="repeat buyers"):
        fit_bgnbd([(0, 0, 30)] * 500 + [(1, 3, 30)] * 4)
    with pytest.raises(FitError, match="no time observed"):
        fit_bgnbd([(0, 0, 0)] * 30 + [(1, 0, 0)] * 10)
    with pytest.raises(FitError, match="repeat buyers with spend"):
        fit_gamma_gamma([(0, 0.0)] * 100 + [(2, 0.0)] * 50)


def test_an_unbounded_search_stops_with_a_message() -> None:
    with pytest.raises(FitError, match="no convergence"):
        nelder_mead(lambda p: -abs(p[0]) - abs(p[1]), [0.0, 0.0], max_evaluations=500)
