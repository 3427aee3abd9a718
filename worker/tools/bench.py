"""Benchmarks that print a table: the measured path side by side with a baseline from the same
run, because a shared 2-core machine is too noisy for absolute numbers to mean much alone."""

from __future__ import annotations

import resource
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from itertools import islice
from pathlib import Path

from worker.core.events import ParseLimits, parse_event
from worker.core.rules import Rules
from worker.progress import Progress
from worker.replay import Replayer
from worker.tools.simulate import FeedFaults, Simulator


@dataclass(frozen=True, slots=True)
class Result:
    name: str
    events: int
    seconds: float
    latencies_ns: list[int]

    @property
    def rate(self) -> float:
        return self.events / self.seconds if self.seconds else 0.0

    def percentile(self, q: float) -> float:
        """Microseconds at quantile ``q`` of the sampled per-event latencies."""
        ordered = sorted(self.latencies_ns)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] / 1000 if ordered else 0.0


def write_events(path: Path, seed: int, customers: int, events: int, start_ms: int) -> None:
    """Simulated traffic as replay lines, realistic feed faults included."""
    simulator = Simulator(seed, customers, start_ms, faults=FeedFaults.realistic())
    progress = Progress(events, "generate")
    with path.open("wb") as out:
        for n, event in enumerate(islice(simulator, events), start=1):
            out.write(event.jsonl() + b"\n")
            if n % 8192 == 0:
                progress.update(n, n)
    progress.close()


def _lines(path: Path) -> Iterator[bytes]:
    with path.open("rb") as handle:
        for line in handle:
            yield line.rstrip(b"\n")


def _timed(name: str, lines: Iterable[bytes], step: Callable[[bytes, int], None]) -> Result:
    """Run ``step`` over every line; every 64th call is timed on its own for percentiles."""
    samples: list[int] = []
    clock = time.perf_counter_ns
    started = clock()
    count = 0
    for count, raw in enumerate(lines, start=1):
        if count & 63:
            step(raw, count)
        else:
            t = clock()
            step(raw, count)
            samples.append(clock() - t)
    return Result(name, count, (clock() - started) / 1e9, samples)


def bench_core(path: Path, rules: Rules, now_ms: int) -> list[Result]:
    """Parse only (the floor any runner pays) against the full core as replay runs it."""
    limits = ParseLimits()

    def parse(raw: bytes, _: int) -> None:
        parse_event(raw, None, now_ms=now_ms, limits=limits)

    changes = 0

    def count_change(change: object) -> None:
        nonlocal changes
        changes += 1

    replayer = Replayer(
        rules, count_change, lambda *_: None, limits=limits, future_reference_ms=now_ms
    )
    baseline = _timed("parse only (baseline)", _lines(path), parse)
    full = _timed("core: parse+apply+classify+due", _lines(path), replayer.feed)
    print(
        f"{len(replayer.states):,} customers, {changes:,} segment changes, "
        f"{replayer.summary.rejected_total:,} rejected",
        file=sys.stderr,
    )
    return [baseline, full]


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def print_table(results: list[Result]) -> None:
    header = f"{'path':<34} {'events':>10} {'seconds':>8} {'events/s':>10} "
    print(header + f"{'p50 us':>8} {'p99 us':>8} {'p99.9 us':>9}")
    for r in results:
        print(
            f"{r.name:<34} {r.events:>10,} {r.seconds:>8.2f} {r.rate:>10,.0f} "
            f"{r.percentile(0.5):>8.1f} {r.percentile(0.99):>8.1f} {r.percentile(0.999):>9.1f}"
        )
    print(f"peak RSS of the process: {peak_rss_mb():,.0f} MB")
