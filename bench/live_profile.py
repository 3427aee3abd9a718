"""Where a live worker's CPU per event goes, end to end, from a sampling profile.

    python bench/live_profile.py [--events 60000] [--customers 10000] [--broker kafka]
    cd /tmp/old && PYTHONPATH=. python bench/live_profile.py   # an old commit, same traffic

(From the old tree's directory: before `bench live` ran its children from the package's own
directory, a worker child started inside another checkout imported that checkout's code.)

Produces simulated traffic to a fresh broker (as `segment-worker bench live` does), starts one
`segment-worker run` process once it owns its partitions, and samples it with py-spy (`pip
install py-spy`) while it drains the backlog. Each sample goes to the category of its innermost
frame that names one (parse, codec, core, Redis, Kafka, metrics, pipeline; anything else,
mostly asyncio's loop and socket writes, is "loop, other"), and the shares are scaled to the
process's CPU per event read from /proc over the same span: py-spy counts a thread waiting for
a core as busy, so its shares are kept and its totals are not.
"""

from __future__ import annotations

import argparse
import asyncio
import subprocess
import tempfile
import time
from collections import Counter
from itertools import islice
from pathlib import Path

from worker.core.timeutil import parse_rfc3339
from worker.tools import livesetup
from worker.tools.apache_kafka import BROKERS, chosen_broker
from worker.tools.embedded import RedisServer
from worker.tools.simulate import Simulator

START = parse_rfc3339("2025-01-01T00:00:00Z")  # `bench live`'s default shop opening

# Innermost match wins; the order settles frames that match twice (worker/core/codec.py).
CATEGORIES = (
    ("parse", ("worker/core/events.py", "worker/core/documents.py", "orjson", "msgspec")),
    ("codec", ("worker/core/codec.py", "worker/core/packing.py", "worker/core/old_formats.py")),
    ("core", ("worker/core/",)),
    ("Redis", ("redis/", "hiredis", "worker/store.py", "worker/redis/")),
    ("Kafka", ("aiokafka",)),
    ("metrics", ("prometheus_client", "worker/metrics.py")),
    ("pipeline", ("worker/live/",)),
)
OTHER = "loop, other"


def category(stack: str) -> str:
    """The category of a py-spy raw stack (frames outermost first, ``;``-separated)."""
    for frame in reversed(stack.split(";")):
        for name, marks in CATEGORIES:
            if any(mark in frame for mark in marks):
                return name
    return OTHER


def cpu_seconds(pid: int) -> float:
    """User + system CPU of a process so far."""
    spent = livesetup.process_cpu_seconds(pid)
    if spent is None:
        raise SystemExit("live_profile: needs Linux's /proc to read the worker's CPU time")
    return spent


async def profile(events: int, customers: int, broker_name: str, out: Path) -> tuple[int, float]:
    """Events drained and the worker's CPU seconds over them; samples written to ``out``."""
    traffic = list(islice(Simulator(1, customers, START), events))
    clock_ms = max(e.delivered_ms for e in traffic) + 60_000
    with chosen_broker(broker_name) as broker, RedisServer() as redis_server:
        servers = livesetup.Servers(broker.bootstrap, redis_server.url, broker.idempotent)
        topics = await livesetup.topics_for(servers)
        ends = await livesetup.produce(servers.bootstrap, topics, traffic)
        settings = livesetup.settings_for(servers, topics, "profiled", None)
        worker = livesetup.worker_process(settings, clock_ms)
        spy: subprocess.Popen[bytes] | None = None
        try:
            await livesetup.until_ready(settings.http_port, worker)
            command = ["py-spy", "record", "--nonblocking", "-r", "250", "--format", "raw"]
            spy = subprocess.Popen(
                [*command, "-o", str(out), "--pid", str(worker.pid)],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            before = cpu_seconds(worker.pid)
            await livesetup.until_committed(servers.bootstrap, "profiled", ends)
            spent = cpu_seconds(worker.pid) - before
        finally:
            if spy is not None:
                spy.send_signal(2)  # py-spy writes its samples on SIGINT
                spy.wait(30)
            worker.terminate()
            worker.wait(30)
    return sum(ends.values()), spent


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--events", type=int, default=60_000)
    parser.add_argument("--customers", type=int, default=10_000)
    parser.add_argument("--broker", choices=BROKERS, default="kafka")
    parser.add_argument("--samples", type=Path, help="keep py-spy's raw samples here")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="segment-worker-profile-") as tmp:
        out = Path(tmp) / "samples.txt"
        started = time.perf_counter()
        events, spent = asyncio.run(profile(args.events, args.customers, args.broker, out))
        samples: Counter[str] = Counter()
        for line in out.read_text().splitlines():
            stack, _, count = line.rpartition(" ")
            samples[category(stack)] += int(count)
        if args.samples:
            args.samples.write_bytes(out.read_bytes())
    total = sum(samples.values()) or 1
    per_event = spent / events * 1e6
    took = time.perf_counter() - started
    print(f"{events:,} events, worker CPU {per_event:.1f} us/event ({took:.0f} s in all)")
    for name in [name for name, _ in CATEGORIES] + [OTHER]:
        share = samples[name] / total
        print(f"{name:<12} {share * per_event:>6.1f} us  {share:>6.1%}")


if __name__ == "__main__":
    main()
