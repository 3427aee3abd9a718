"""Maximum-likelihood fits of BG/NBD and Gamma-Gamma over a shop's customer histories.

Four (three) positive parameters over customers grouped by identical statistics: a plain
Nelder-Mead on the logs of the parameters, restarted from its own optimum until a restart
gains nothing, is fast and reliable enough that no numerical library earns its place. The
``segment-worker fit`` command that reads the customers and writes rules is worker/cli/fit.py.
"""

from __future__ import annotations

import math
from array import array
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from worker.core.predict import (
    BgNbd,
    GammaGamma,
    History,
    bgnbd_log_likelihood,
    gamma_gamma_log_likelihood,
)
from worker.core.rules import Rules
from worker.core.timeutil import format_ms
from worker.errors import SegmentWorkerError

MIN_CUSTOMERS = 20
MIN_REPEAT = 5  # repeat buyers needed to say anything about dropout and spend


class FitError(SegmentWorkerError):
    """Raised when a population cannot be fitted: too small, degenerate, or no convergence."""


@dataclass(frozen=True, slots=True)
class Optimum:
    point: tuple[float, ...]
    value: float  # the minimised function (a negative log-likelihood)


def nelder_mead(
    f: Callable[[Sequence[float]], float],
    start: Sequence[float],
    *,
    step: float = 0.5,
    tolerance: float = 1e-10,
    max_evaluations: int = 20_000,
) -> Optimum:
    """Minimise ``f`` (standard reflection/expansion/contraction/shrink coefficients),
    restarting from the optimum until a restart improves it by less than ``tolerance``."""
    evaluations = 0

    def value(p: Sequence[float]) -> float:
        nonlocal evaluations
        evaluations += 1
        if evaluations > max_evaluations:
            raise FitError(f"no convergence within {max_evaluations} likelihood evaluations")
        result = f(p)
        return result if math.isfinite(result) else math.inf

    best = list(start)
    best_value = value(best)
    while True:
        simplex = [best] + [
            [v + (step if i == j else 0.0) for j, v in enumerate(best)] for i in range(len(best))
        ]
        values = [best_value] + [value(p) for p in simplex[1:]]
        while True:
            order = sorted(range(len(simplex)), key=values.__getitem__)
            simplex, values = [simplex[i] for i in order], [values[i] for i in order]
            spread = max(
                abs(a - b) for p in simplex[1:] for a, b in zip(p, simplex[0], strict=True)
            )
            if values[-1] - values[0] <= tolerance and spread <= 1e-7:
                break
            n = len(best)
            centroid = [sum(p[j] for p in simplex[:-1]) / n for j in range(n)]
            worst = simplex[-1]

            def toward(
                t: float, worst: list[float] = worst, c: list[float] = centroid
            ) -> list[float]:
                return [cj + t * (cj - wj) for cj, wj in zip(c, worst, strict=True)]

            reflected = toward(1.0)
            fr = value(reflected)
            if fr < values[0]:
                expanded = toward(2.0)
                fe = value(expanded)
                simplex[-1], values[-1] = (expanded, fe) if fe < fr else (reflected, fr)
            elif fr < values[-2]:
                simplex[-1], values[-1] = reflected, fr
            else:
                contracted = toward(0.5) if fr < values[-1] else toward(-0.5)
                fc = value(contracted)
                if fc < min(fr, values[-1]):
                    simplex[-1], values[-1] = contracted, fc
                else:  # shrink towards the best point
                    for i in range(1, len(simplex)):
                        simplex[i] = [
                            (a + b) / 2 for a, b in zip(simplex[0], simplex[i], strict=True)
                        ]
                        values[i] = value(simplex[i])
        improved = best_value - values[0]
        best, best_value = simplex[0], values[0]
        if improved <= tolerance:
            return Optimum(tuple(best), best_value)
        step = 0.1


