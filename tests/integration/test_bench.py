"""The benchmark commands run end to end and print every row they promise (small sizes: this
checks that the bench works, not how fast anything is)."""

from __future__ import annotations

import os
import re
import subprocess
import sys


def bench(*args: str, timeout: float) -> str:
    proc = subprocess.run(
        [sys.executable, "-m", "worker", "bench", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


def test_core_bench_prints_the_core_beside_its_parse_baseline() -> None:
    out = bench("--events", "3000", "--customers", "200", timeout=120)
    rows = {line.split("  ")[0]: line for line in out.splitlines()}
    assert "parse only (baseline)" in rows
    assert "core: parse+apply+classify+due" in rows
    assert re.search(r"core: parse\+apply\+classify\+due\s+3,000\s", out)


def test_live_bench_prints_throughput_latency_and_memory() -> None:
    out = bench(
        "live",
        "--events",
        "3000",
        "--customers",
        "300",
        "--memory-customers",
        "150",
        "--latency-seconds",
        "4",
        timeout=400,
    )
    for row in ("raw ceiling", "segment-worker (end to end)", "plain Faust agent"):
        line = next(line for line in out.splitlines() if line.startswith(row))
        assert re.search(r"\s3,000\s", line), line
    if (os.cpu_count() or 1) > 1:  # scaled out, one process per core
        assert re.search(r"^segment-worker, [0-9] processes\s+[0-9,]+\s", out, re.MULTILINE)
    assert re.search(r"segment-worker vs plain Faust agent: [0-9.]+x", out)
    latency = out.split("event-to-change latency", 1)[1]
    for row in ("broker only (relay baseline)", "segment-worker "):
        line = next(line for line in latency.splitlines() if line.startswith(row))
        count, p50, p99 = line[len(row) :].split()
        assert int(count.replace(",", "")) > 0 and 0 < float(p50) <= float(p99), line
    assert re.search(r"Redis memory: [0-9,]+ bytes per customer at 150 customers", out)
