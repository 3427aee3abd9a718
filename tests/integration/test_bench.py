"""The benchmark commands run end to end and print every row they promise (small sizes: this
checks that the bench works, not how fast anything is)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from worker.core.rules import default_rules_text, load_rules
from worker.tools.kafka_jars import kafka_version
from worker.tools.servers import free_port


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


@pytest.mark.parametrize(
    ("broker", "named", "pacing", "paced"),
    [
        ("tansu", "Tansu, embedded (acks=all; no idempotent producers)", [], "half the measured"),
        (
            "kafka",
            f"Apache Kafka {kafka_version()}, 1 node (idempotent producer, acks=all)",
            ["--latency-rate", "500"],
            "500 events/s (as asked)",
        ),
    ],
)
def test_live_bench_prints_throughput_latency_and_memory(
    tmp_path: Path, broker: str, named: str, pacing: list[str], paced: str
) -> None:
    rules = tmp_path / "rules.toml"
    rules.write_bytes(default_rules_text().replace(b"windows = [90]", b"windows = [30, 90]"))
    out = bench(
        "live",
        "--broker",
        broker,
        "--rules",
        str(rules),
        "--events",
        "3000",
        "--customers",
        "300",
        "--memory-customers",
        "150",
        "--latency-seconds",
        "4",
        "--latency-warmup",
        "1",
        *pacing,
        timeout=400,
    )
    assert f"rules: {rules}, version {load_rules(rules).version}" in out
    assert f"broker: {named}\n" in out
    for row in ("raw ceiling", "segment-worker (end to end)", "plain Faust agent"):
        line = next(line for line in out.splitlines() if line.startswith(row))
        assert re.search(r"\s3,000\s", line), line
    if (os.cpu_count() or 1) > 1:  # scaled out, one process per core
        assert re.search(r"^segment-worker, [0-9] processes\s+[0-9,]+\s", out, re.MULTILINE)
    assert re.search(r"segment-worker vs plain Faust agent: [0-9.]+x", out)
    latency = out.split("event-to-change latency", 1)[1]
    assert paced in latency.splitlines()[0]
    assert "after a 1 s warm-up" in latency.splitlines()[0]
    for row in ("broker only (relay baseline)", "segment-worker "):
        line = next(line for line in latency.splitlines() if line.startswith(row))
        count, p50, p99, with_warmup, cpu = line[len(row) :].split()
        assert int(count.replace(",", "")) > 0 and 0 < float(p50) <= float(p99), line
        assert float(with_warmup) > 0 and int(cpu) > 0, line
    assert re.search(
        r"p99 - broker-only p99: [-+][0-9.]+ ms \(with the warm-up: [-+][0-9.]+ ms\)", out
    )
    assert re.search(r"Redis memory: [0-9,]+ bytes per customer at 150 customers", out)


def test_live_bench_refuses_a_bad_rules_file_before_starting_anything(tmp_path: Path) -> None:
    rules = tmp_path / "rules.toml"
    rules.write_text("[orders]\nwindows = []\n")
    proc = subprocess.run(
        [sys.executable, "-m", "worker", "bench", "live", "--rules", str(rules)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 2
    assert "orders.windows" in proc.stderr


def test_the_faust_baseline_removes_its_data_directory(tmp_path: Path) -> None:
    """bench live runs it once a run; it used to leave a /tmp/sw-faust-* behind every time.
    No broker listens here, so it ends at once, on an error: the directory goes all the same."""
    nowhere = f"127.0.0.1:{free_port()}"
    agent = [sys.executable, "-m", "worker.tools.baselines.faust_agent"]
    subprocess.run(
        [*agent, nowhere, f"redis://{nowhere}/0", "g", "orders"],
        env={**os.environ, "TMPDIR": str(tmp_path)},
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert list(tmp_path.glob("sw-faust-*")) == []
