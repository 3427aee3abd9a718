"""Maximum-likelihood fits of BG/NBD and Gamma-Gamma over a shop's customer histories.

Four (three) positive parameters over customers grouped by identical statistics: a plain
Nelder-Mead on the logs of the parameters, restarted from its own optimum until a restart
gains nothing, is fast and reliable enough that no numerical library earns its place.
"""

from __future__ import annotations

import argparse
import math
import re
import sys
import time
import tomllib
from array import array
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import orjson

from worker.core.features import facts_of
from worker.core.predict import (
    DEFAULT_HORIZONS,
    BgNbd,
    GammaGamma,
    History,
    bgnbd_log_likelihood,
    gamma_gamma_log_likelihood,
    history,
)
from worker.core.rules import Rules, load_rules, parse_rules
from worker.core.state import CustomerState
from worker.core.timeutil import day_of, format_ms, parse_rfc3339
from worker.errors import SegmentWorkerError
from worker.progress import Progress
from worker.settings import Settings, SettingsError

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


# ---- the `segment-worker fit` command -------------------------------------------------------

QUANTILES = (20, 40, 60, 80)


def register(
    sub: argparse._SubParsersAction[argparse.ArgumentParser],
    redis_states: Callable[[Settings], Iterator[CustomerState]],
) -> None:
    """Add ``fit`` to the CLI; ``redis_states`` scans a live Redis (the CLI's own reader)."""
    parser = sub.add_parser(
        "fit",
        help="fit the BG/NBD and Gamma-Gamma population parameters from the state",
        description="Fit P(alive) and CLV models (BG/NBD for purchases, Gamma-Gamma for spend) "
        "by maximum likelihood over every customer with an order, as of --as-of, and print "
        "the parameters as JSON. With --write-rules, also write a copy of a rules file with "
        "the fitted [model] table, ready for `rules diff` and a reload. Exit status 1 when "
        "the population is too small or degenerate or the fit does not converge.",
    )
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--state", type=Path, help="a replay --state-out file (JSON lines)")
    where.add_argument("--redis", metavar="URL", help="scan the worker's state in this Redis")
    parser.add_argument("--prefix", default="sw", help="Redis key prefix (%(default)s)")
    parser.add_argument("--rules", type=Path, help="rules in force (built-in defaults if unset)")
    parser.add_argument(
        "--as-of", metavar="TIMESTAMP", help="evaluation instant: T runs to its day (default now)"
    )
    parser.add_argument(
        "--write-rules",
        nargs=2,
        type=Path,
        metavar=("IN", "OUT"),
        help="copy rules file IN to OUT with the fitted [model] table",
    )
    parser.add_argument(
        "--quantile-scores",
        action="store_true",
        help="with --write-rules: score cuts become the population's 20/40/60/80th percentiles",
    )
    parser.set_defaults(func=lambda args: run(args, redis_states))


def run(
    args: argparse.Namespace, redis_states: Callable[[Settings], Iterator[CustomerState]]
) -> int:
    rules = load_rules(args.rules)
    try:
        as_of = parse_rfc3339(args.as_of) if args.as_of else int(time.time() * 1000)
    except ValueError as exc:
        raise SystemExit(f"segment-worker: --as-of: {exc}") from None
    day = day_of(as_of)
    if args.quantile_scores and not args.write_rules:
        raise SystemExit("segment-worker: --quantile-scores needs --write-rules")
    if args.redis:
        try:
            settings = replace(Settings.from_env(), redis_url=args.redis, redis_prefix=args.prefix)
        except SettingsError as exc:
            raise SystemExit(f"segment-worker: bad setting: {exc}") from None
        population = _from_states(_with_progress(redis_states(settings)), rules, day)
    else:
        population = _from_file(args.state, rules, day)
    try:
        report = fit_report(population, rules, as_of)
    except FitError as exc:
        print(f"segment-worker: fit: {exc}", file=sys.stderr)
        return 1
    if args.write_rules:
        source, target = args.write_rules
        try:
            text = source.read_text("utf-8")
        except OSError as exc:
            raise SystemExit(f"segment-worker: cannot read {source}: {exc.strerror}") from None
        text = with_model(text, report)
        if args.quantile_scores:
            text = with_cuts(text, report["quantiles"])
        parse_rules(text.encode(), str(target))  # never write a file the worker would refuse
        target.write_text(text, "utf-8")
    sys.stdout.buffer.write(orjson.dumps(report, option=orjson.OPT_INDENT_2) + b"\n")
    return 0


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


def _from_states(states: Iterable[CustomerState], rules: Rules, day: int) -> Population:
    out = Population(rules, day)
    for state in states:
        facts = facts_of(state, rules.counting)
        found = history(facts.index, day)
        if found is not None:
            features = rules.features_at(facts, day)
            out.add(found, {s.feature: _number(features[s.feature]) for s in rules.scores})
    return out


