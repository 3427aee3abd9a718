"""``segment-worker bench``: throughput and latency against a baseline in the same run."""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

from worker.cli.common import Subparsers, non_negative, positive, traffic_arguments
from worker.core.rules import load_rules
from worker.tools.apache_kafka import BROKERS
from worker.tools.bench import bench_core, print_table, write_events
from worker.tools.livebench import run as run_live_bench
from worker.tools.livesetup import Plan


def register(sub: Subparsers) -> None:
    """Add ``bench [core|live]``."""
    bench = sub.add_parser(
        "bench",
        help="measure throughput and latency against a baseline in the same run",
        description="Generate simulated traffic (realistic feed faults included) to a temporary "
        "file, then time the core over it (parse, apply, classify, next due day; what replay "
        "and the live worker run per event) side by side with parsing alone. Prints events/s, "
        "latency percentiles and peak memory.",
    )
    bench.add_argument(
        "target",
        nargs="?",
        choices=("core", "live"),
        default="core",
        help="core: the per-event core against parsing alone (default; --events 1000000 "
        "--customers 50000); live: the worker end to end on a broker (--broker) and Redis "
        "against the raw getmany+Lua ceiling and a plain Faust agent, the worker in one "
        "process per core, latency at half and a tenth of capacity, and Redis bytes per "
        "customer (--events 100000 --customers 20000)",
    )
    traffic_arguments(bench, events=None, customers=None)
    bench.add_argument(
        "--rules",
        type=Path,
        help="rules file (TOML, or YAML if named *.yaml); built-in defaults if unset",
    )
    bench.add_argument(
        "--memory-customers",
        type=positive,
        default=100_000,
        help="live: customers for the Redis memory figure (%(default)s)",
    )
    bench.add_argument(
        "--latency-seconds",
        type=positive,
        default=20,
        help="live: how long each paced latency run sends (%(default)s)",
    )
    bench.add_argument(
        "--latency-warmup",
        type=non_negative,
        default=3,
        help="live: seconds each paced latency run sends before the events it times, so that "
        "the table shows the steady state (every customer's first event, to cold caches, "
        "falls in it); the p99 with it is shown beside (%(default)s)",
    )
    bench.add_argument(
        "--latency-rate",
        type=positive,
        help="live: events/s of the paced latency run (default: half and a tenth of the "
        "worker's measured capacity); a fixed rate compares brokers or machines at the same load",
    )
    bench.add_argument(
        "--broker",
        choices=BROKERS,
        help="live: the broker to run on: tansu (embedded, nothing but pip) or kafka (the "
        "pinned Apache Kafka: Java 17+, jars fetched with Maven on first use; the worker "
        "writes with the idempotent producer and acks=all); default $SW_TEST_BROKER, else tansu",
    )
    bench.set_defaults(func=_bench)


def _bench(args: argparse.Namespace) -> int:
    if args.target == "live":
        plan = Plan(
            events=args.events or 100_000,
            customers=args.customers or 20_000,
            memory_customers=args.memory_customers,
            seed=args.seed,
            latency_seconds=args.latency_seconds,
            latency_rate=args.latency_rate,
            latency_warmup=args.latency_warmup,
            start_ms=args.start,
            rules=args.rules,
            broker=args.broker or os.environ.get("SW_TEST_BROKER") or "tansu",
        )
        run_live_bench(plan)
        return 0
    events = args.events or 1_000_000
    customers = args.customers or 50_000
    rules = load_rules(args.rules)
    with tempfile.TemporaryDirectory(prefix="segment-worker-bench-") as tmp:
        path = Path(tmp) / "events.jsonl"
        write_events(path, args.seed, customers, events, args.start)
        print_table(bench_core(path, rules, now_ms=int(time.time() * 1000)))
    return 0
