"""``segment-worker produce``: an events file into the input topics (history, batch exports)."""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path

from aiokafka.errors import KafkaError

from worker.cli.common import (
    Subparsers,
    event_lines,
    kafka_failure,
    open_input,
    output,
    reject_writer,
)
from worker.core.rules import load_rules
from worker.produce import MissingTopic, Sent, produce
from worker.progress import Progress
from worker.settings import Settings


def register(sub: Subparsers) -> None:
    """Add ``produce``."""
    parser = sub.add_parser(
        "produce",
        help="send an events file (JSON lines) to the input topics, placed as the worker expects",
        description="Send order, visit and profile events (one JSON object per line with its "
        "'type', as replay reads them) to the worker's input topics: each line as it is, to "
        "the topic of its type, keyed by its customer_id, on the partition Kafka's default "
        "partitioner (murmur2) gives that key, as the worker requires. Use it to load a "
        "shop's history before or while the worker runs. Each line is first checked as the "
        "worker checks it (and an order's currency against the worker's rules, "
        "SEGMENT_WORKER_RULES); a bad line is not sent, but counted on stderr and written with "
        "its reason to --rejects (--strict: exit status 1 if any was). Sending a file twice "
        "changes no state (orders count once per order_id; visits and profiles are "
        "idempotent). Kafka settings, topic names and the event limits as for `run` "
        "(SEGMENT_WORKER_*); the topics must exist, with the partition count the worker's "
        "state in Redis is built with (asked of the Redis of the same settings; one that does "
        "not answer is said on stderr, and the file sent).",
    )
    parser.add_argument("events", type=Path, help="events file (JSON lines); - for stdin")
    parser.add_argument("--kafka", metavar="BOOTSTRAP", help="this broker instead of the setting")
    parser.add_argument("--rejects", type=Path, help="lines not sent, with reasons, JSON lines")
    parser.add_argument(
        "--strict", action="store_true", help="exit status 1 if any line was not sent"
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bar or summary")
    parser.set_defaults(func=_produce)


def _produce(args: argparse.Namespace) -> int:
    settings = Settings.from_env(given={"kafka_bootstrap": ("--kafka", args.kafka)})
    rules = load_rules(settings.rules)  # the worker's: what it would refuse, refused here
    if str(args.events) == "-":
        events, size, name = sys.stdin.buffer, None, "<stdin>"
    else:
        events, size, name = open_input(args.events), args.events.stat().st_size, str(args.events)
    progress = None if args.quiet else Progress(size, "produce")
    with events, output(args.rejects, None) as rejects:

        def on_progress(sent: Sent) -> None:
            if progress is not None:
                progress.update(events.tell() if size else 0, sent.lines)

        try:
            sent = asyncio.run(
                produce(
                    settings,
                    rules,
                    event_lines(events),
                    reject_writer(rejects, name),
                    now_ms=int(time.time() * 1000),
                    on_progress=on_progress,
                    on_warning=lambda line: print(line, file=sys.stderr),
                )
            )
        except MissingTopic as exc:
            print(f"segment-worker: {exc}", file=sys.stderr)
            return 2
        except KafkaError as exc:
            then = "lines already acknowledged stay sent, and sending the file again is harmless"
            print(kafka_failure(exc, settings, then, given=bool(args.kafka)), file=sys.stderr)
            return 2
        finally:
            if progress is not None:
                progress.close()
    if not args.quiet:
        _summary(sent, args.rejects is None)
    return 1 if args.strict and sent.rejected else 0


def _summary(sent: Sent, no_rejects_file: bool) -> None:
    topics = ", ".join(f"{t}={n:,}" for t, n in sorted(sent.topics.items()))
    reasons = ", ".join(f"{r}={n:,}" for r, n in sorted(sent.rejected.items()))
    rejected = sent.rejected.total()
    print(
        f"produce: {sent.lines:,} lines, {sent.topics.total():,} sent ({topics or 'none'}), "
        f"{rejected:,} not sent{' (' + reasons + ')' if reasons else ''}",
        file=sys.stderr,
    )
    if rejected and no_rejects_file:
        print("produce: --rejects FILE writes each line not sent with its reason", file=sys.stderr)
