"""``segment-worker run``: the live worker."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys

from worker.cli.common import Subparsers
from worker.service import Worker, WorkerCrashed
from worker.settings import Settings


def register(sub: Subparsers) -> None:
    """Add ``run``; its help lists every setting with its default."""
    run = sub.add_parser(
        "run",
        help="run the live worker (Kafka in, Redis state, Kafka out)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Consume the orders and visits topics, keep per-customer state in Redis, "
        "emit segment changes (and dead letters) to Kafka, fire time-driven changes, and serve "
        "/metrics, /healthz, /readyz and /customers/{id} on the HTTP port. Configured by "
        "environment variables (a <NAME>_FILE variant reads a secret from a file), or by a "
        "file of NAME=value lines that SEGMENT_WORKER_SETTINGS_FILE names (Compose's and "
        "systemd's env-file format; the environment wins over it):\n\n" + _settings_help(),
    )
    run.add_argument(
        "--log-level",
        type=_level,
        default="INFO",
        help="DEBUG, INFO, WARNING or ERROR (%(default)s)",
    )
    run.set_defaults(func=_run)


def _level(text: str) -> str:
    """A logging level's name, in any case; another is a usage error, not a traceback."""
    name = text.upper()
    if name not in logging.getLevelNamesMapping():
        raise argparse.ArgumentTypeError(f"not a logging level: {text!r}")
    return name


def _settings_help() -> str:
    rows = Settings().describe()
    width = max(len(name) for name, _, _ in rows)
    return "\n".join(
        f"  {name:<{width}}  {value}" + (f"  ({doc})" if doc else "") for name, value, doc in rows
    )


def _run(args: argparse.Namespace) -> int:
    logging.basicConfig(
        level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )

    async def serve() -> None:
        worker = Worker(Settings.from_env())
        worker.install_signal_handlers()
        await worker.run()

    try:
        asyncio.run(serve())
    except WorkerCrashed as exc:
        print(f"segment-worker: stopped on an error: {exc}", file=sys.stderr)
        return 1
    return 0
