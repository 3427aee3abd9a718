"""The ``segment-worker`` command line."""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import time
from collections.abc import Iterator, Sequence
from importlib import resources
from pathlib import Path
from typing import BinaryIO

import orjson

from worker.core.changes import SegmentChange
from worker.core.deadletter import dead_letter
from worker.core.events import ParseLimits, Rejection
from worker.core.features import DAYS_SINCE, INVARIANT, feature_kinds
from worker.core.rules import Rules, RulesError, load_rules
from worker.core.timeutil import day_of, parse_rfc3339
from worker.core.views import describe
from worker.progress import Progress
from worker.replay import Replayer

SAMPLE = "sample-events.jsonl"
DEFAULT_LIMITS = ParseLimits()


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        code: int = args.func(args)
    except RulesError as exc:
        print(f"segment-worker: invalid rules: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # e.g. `segment-worker replay ... | head`
        with contextlib.suppress(OSError):
            sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - silence the interpreter's flush
        return 0
    return code


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="segment-worker",
        description="Real-time customer segmentation: order and visit events in, per-customer "
        "RFM state, classes along several dimensions, and segment-change events out.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    replay = sub.add_parser(
        "replay",
        help="run recorded events (JSON lines) through the core with an event-time clock",
        description="Read order and visit events (one JSON object per line, with a 'type' of "
        "'order' or 'visit'), apply them in file order with an event-time clock (the greatest "
        "occurred_at seen), fire every time-driven change as the clock passes it, and write "
        "segment-change events as JSON lines. Bad lines never stop the replay: they go to "
        "--rejects and are counted on stderr. Same input, same output, byte for byte.",
    )
    source = replay.add_mutually_exclusive_group(required=True)
    source.add_argument(
        "events", nargs="?", type=Path, help="events file (JSON lines); - for stdin"
    )
    source.add_argument("--sample", action="store_true", help="replay the bundled sample file")
    replay.add_argument("--rules", type=Path, help="rules file (TOML); built-in defaults if unset")
    replay.add_argument(
        "--as-of",
        metavar="TIMESTAMP",
        help="after the input, advance the clock to this RFC 3339 instant and emit what falls due",
    )
    replay.add_argument("--out", type=Path, help="segment-change events (default: stdout)")
    replay.add_argument("--state-out", type=Path, help="final per-customer state, JSON lines")
    replay.add_argument("--rejects", type=Path, help="rejected lines with reasons, JSON lines")
    replay.add_argument(
        "--max-bytes", type=int, default=DEFAULT_LIMITS.max_bytes, help="payload size limit (bytes)"
    )
    replay.add_argument(
        "--future-skew",
        type=float,
        default=DEFAULT_LIMITS.max_future_ms / 1000,
        metavar="SECONDS",
        help="reject events stamped more than this far after the wall clock",
    )
    replay.add_argument("--quiet", action="store_true", help="no progress bar or summary")
    replay.set_defaults(func=_replay)

    rules = sub.add_parser("rules", help="validate and inspect rules files")
    rules_sub = rules.add_subparsers(dest="rules_command", required=True, metavar="ACTION")
    check = rules_sub.add_parser(
        "check",
        help="validate a rules file and print its dimensions",
        description="Validate a rules file; print its version and dimensions, or the first "
        "error with the field it is in (exit status 2).",
    )
    check.add_argument("file", type=Path, nargs="?", help="rules file; the defaults if omitted")
    check.add_argument("--features", action="store_true", help="also list usable features")
    check.set_defaults(func=_rules_check)
    return parser


def _open_events(args: argparse.Namespace) -> tuple[BinaryIO, int | None, str]:
    if args.sample:
        path = Path(str(resources.files("worker").joinpath("data", SAMPLE)))
    elif str(args.events) == "-":
        return sys.stdin.buffer, None, "<stdin>"
    else:
        path = args.events
    try:
        handle = path.open("rb")
    except OSError as exc:
        raise SystemExit(f"segment-worker: cannot read {path}: {exc.strerror}") from None
    return handle, path.stat().st_size, str(path)