def _from_file(path: Path, rules: Rules, day: int) -> Population:
    """Customers from replay's --state-out records (which carry x, t_x's ends and the mean
    repeat spend; a record cannot be cut back, so orders after --as-of are refused)."""
    try:
        with path.open("rb") as handle:
            return _read_records(handle, path, rules, day)
    except OSError as exc:
        raise SystemExit(f"segment-worker: cannot read {path}: {exc.strerror}") from None


def _read_records(lines: Iterable[bytes], path: Path, rules: Rules, day: int) -> Population:
    out = Population(rules, day)
    for line_no, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = orjson.loads(line)
            first, last = record["first_order_at"], record["last_order_at"]
            if first is None:
                continue
            first_day, last_day = day_of(parse_rfc3339(first)), day_of(parse_rfc3339(last))
            x = int(record["repeat_purchases"])
            mean = float(record["repeat_order_value"] or 0)
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
            raise SystemExit(
                f"segment-worker: {path}:{line_no}: not a replay --state-out record ({exc})"
            ) from None
        if last_day > day:
            raise SystemExit(
                f"segment-worker: {path}:{line_no}: orders after --as-of; a state file cannot "
                "be cut back: replay with --as-of, or fit from --redis"
            )
        anchors = {"days_since_first_order": first_day, "days_since_last_order": last_day}
        scored: dict[str, float | None] = {}
        for score in rules.scores:
            name = score.feature
            if name in anchors:
                scored[name] = float(day - anchors[name])
            elif name in record:
                scored[name] = _number(record[name])
            else:
                raise SystemExit(
                    f"segment-worker: score {score.name!r} reads {name!r}, which a state file "
                    "does not hold; fit from --redis"
                )
        out.add(History(x, last_day - first_day, first_day, mean), scored)
    return out


def _number(value: object) -> float | None:
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str):  # money is written as a decimal string
        return float(value)
    return None


def _with_progress(states: Iterator[CustomerState]) -> Iterator[CustomerState]:
    progress = Progress(None, "fit: reading customers")
    try:
        for n, state in enumerate(states, start=1):
            progress.update(n, n)
            yield state
    finally:
        progress.close()


def with_model(text: str, report: Mapping[str, Any]) -> str:
    """``text`` without any ``[model...]`` table, with the fitted one appended; horizons and
    discount rate of a table it replaces are kept."""
    old: dict[str, Any] = tomllib.loads(text).get("model", {})
    kept, skipping = [], False
    for line in text.splitlines():
        header = _HEADER.match(line)
        if header:
            skipping = header.group(1).strip().split(".")[0].strip() == "model"
        if not skipping:
            kept.append(line)
    while kept and not kept[-1].strip():
        kept.pop()
    b, g = report["bgnbd"], report["gamma_gamma"]
    block = [
        "",
        f"# Fitted by `segment-worker fit` as of {report['as_of']} over {report['customers']:,}",
        "# customers (see docs/predictive.md). alpha is in days.",
        "[model]",
        f"horizons = [{', '.join(str(h) for h in old.get('horizons', DEFAULT_HORIZONS))}]",
        f"annual_discount_rate = {float(old.get('annual_discount_rate', 0.0))!r}",
        f"bgnbd = {{ r = {b['r']:.6g}, alpha = {b['alpha']:.6g}, a = {b['a']:.6g}, "
        f"b = {b['b']:.6g} }}",
        f"gamma_gamma = {{ p = {g['p']:.6g}, q = {g['q']:.6g}, v = {g['v']:.6g} }}",
        f'fitted = {{ as_of = "{report["as_of"]}", customers = {report["customers"]}, '
        f"repeat_customers = {g['customers']}, log_likelihood = {b['log_likelihood']:.6f} }}",
    ]
    return "\n".join(kept + block) + "\n"


def with_cuts(text: str, quantiles: Mapping[str, list[float] | None]) -> str:
    """``text`` with each ``[scores.NAME]`` table's cuts replaced by the population's, where
    they are distinct (with ties, e.g. most customers on one order, the fixed cuts stay)."""
    lines = text.splitlines()
    table = None
    for i, line in enumerate(lines):
        header = _HEADER.match(line)
        if header:
            table = header.group(1).strip()
            continue
        cuts_line = _CUTS.match(line)
        if table is None or not table.startswith("scores.") or cuts_line is None:
            continue
        name = table.split(".", 1)[1].strip()
        cuts = quantiles.get(name)
        if cuts is None or len(set(cuts)) != len(cuts):
            print(
                f"segment-worker: fit: score {name!r}: percentiles {cuts} are not distinct; "
                "its fixed cuts stay",
                file=sys.stderr,
            )
            continue
        shown = ", ".join(_plain(c) for c in cuts)
        lines[i] = f"{cuts_line.group(1)}[{shown}]  # population 20/40/60/80th percentiles"
    return "\n".join(lines) + "\n"


def _plain(value: float) -> str:
    return str(int(value)) if value == int(value) else f"{value:.6g}"


_HEADER = re.compile(r"^\s*\[\[?([^\]]+)\]\]?\s*(#.*)?$")
_CUTS = re.compile(r"^(\s*cuts\s*=\s*)\[[^\]]*\]\s*(#.*)?$")
