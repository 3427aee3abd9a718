"""``segment-worker fit``: read every customer with an order (from a replay state file or the
live Redis), fit the population models (worker/fit.py), print them, and write them into a copy
of a rules file."""

from __future__ import annotations

import argparse
import re
import sys
import time
import tomllib
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import orjson

from worker.cli.common import (
    Subparsers,
    instant,
    open_input,
    output,
    redis_arguments,
    redis_settings,
)
from worker.cli.rules import redis_states
from worker.core.features import facts_of
from worker.core.predict import DEFAULT_HORIZONS, History, history
from worker.core.rules import Rules, load_rules, parse_rules
from worker.core.rules_syntax import is_yaml
from worker.core.state import CustomerState
from worker.core.timeutil import parse_rfc3339
from worker.fit import FitError, Population, fit_report
from worker.progress import Progress


def register(sub: Subparsers) -> None:
    """Add ``fit``."""
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
    redis_arguments(parser, where)
    parser.add_argument("--rules", type=Path, help="rules in force (built-in defaults if unset)")
    parser.add_argument(
        "--as-of",
        type=instant,
        metavar="TIMESTAMP",
        help="evaluation instant: T runs to its day (default now)",
    )
    parser.add_argument(
        "--write-rules",
        nargs=2,
        type=Path,
        metavar=("IN", "OUT"),
        help="copy rules file IN to OUT with the fitted [model] table (TOML files)",
    )
    parser.add_argument(
        "--quantile-scores",
        action="store_true",
        help="with --write-rules: score cuts become the population's 20/40/60/80th percentiles",
    )
    parser.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    rules = load_rules(args.rules)
    as_of = args.as_of if args.as_of is not None else int(time.time() * 1000)
    day = rules.calendar.day_of(as_of)
    if args.quantile_scores and not args.write_rules:
        print("segment-worker: --quantile-scores needs --write-rules", file=sys.stderr)
        return 2
    if args.write_rules and any(is_yaml(str(path)) for path in args.write_rules):
        print(
            "segment-worker: --write-rules edits TOML rules files; for a YAML one, copy the "
            "printed bgnbd and gamma_gamma parameters into its model table",
            file=sys.stderr,
        )
        return 2
    template = _template(args.write_rules[0]) if args.write_rules else None
    if args.redis is not None:
        settings = redis_settings(args.redis, args.prefix)
        population = _from_states(_with_progress(redis_states(settings)), rules, day)
    else:
        population = _from_file(args.state, rules, day)
    try:
        report = fit_report(population, rules, as_of)
    except FitError as exc:
        print(f"segment-worker: fit: {exc}", file=sys.stderr)
        return 1
    if template is not None:
        target = args.write_rules[1]
        text = with_model(template, report)
        if args.quantile_scores:
            text = with_cuts(text, report["quantiles"])
        parse_rules(text.encode(), str(target))  # never write a file the worker would refuse
        with output(target, None) as out:
            assert out is not None
            out.write(text.encode())
    sys.stdout.buffer.write(orjson.dumps(report, option=orjson.OPT_INDENT_2) + b"\n")
    return 0


def _template(path: Path) -> str:
    """The text of --write-rules' IN, refused before the fit (which can take minutes) if it
    cannot be read or the worker would refuse it."""
    with open_input(path) as handle:
        data = handle.read()
    parse_rules(data, str(path))
    return data.decode("utf-8")


def _from_states(states: Iterable[CustomerState], rules: Rules, day: int) -> Population:
    out = Population(rules, day)
    for state in states:
        facts = facts_of(state, rules.counting, rules.calendar)
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
            day_of = rules.calendar.day_of
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
