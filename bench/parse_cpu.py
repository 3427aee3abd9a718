"""The parser's and the core's CPU per event, old commit against new (issue 16).

    python bench/parse_cpu.py --file /tmp/events.jsonl [--events 200000] [--customers 20000]
    PYTHONPATH=/tmp/old python bench/parse_cpu.py --file /tmp/events.jsonl

Writes `segment-worker bench core`'s simulated traffic (seed 1, realistic feed faults, the shop
opening on 2025-01-01) to ``--file`` the first time; later runs read it, so two commits (the
second line: an old commit unpacked with ``git archive``) parse the very same lines. Prints CPU
time (``time.process_time``, not wall) per event for parse only (best of ``--rounds``) and for
the core as replay runs it (parse, apply, classify, due day), with a digest of every parse
result: two commits that parse alike print the same digest.
"""

from __future__ import annotations

import argparse
import hashlib
import time
from pathlib import Path

import worker
from worker.core.events import ParseLimits, parse_event
from worker.core.rules import load_rules
from worker.core.timeutil import parse_rfc3339
from worker.replay import Replayer
from worker.tools.bench import write_events

START = parse_rfc3339("2025-01-01T00:00:00Z")  # `bench core`'s default shop opening


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--file", type=Path, required=True)
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--customers", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    if not args.file.exists():
        write_events(args.file, 1, args.customers, args.events, START)
    lines = [line.rstrip(b"\n") for line in args.file.open("rb")]
    now_ms, limits = int(time.time() * 1000), ParseLimits()

    digest = hashlib.sha256()
    for raw in lines:
        digest.update(repr(parse_event(raw, None, now_ms=now_ms, limits=limits)).encode())
    rounds = []
    for _ in range(args.rounds):
        started = time.process_time()
        for raw in lines:
            parse_event(raw, None, now_ms=now_ms, limits=limits)
        rounds.append(time.process_time() - started)

    replayer = Replayer(
        load_rules(None), lambda _: None, lambda *_: None, limits=limits, future_reference_ms=now_ms
    )
    started = time.process_time()
    for n, raw in enumerate(lines, start=1):
        replayer.feed(raw, n)
    core = time.process_time() - started

    per_event = 1e6 / len(lines)
    print(
        f"{Path(worker.__file__).parent.parent}: {len(lines):,} events, CPU per event: "
        f"parse only {min(rounds) * per_event:.2f} us, core {core * per_event:.2f} us; "
        f"results {digest.hexdigest()[:16]}"
    )


if __name__ == "__main__":
    main()
