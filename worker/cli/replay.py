"""``segment-worker replay``: recorded events through the core with an event-time clock."""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Iterable
from importlib import resources
from pathlib import Path
from typing import BinaryIO

import orjson

from worker.cli.common import (
    Subparsers,
    event_lines,
    instant,
    open_input,
    output,
    positive,
    reject_writer,
    seconds,
)
from worker.core.changes import SegmentChange
from worker.core.events import ParseLimits
from worker.core.rules import Rules, load_rules
from worker.core.timeutil import format_ms
from worker.core.views import describe
from worker.progress import Progress
from worker.replay import Replayer

SAMPLE = "sample-events.jsonl"
DEFAULT_LIMITS = ParseLimits()


def register(sub: Subparsers) -> None:
    """Add ``replay``."""
    replay = sub.add_parser(
        "replay",
        help="run recorded events (JSON lines) through the core with an event-time clock",
        description="Read order and visit events (one JSON object per line, with a 'type' of "
        "'order' or 'visit'), apply them in file order with an event-time clock (the greatest "
        "occurred_at seen), fire every time-driven change as the clock passes it, and write "
        "segment-change events as JSON lines. Bad lines never stop the replay: they go to "
        "--rejects and are counted on stderr (--strict: exit status 1 if any was). Same "
        "input, same output, byte for byte.",
    )
    source = replay.add_mutually_exclusive_group(required=True)
    source.add_argument(
        "events", nargs="?", type=Path, help="events file (JSON lines); - for stdin"
    )
    source.add_argument("--sample", action="store_true", help="replay the bundled sample file")
    replay.add_argument(
        "--rules",
        type=Path,
        help="rules file (TOML, or YAML if named *.yaml); built-in defaults if unset",
    )
    replay.add_argument(
        "--as-of",
        type=instant,
        metavar="TIMESTAMP",
        help="after the input, advance the clock to this RFC 3339 instant and emit what falls due",
    )
    replay.add_argument("--out", type=Path, help="segment-change events (default: stdout)")
    replay.add_argument("--state-out", type=Path, help="final per-customer state, JSON lines")
    replay.add_argument("--rejects", type=Path, help="rejected lines with reasons, JSON lines")
    replay.add_argument(
        "--max-bytes",
        type=positive,
        default=DEFAULT_LIMITS.max_bytes,
        help="payload size limit (bytes)",
    )
    replay.add_argument(
        "--future-skew",
        type=seconds,
        default=DEFAULT_LIMITS.max_future_ms / 1000,
        metavar="SECONDS",
        help="reject events stamped more than this far after the wall clock",
    )
    replay.add_argument(
        "--strict", action="store_true", help="exit status 1 if any line was rejected"
    )
    replay.add_argument("--quiet", action="store_true", help="no progress bar or summary")
    replay.set_defaults(func=_replay)


def feed(replayer: Replayer, lines: Iterable[bytes], progress: Progress | None = None) -> None:
    """Feed every non-blank line, numbered from 1 as the rejects name them."""
    done = 0
    for line_no, raw in event_lines(lines):
        done += len(raw) + 1
        replayer.feed(raw, line_no)
        if progress is not None and line_no % 4096 == 0:
            progress.update(done, line_no)


def _open_events(args: argparse.Namespace) -> tuple[BinaryIO, int | None, str]:
    if args.sample:
        path = Path(str(resources.files("worker").joinpath("data", SAMPLE)))
    elif str(args.events) == "-":
        return sys.stdin.buffer, None, "<stdin>"
    else:
        path = args.events
    handle = open_input(path)
    return handle, path.stat().st_size, str(path)


def _replay(args: argparse.Namespace) -> int:
    rules = load_rules(args.rules)
    limits = ParseLimits(max_bytes=args.max_bytes, max_future_ms=int(args.future_skew * 1000))
    events, size, name = _open_events(args)
    with (
        events,
        output(args.out, sys.stdout.buffer) as out,
        output(args.rejects, None) as rejects,
        output(args.state_out, None) as state_out,
    ):
        assert out is not None

        def on_change(change: SegmentChange) -> None:
            out.write(change.to_json() + b"\n")

        replayer = Replayer(
            rules,
            on_change,
            reject_writer(rejects, name),
            limits=limits,
            future_reference_ms=int(time.time() * 1000),
        )
        progress = None if args.quiet else Progress(size, "replay")
        feed(replayer, events, progress)
        if args.as_of is not None:
            if not args.quiet and replayer.clock_ms is not None and args.as_of < replayer.clock_ms:
                print(
                    f"replay: --as-of is before the input's last event "
                    f"({format_ms(replayer.clock_ms)}); the clock stays there",
                    file=sys.stderr,
                )
            replayer.advance(args.as_of)
        if progress is not None:
            progress.close()
        if state_out is not None:
            _write_states(replayer, rules, state_out)
    summary = replayer.summary
    if not args.quiet:
        reasons = ", ".join(f"{r}={n}" for r, n in sorted(summary.rejected.items()))
        withheld = ", ".join(f"{d}={n}" for d, n in sorted(summary.withheld.items()))
        if withheld:
            withheld = f", {summary.withheld.total():,} withheld by consent ({withheld})"
        print(
            f"replay: {summary.lines:,} lines, {summary.applied:,} applied, "
            f"{summary.rejected_total:,} rejected{' (' + reasons + ')' if reasons else ''}, "
            f"{len(replayer.states):,} customers, {summary.changes:,} segment changes{withheld}",
            file=sys.stderr,
        )
        if summary.rejected_total and args.rejects is None:
            hint = "replay: --rejects FILE writes each rejected line with its reason"
            print(hint, file=sys.stderr)
    return 1 if args.strict and summary.rejected_total else 0


def _write_states(replayer: Replayer, rules: Rules, handle: BinaryIO) -> None:
    day = rules.calendar.day_of(replayer.clock_ms) if replayer.clock_ms is not None else 0
    for customer_id in sorted(replayer.states):
        record = describe(replayer.states[customer_id], rules, day)
        handle.write(orjson.dumps(record) + b"\n")
