"""``segment-worker changes``: watch the segment-change topic, filtered the way marketing
automation subscribes (by the ``dimension`` and ``to`` headers, without parsing a value it
skips), on any broker, including the demo's (which librdkafka tools cannot talk to)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TextIO

import orjson
from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition
from aiokafka.errors import KafkaError

from worker import kafka
from worker.audience import UnknownClass, check_class
from worker.cli.common import Subparsers, kafka_failure, rules_unless_refused
from worker.display import pad
from worker.settings import Settings

IDLE_MS = 1000  # without --follow: stop once the end is reached and nothing came for this long


def register(sub: Subparsers) -> None:
    """Add ``changes``."""
    changes = sub.add_parser(
        "changes",
        help="print segment changes from the change topic, filtered",
        description="Read the segment-change topic (SEGMENT_WORKER_TOPIC_CHANGES; Kafka "
        "settings as for `run`, or --kafka) and print the changes as JSON lines or a table. "
        "Without --follow: every change the topic holds, then exit. With --follow: the new "
        "ones as they come, until Ctrl-C (with --from-beginning: all of them first). Filters "
        "on --dimension and --to use the Kafka headers, so skipped changes are never parsed. "
        "Works with any Kafka-compatible broker aiokafka can reach, the demo's included "
        "(segment-worker demo prints its address).",
    )
    changes.add_argument("--follow", "-f", action="store_true", help="keep printing new changes")
    changes.add_argument(
        "--from-beginning",
        action="store_true",
        help="with --follow: start at the oldest change, not the newest",
    )
    changes.add_argument(
        "--dimension",
        action="append",
        help="only this dimension (repeatable; one the rules in force do not have is refused)",
    )
    changes.add_argument("--to", action="append", metavar="CLASS", help="only changes into CLASS")
    changes.add_argument("--customer", action="append", metavar="ID", help="only this customer")
    changes.add_argument(
        "--format", choices=("jsonl", "table"), default="jsonl", help="(%(default)s)"
    )
    changes.add_argument("--kafka", metavar="BOOTSTRAP", help="this broker instead of the setting")
    changes.set_defaults(func=_changes)


@dataclass(frozen=True)
class Wanted:
    """Which records to print: each given filter must match (None: any)."""

    dimensions: frozenset[str] | None = None
    targets: frozenset[str] | None = None
    customers: frozenset[str] | None = None

    def __call__(self, record: ConsumerRecord[bytes, bytes]) -> bool:
        if self.customers is not None and (record.key or b"").decode() not in self.customers:
            return False
        if self.dimensions is None and self.targets is None:
            return True
        headers = {name: value.decode() for name, value in record.headers}
        return _matches(headers.get("dimension"), self.dimensions) and _matches(
            headers.get("to"), self.targets
        )


def _matches(value: str | None, allowed: frozenset[str] | None) -> bool:
    return allowed is None or value in allowed


def _set(values: Iterable[str] | None) -> frozenset[str] | None:
    return None if values is None else frozenset(values)


def render(record: ConsumerRecord[bytes, bytes], table: bool) -> str:
    """One line: the change event as it is (JSON), or a table row; a tombstone (an erased
    customer) as ``{"customer_id": ..., "erased": true}``."""
    key = (record.key or b"").decode()
    if record.value is None:
        if table:
            return row("", key, "", "", "(erased)", "erasure")
        return orjson.dumps({"customer_id": key, "erased": True}).decode()
    if not table:
        return bytes(record.value).decode()
    change = orjson.loads(record.value)
    cause = change.get("cause") or {}
    return row(
        change["occurred_at"],
        change["customer_id"],
        change["dimension"],
        change["from"] or "-",
        change["to"] or "-",
        cause.get("type", "?"),
    )


def row(  # noqa: PLR0917  # the columns, in order
    occurred_at: str, customer: str, dimension: str, before: str, after: str, cause: str
) -> str:
    """One line of the table, its columns padded to the width a terminal shows (a Chinese
    customer id takes two columns a character)."""
    return (
        f"{pad(occurred_at, 24)} {pad(customer, 16)} {pad(dimension, 14)} "
        f"{pad(before, 20, right=True)} -> {pad(after, 20)} {cause}"
    )


async def watch(
    settings: Settings,
    wanted: Wanted,
    *,
    follow: bool,
    from_beginning: bool,
    table: bool,
    out: TextIO,
) -> None:
    """Print the wanted changes; without ``follow``, return once the end is reached."""
    consumer = kafka.consumer(settings, enable_auto_commit=False, fetch_max_wait_ms=200)
    try:
        await kafka.start_checked(settings, consumer.start)
        topic = settings.topic_changes
        if topic not in await consumer.topics():
            raise KafkaError(f"no topic {topic!r} (SEGMENT_WORKER_TOPIC_CHANGES)")
        # The consumer has no group, so nothing makes it fetch the topic's metadata.
        count = await kafka.partition_count(settings, topic)
        partitions = [TopicPartition(topic, p) for p in range(count)]
        consumer.assign(partitions)
        if follow and not from_beginning:
            await consumer.seek_to_end(*partitions)
        else:
            await consumer.seek_to_beginning(*partitions)
        if follow:
            for tp in partitions:
                await consumer.position(tp)  # resolves the seek: nothing later is missed
            print(f"changes: following {topic} (Ctrl-C stops)", file=sys.stderr, flush=True)
        if table:
            out.write(row("occurred_at", "customer", "dimension", "from", "to", "cause") + "\n")
        while True:
            batch = await consumer.getmany(timeout_ms=IDLE_MS)
            for records in batch.values():
                for record in records:
                    if wanted(record):
                        out.write(render(record, table) + "\n")
            out.flush()
            if not follow and not batch and await _at_end(consumer, partitions):
                return
    finally:
        await consumer.stop()


async def _at_end(consumer: AIOKafkaConsumer, partitions: list[TopicPartition]) -> bool:
    ends = await consumer.end_offsets(partitions)
    for tp in partitions:
        if await consumer.position(tp) < ends[tp]:
            return False
    return True


def _changes(args: argparse.Namespace) -> int:
    settings = Settings.from_env(given={"kafka_bootstrap": ("--kafka", args.kafka)})
    # The rules only check --dimension: a file the worker refused must not stop the watch.
    without = "--dimension not checked"
    rules = rules_unless_refused(settings.rules, without=without) if args.dimension else None
    try:
        for dimension in args.dimension or ():
            if rules is not None:
                check_class(rules, dimension)  # else a typo looks like no change at all
    except UnknownClass as exc:
        print(f"segment-worker: {exc}", file=sys.stderr)
        return 2
    wanted = Wanted(_set(args.dimension), _set(args.to), _set(args.customer))
    run = watch(
        settings,
        wanted,
        follow=args.follow,
        from_beginning=args.from_beginning,
        table=args.format == "table",
        out=sys.stdout,
    )
    try:
        with contextlib.suppress(KeyboardInterrupt):
            asyncio.run(run)
    except KafkaError as exc:
        print(kafka_failure(exc, settings, given=bool(args.kafka)), file=sys.stderr)
        return 2
    return 0