def fit_bgnbd(histories: Iterable[tuple[int, int, int]]) -> tuple[BgNbd, float]:
    """Fit r, alpha (days), a, b to (x, t_x, T) per customer (or a Counter of them); returns
    the log-likelihood too."""
    groups = histories if isinstance(histories, Counter) else Counter(histories)
    customers = sum(groups.values())
    if customers < MIN_CUSTOMERS:
        raise FitError(f"{customers} customers with an order: at least {MIN_CUSTOMERS} needed")
    repeaters = sum(n for (x, _, _), n in groups.items() if x > 0)
    if repeaters < MIN_REPEAT:
        raise FitError(
            f"only {repeaters} customers bought on more than one day: at least {MIN_REPEAT} "
            "repeat buyers are needed to fit purchase and dropout rates"
        )
    if all(T == 0 for _, _, T in groups):
        raise FitError("every customer's first order is on the evaluation day: no time observed")
    items = list(groups.items())
    mean_t = sum(T * n for (_, _, T), n in items) / customers or 1.0

    def negative(log_params: Sequence[float]) -> float:
        try:
            m = BgNbd(*(math.exp(v) for v in log_params))
            return -sum(n * bgnbd_log_likelihood(m, *h) for h, n in items)
        except (OverflowError, ValueError):
            return math.inf

    start = [0.0, math.log(mean_t), 0.0, 0.0]
    optimum = nelder_mead(negative, start)
    return BgNbd(*(math.exp(v) for v in optimum.point)), -optimum.value


def fit_gamma_gamma(spend: Iterable[tuple[int, float]]) -> tuple[GammaGamma, int]:
    """Fit p, q, v to (x, mean repeat spend) of the customers (or a Counter of them) with
    x >= 1 and spend > 0; returns how many customers that was."""
    counts = spend if isinstance(spend, Counter) else Counter(spend)
    groups = Counter({(x, m): n for (x, m), n in counts.items() if x >= 1 and m > 0})
    customers = sum(groups.values())
    if customers < MIN_REPEAT:
        raise FitError(
            f"only {customers} repeat buyers with spend: at least {MIN_REPEAT} are needed to fit "
            "the spend model"
        )
    items = list(groups.items())
    mean = sum(m * n for (_, m), n in items) / customers

    def negative(log_params: Sequence[float]) -> float:
        try:
            g = GammaGamma(*(math.exp(v) for v in log_params))
            return -sum(n * gamma_gamma_log_likelihood(g, x, m) for (x, m), n in items)
        except (OverflowError, ValueError):
            return math.inf

    optimum = nelder_mead(negative, [0.0, math.log(2.0), math.log(mean)])
    g = GammaGamma(*(math.exp(v) for v in optimum.point))
    if g.q <= 1:
        raise FitError(
            f"the spend model fitted q = {g.q:.3g} <= 1: the population mean spend is "
            "unbounded, so expected order values would be meaningless"
        )
    return g, customers


def bgnbd_inputs(histories: Iterable[History], day: int) -> list[tuple[int, int, int]]:
    return [(h.x, h.t_x, day - h.first_day) for h in histories]


QUANTILES = (20, 40, 60, 80)


class Population:
    """What the fits and percentiles need of every customer with an order, aggregated as it
    is read (customers with equal statistics share one entry), so that millions fit in memory."""

    def __init__(self, rules: Rules, day: int) -> None:
        self.day = day
        self.customers = 0
        self.histories: Counter[tuple[int, int, int]] = Counter()
        self.spend: Counter[tuple[int, float]] = Counter()
        self.scored: dict[str, array[float]] = {s.feature: array("d") for s in rules.scores}

    def add(self, h: History, scored: Mapping[str, float | None]) -> None:
        self.customers += 1
        self.histories[h.x, h.t_x, self.day - h.first_day] += 1
        self.spend[h.x, h.repeat_mean] += 1
        for feature, values in self.scored.items():
            value = scored[feature]
            if value is not None:
                values.append(value)


def fit_report(population: Population, rules: Rules, as_of: int) -> dict[str, Any]:
    model, log_likelihood = fit_bgnbd(population.histories)
    spend, spenders = fit_gamma_gamma(population.spend)
    return {
        "customers": population.customers,
        "as_of": format_ms(as_of),
        "bgnbd": {
            "r": model.r,
            "alpha": model.alpha,
            "a": model.a,
            "b": model.b,
            "log_likelihood": log_likelihood,
        },
        "gamma_gamma": {"p": spend.p, "q": spend.q, "v": spend.v, "customers": spenders},
        "quantiles": {
            s.name: nearest_rank(population.scored[s.feature], QUANTILES) for s in rules.scores
        },
    }


def nearest_rank(values: Iterable[float | None], percents: Sequence[int]) -> list[float] | None:
    """The nearest-rank percentiles of the known values (None when there are none)."""
    known = sorted(v for v in values if v is not None)
    if not known:
        return None
    return [known[max(math.ceil(p / 100 * len(known)), 1) - 1] for p in percents]