@contextlib.contextmanager
def _output(path: Path | None, default: BinaryIO | None) -> Iterator[BinaryIO | None]:
    if path is None:
        yield default
        return
    with path.open("wb") as handle:
        yield handle


def _replay(args: argparse.Namespace) -> int:
    rules = load_rules(args.rules)
    as_of = None
    if args.as_of is not None:
        try:
            as_of = parse_rfc3339(args.as_of)
        except ValueError as exc:
            raise SystemExit(f"segment-worker: --as-of: {exc}") from None
    limits = ParseLimits(max_bytes=args.max_bytes, max_future_ms=int(args.future_skew * 1000))
    events, size, name = _open_events(args)
    with (
        events,
        _output(args.out, sys.stdout.buffer) as out,
        _output(args.rejects, None) as rejects,
    ):
        assert out is not None

        def on_change(change: SegmentChange) -> None:
            out.write(change.to_json() + b"\n")

        def on_reject(line_no: int, rejection: Rejection, raw: bytes) -> None:
            if rejects is not None:
                record = dead_letter(rejection, raw, {"file": name, "line": line_no}, "parse")
                rejects.write(orjson.dumps(record) + b"\n")

        replayer = Replayer(
            rules,
            on_change,
            on_reject,
            limits=limits,
            future_reference_ms=int(time.time() * 1000),
        )
        progress = None if args.quiet else Progress(size, "replay")
        done = 0
        for line_no, line in enumerate(events, start=1):
            done += len(line)
            raw = line.rstrip(b"\r\n")
            if raw.strip():
                replayer.feed(raw, line_no)
            if progress is not None and line_no % 4096 == 0:
                progress.update(done, line_no)
        if as_of is not None:
            replayer.advance(as_of)
        if progress is not None:
            progress.close()
        if args.state_out is not None:
            _write_states(replayer, rules, args.state_out)
    summary = replayer.summary
    if not args.quiet:
        reasons = ", ".join(f"{r}={n}" for r, n in sorted(summary.rejected.items()))
        print(
            f"replay: {summary.lines:,} lines, {summary.applied:,} applied, "
            f"{summary.rejected_total:,} rejected{' (' + reasons + ')' if reasons else ''}, "
            f"{len(replayer.states):,} customers, {summary.changes:,} segment changes",
            file=sys.stderr,
        )
    return 0


def _write_states(replayer: Replayer, rules: Rules, path: Path) -> None:
    day = day_of(replayer.clock_ms) if replayer.clock_ms is not None else 0
    with path.open("wb") as handle:
        for customer_id in sorted(replayer.states):
            record = describe(replayer.states[customer_id], rules, day)
            handle.write(orjson.dumps(record) + b"\n")


def _rules_check(args: argparse.Namespace) -> int:
    rules = load_rules(args.file)
    print(f"{rules.source}: OK, version {rules.version}")
    currency = rules.base_currency
    rates = ", ".join(f"{c}={r}" for c, r in rules.rates.items()) or "none"
    print(f"  orders count when: {'paid' if rules.counting == 2 else 'placed or paid'}")
    windows = ", ".join(f"{w}d" for w in rules.windows)
    print(f"  windows: {windows}; currency {currency}; rates {rates}")
    for score in rules.scores:
        direction = "higher" if score.higher_is_better else "lower"
        cuts = list(score.cuts)
        print(f"  score {score.name}_score: {score.feature}, cuts {cuts}, {direction} is better")
    for dim in rules.dimensions:
        applies = f"  (applies when {dim.applies})" if dim.applies else ""
        print(f"  dimension {dim.name}{applies}")
        for cls in dim.classes:
            print(f"    {cls.name:<20} {cls.when or '(otherwise)'}")
    if args.features:
        print("  features:")
        described = {**INVARIANT, **DAYS_SINCE}
        for name, kind in feature_kinds(rules.windows, rules.scores).items():
            print(f"    {name:<26} {kind.value:<11} {described.get(name, '')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
