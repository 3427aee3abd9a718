"""``segment-worker audience``: the customers in one class right now, for export."""

from __future__ import annotations

import argparse
import csv
import io
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import BinaryIO

import orjson

from worker.audience import Member, Tally, UnknownClass, check_class, columns, members, populations
from worker.cli.common import Subparsers, computed_at, output, store_arguments
from worker.cli.operator import against_redis
from worker.progress import Progress
from worker.settings import Settings
from worker.store import Store

GUARANTEE = (
    "The members are read while the worker keeps classifying (Redis SCAN, over every master "
    "of a Redis Cluster, so every partition): a customer who is in the class for the whole "
    "scan is listed, exactly once; one who enters or leaves it during the scan may or may "
    "not be; nobody is listed who was not in the class at some instant of the scan."
)


def register(sub: Subparsers) -> None:
    """Add ``audience``."""
    audience = sub.add_parser(
        "audience",
        help="list the customers currently in one class (an audience to export)",
        description="Print every customer whose current class in DIMENSION is CLASS (the class "
        "last emitted on the change topic), one per line: customer_id, class, since (when "
        "they entered it), last_order_at, orders and spend in total and per window, and the "
        f"scores. {GUARANTEE} A progress bar on stderr counts the members found against the "
        "class's population when the scan started. Redis and Kafka settings come from the "
        "same environment variables as `run`; Kafka is asked only for the partition count "
        "(give it with --partitions to skip Kafka). Exit status 2 for a dimension or class "
        "the rules do not have (the message lists those they do), 1 if a stored state could "
        "not be read (named on stderr; the others are still listed). While the rules file is "
        "refused (the worker then runs on its old rules), DIMENSION and CLASS are taken "
        "unchecked and only customer_id, class and since are listed, as stored (said on "
        "stderr); --at, which needs the rules, is refused.",
    )
    audience.add_argument("dimension", metavar="DIMENSION")
    audience.add_argument("class_name", metavar="CLASS")
    audience.add_argument(
        "--format", choices=("jsonl", "csv"), default="jsonl", help="(%(default)s)"
    )
    audience.add_argument("--out", type=Path, metavar="FILE", help="write here (default stdout)")
    store_arguments(audience, computed="window and score figures")
    audience.add_argument("--quiet", action="store_true", help="no progress bar")
    audience.set_defaults(func=_audience)


def _audience(args: argparse.Namespace) -> int:
    without = "DIMENSION and CLASS not checked, only customer_id, class and since listed"
    rules, show = computed_at(args.at, without=without)
    if rules is not None:
        try:
            check_class(rules, args.dimension, args.class_name)
        except UnknownClass as exc:
            print(f"segment-worker: {exc}", file=sys.stderr)
            return 2
    fields = columns(rules)

    async def work(_: Settings, store: Store, partitions: int) -> int:
        counts = await populations(store, rules, partitions)
        expected = counts.get(args.dimension, {}).get(args.class_name, 0)
        label = f"audience {args.dimension}={args.class_name}"
        progress = None if args.quiet else Progress(expected, label, unit="customers scanned")
        tally = Tally()
        try:
            with output(args.out, sys.stdout.buffer) as out:
                assert out is not None
                write = _writer(args.format, fields, out)
                async for found in members(
                    store, args.dimension, args.class_name, show=show, fields=fields, tally=tally
                ):
                    write(found)
                    out.flush()
                    if progress is not None:
                        progress.update(tally.members, tally.scanned)
        finally:
            if progress is not None:
                progress.close()
        for customer_id in tally.unreadable:
            print(f"segment-worker: cannot read the state of {customer_id!r}", file=sys.stderr)
        print(
            f"{tally.members:,} members of {args.dimension}={args.class_name} "
            f"({tally.scanned:,} customers scanned; {expected:,} when the scan started)",
            file=sys.stderr,
        )
        return 1 if tally.unreadable else 0

    return against_redis(args.partitions, work)


def _writer(kind: str, fields: list[str], out: BinaryIO) -> Callable[[list[Member]], object]:
    """Writes a batch of members as JSON lines, or as CSV rows after a header (written now,
    so that an empty audience still says what its columns are)."""
    if kind == "jsonl":
        return lambda found: out.write(b"".join(orjson.dumps(m) + b"\n" for m in found))
    out.write(_csv([fields]))
    return lambda found: out.write(_csv([[m[f] for f in fields] for m in found]))


def _csv(rows: Sequence[Sequence[object]]) -> bytes:
    text = io.StringIO()
    csv.writer(text).writerows(rows)  # None is written as an empty field
    return text.getvalue().encode()
