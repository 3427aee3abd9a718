"""``segment-worker simulate``: seeded shop traffic as replay input."""

from __future__ import annotations

import argparse
import sys
from itertools import islice
from pathlib import Path

from worker.cli.common import Subparsers, output, traffic_arguments
from worker.tools.simulate import FeedFaults, Simulator


def register(sub: Subparsers) -> None:
    """Add ``simulate``."""
    simulate = sub.add_parser(
        "simulate",
        help="write seeded, realistic shop traffic as replay input",
        description="Generate order and visit events from simulated customers (browsers, "
        "one-time buyers, regulars, loyal big spenders, lapsers who drift away and come back) "
        "as JSON lines for `replay`. The same seed gives the same bytes.",
    )
    traffic_arguments(simulate, events=10_000, customers=1_000)
    simulate.add_argument("--out", type=Path, help="output file (default: stdout)")
    simulate.add_argument(
        "--faults",
        action="store_true",
        help="misbehave like a real feed: ~1%% duplicates, ~5%% out of order, ~0.5%% days late, "
        "~1%% malformed",
    )
    simulate.set_defaults(func=_simulate)


def _simulate(args: argparse.Namespace) -> int:
    faults = FeedFaults.realistic() if args.faults else FeedFaults()
    simulator = Simulator(args.seed, args.customers, args.start, faults=faults)
    with output(args.out, sys.stdout.buffer) as out:
        assert out is not None
        for event in islice(simulator, args.events):
            out.write(event.jsonl() + b"\n")
    return 0
