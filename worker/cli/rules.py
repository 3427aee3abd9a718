"""``segment-worker rules check|diff``: validate a rules file, and see what a change would move
before deploying it."""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import cast

import orjson
import redis

from worker.cli.common import (
    REDIS_ERRORS,
    Subparsers,
    instant,
    open_input,
    redis_arguments,
    redis_failure,
    redis_settings,
)
from worker.cli.replay import feed
from worker.core.codec import decode_state
from worker.core.events import ParseLimits
from worker.core.features import DAYS_SINCE, INVARIANT, feature_kinds
from worker.core.predict import model_features
from worker.core.rules import load_rules
from worker.core.rulesdiff import class_moves, render
from worker.core.state import CustomerState
from worker.display import pad
from worker.keys import name_in
from worker.redis.client import tls_options
from worker.replay import Replayer
from worker.settings import Settings
from worker.store import store_for


def register(sub: Subparsers) -> None:
    """Add ``rules check`` and ``rules diff``."""
    rules = sub.add_parser("rules", help="validate and inspect rules files")
    rules_sub = rules.add_subparsers(dest="rules_command", required=True, metavar="ACTION")
    check = rules_sub.add_parser(
        "check",
        help="validate a rules file and print its dimensions",
        description="Validate a rules file; print its version and dimensions, or every "
        "error with the field it is in and a suggestion where one is close (exit status 2).",
    )
    check.add_argument("file", type=Path, nargs="?", help="rules file; the defaults if omitted")
    check.add_argument("--features", action="store_true", help="also list usable features")
    check.set_defaults(func=_check)
    diff = rules_sub.add_parser(
        "diff",
        help="how many customers a new rules file would move, per dimension",
        description="Classify every customer under the current rules and under NEW at the same "
        "instant and print, per dimension, how many would move from which class to which. The "
        "customers come from the live Redis state (--redis) or from a replay of an events file "
        "(--events).",
    )
    diff.add_argument("new", type=Path, help="the candidate rules file")
    diff.add_argument(
        "--rules",
        type=Path,
        help="the current rules (default: with --redis, SEGMENT_WORKER_RULES, the worker's; "
        "else the built-in defaults)",
    )
    where = diff.add_mutually_exclusive_group(required=True)
    redis_arguments(diff, where)
    where.add_argument("--events", type=Path, help="replay this events file (JSON lines)")
    diff.add_argument(
        "--as-of",
        type=instant,
        metavar="TIMESTAMP",
        help="classify at this instant (default: now for --redis, the end of --events)",
    )
    diff.add_argument("--json", action="store_true", help="machine-readable output")
    diff.set_defaults(func=_diff)


def _check(args: argparse.Namespace) -> int:
    rules = load_rules(args.file)
    print(f"{rules.source}: OK, version {rules.version}")
    currency = rules.base_currency
    rates = ", ".join(f"{c}={r}" for c, r in rules.rates.items()) or "none"
    print(f"  orders count when: {'paid' if rules.counting == 2 else 'placed or paid'}")
    windows = ", ".join(f"{w}d" for w in rules.windows)
    print(f"  windows: {windows}; currency {currency}; rates {rates}")
    keys = ", ".join(sorted(rules.activity.actions)) or "none"
    print(f"  calendar: {rules.calendar.name}; key actions: {keys}")
    for score in rules.scores:
        direction = "higher" if score.higher_is_better else "lower"
        cuts = list(score.cuts)
        print(f"  score {score.name}_score: {score.feature}, cuts {cuts}, {direction} is better")
    for dim in rules.dimensions:
        applies = f"  (applies when {dim.applies})" if dim.applies else ""
        print(f"  dimension {dim.name}{applies}")
        for cls in dim.classes:
            label = f"  [{cls.label}]" if cls.label != cls.name else ""
            print(f"    {pad(cls.name, 20)} {cls.when or '(otherwise)'}{label}")
    if args.features:
        print("  features:")
        described = {**INVARIANT, **DAYS_SINCE}
        for name, kind in feature_kinds(rules.windows, rules.scores).items():
            print(f"    {pad(name, 26)} {pad(kind.value, 11)} {described.get(name, '')}")
        for name, text in model_features(rules.model.horizons).items() if rules.model else ():
            print(f"    {pad(name, 26)} {pad('model', 11)} {text}")
    return 0


def _diff(args: argparse.Namespace) -> int:
    new = load_rules(args.new)
    if args.redis is not None:
        settings = redis_settings(args.redis, args.prefix)
        # The worker's state was classified under its own rules, not the built-in ones.
        old = load_rules(args.rules or settings.rules)
        states = list(redis_states(settings))
        at_ms = args.as_of if args.as_of is not None else int(time.time() * 1000)
    else:
        old = load_rules(args.rules)
        replayer = Replayer(
            old,
            lambda _: None,
            lambda *_: None,
            limits=ParseLimits(),
            future_reference_ms=int(time.time() * 1000),
        )
        with open_input(args.events) as handle:
            feed(replayer, handle)
        if args.as_of is not None:
            replayer.advance(args.as_of)
        states = list(replayer.states.values())
        at_ms = replayer.clock_ms if replayer.clock_ms is not None else 0
    moves = class_moves(states, old, new, at_ms)
    if args.json:
        out = {
            dim: [{"from": a, "to": b, "customers": n} for (a, b), n in counter.items() if a != b]
            for dim, counter in moves.items()
        }
        sys.stdout.buffer.write(orjson.dumps(out, option=orjson.OPT_INDENT_2) + b"\n")
    else:
        print(f"{len(states):,} customers; {old.version} -> {new.version}")
        print("\n".join(render(moves)))
    return 0


def redis_states(settings: Settings) -> Iterator[CustomerState]:
    """Every customer's state in the worker's Redis; one that cannot answer ends the command
    (exit status 2) saying so."""
    store = store_for(settings, None)
    kind = redis.RedisCluster if settings.redis_cluster else redis.Redis
    try:
        client = kind.from_url(settings.redis_url, **tls_options(settings))  # a cluster connects
        try:
            for key in client.scan_iter(match=store.keys.every_customer(), count=1000):
                stored = cast(bytes | None, client.get(key))
                if stored is not None:
                    customer_id, blob = store.names.unwrap(stored)
                    yield decode_state(customer_id or name_in(key.decode()), blob)
        finally:
            client.close()
    except REDIS_ERRORS as exc:
        print(redis_failure(exc, settings), file=sys.stderr)
        raise SystemExit(2) from None
