"""What the live benchmarks (`bench live`, its paced latency runs, bench/live_profile.py)
set up alike: the plan of a run, its broker, Redis and topics, the simulated traffic produced
to them, and the worker as a child process with the settings of the run."""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Final

from aiohttp import ClientError, ClientSession
from aiokafka import TopicPartition

from worker import kafka
from worker.core.timeutil import format_ms
from worker.kafka import partition_of
from worker.kafka_topics import ensure_topics
from worker.progress import Progress
from worker.settings import Settings
from worker.tools.servers import free_port
from worker.tools.simulate import SimEvent

PARTITIONS = 4


@dataclass(frozen=True)
class Plan:
    """What a `bench live` run measures: the traffic and the rules the worker runs."""

    events: int
    customers: int
    memory_customers: int
    seed: int
    latency_seconds: float
    start_ms: int  # the simulated shop's opening
    rules: Path | None  # None: the built-in defaults
    broker: str = "tansu"  # or "kafka": the pinned Apache Kafka, one node
    latency_rate: float | None = None  # None: half the worker's measured capacity
    # Sent at the rate before the timed part: the first seconds bring every customer's first
    # event (a change in each dimension) to cold caches and are not the steady state.
    latency_warmup: float = 3.0
    batch_linger_ms: int | None = None  # None: the worker's default
    # The CPU the timed path (the worker, or the relay baseline) runs on alone, as it would on
    # a machine of its own; the caller keeps everything else off it (keep_off). None: shared.
    path_cpu: int | None = None


@dataclass(frozen=True)
class Servers:
    """The broker and Redis a run uses, and whether the broker takes idempotent producers."""

    bootstrap: str
    redis_url: str
    idempotent: bool


@dataclass(frozen=True)
class Topics:
    orders: str
    visits: str
    changes: str
    dlq: str


async def topics_for(servers: Servers) -> Topics:
    tag = uuid.uuid4().hex[:6]
    topics = Topics(f"orders-{tag}", f"visits-{tag}", f"changes-{tag}", f"dlq-{tag}")
    await ensure_topics(settings_for(servers, topics, "unused"), PARTITIONS)
    return topics


async def produce(
    bootstrap: str, topics: Topics, traffic: Sequence[SimEvent]
) -> dict[TopicPartition, int]:
    producer = kafka.producer(bootstrap, linger_ms=20, acks=1)
    await producer.start()
    ends: dict[TopicPartition, int] = {}
    progress = Progress(len(traffic), "produce")
    try:
        pending = []
        for n, e in enumerate(traffic, start=1):
            topic = topics.orders if e.topic == "orders" else topics.visits
            partition = partition_of(e.key.decode(), PARTITIONS)
            pending.append(await producer.send(topic, e.value, key=e.key, partition=partition))
            if n % 5000 == 0:
                progress.update(n, n)
        for meta in await asyncio.gather(*pending):
            tp = TopicPartition(meta.topic, meta.partition)
            ends[tp] = max(ends.get(tp, 0), meta.offset + 1)
    finally:
        progress.close()
        await producer.stop()
    return ends


def settings_for(
    servers: Servers, topics: Topics, group: str, rules: Path | None = None
) -> Settings:
    return replace(
        Settings(),
        rules=rules,
        kafka_bootstrap=servers.bootstrap,
        redis_url=servers.redis_url,
        http_port=free_port(),
        kafka_idempotence=servers.idempotent,
        session_timeout_ms=6000,
        heartbeat_interval_ms=500,
        rebalance_timeout_ms=5000,
        topic_orders=topics.orders,
        topic_visits=topics.visits,
        topic_changes=topics.changes,
        topic_dlq=topics.dlq,
        topic_erasures=f"{topics.dlq}-erasures",
        topic_classes=f"{topics.dlq}-classes",
        topic_profiles=f"{topics.dlq}-profiles",
        group_id=group,
        redis_prefix=group,  # each run starts from an empty Redis: no states, no due timers
    )


async def until_committed(bootstrap: str, group: str, ends: dict[TopicPartition, int]) -> None:
    """Wait until ``group`` has committed every partition up to its end offset in ``ends``."""
    probe = kafka.consumer(bootstrap, group_id=group, enable_auto_commit=False)
    await probe.start()
    try:
        while True:
            committed = {tp: (await probe.committed(tp)) or 0 for tp in ends}
            if all(committed[tp] >= end for tp, end in ends.items()):
                return
            await asyncio.sleep(0.1)
    finally:
        await probe.stop()


# Children run `python -m ...` from the directory holding this `worker` package: `-m` puts the
# working directory first on sys.path, so from inside another checkout a child would import
# that checkout's code, not the code under test (old/new comparisons with PYTHONPATH).
SOURCE: Final = Path(__file__).resolve().parents[2]


def inherited_env() -> dict[str, str]:
    """This process's environment for a child, without the settings it may carry: each
    child's settings are its own."""
    return {k: v for k, v in os.environ.items() if not k.startswith("SEGMENT_WORKER_")}


def worker_process(settings: Settings, clock_ms: int) -> subprocess.Popen[bytes]:
    """`segment-worker run` in a child process of its own, with ``settings`` and a clock that
    starts at ``clock_ms`` and runs at wall-clock speed."""
    env = (
        inherited_env()
        | settings.to_env()
        | {
            "SEGMENT_WORKER_CLOCK_START": format_ms(clock_ms),
            "SEGMENT_WORKER_CLOCK_SPEED": "1",
        }
    )
    command = [sys.executable, "-m", "worker", "run", "--log-level", "WARNING"]
    return subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, cwd=SOURCE)


async def until_ready(port: int, proc: subprocess.Popen[bytes], timeout: float = 60) -> None:
    """Until the worker's /readyz answers 200 (it owns partitions and Redis answers)."""
    deadline = time.monotonic() + timeout
    async with ClientSession(f"http://127.0.0.1:{port}") as http:
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"the worker exited early ({proc.returncode})")
            with contextlib.suppress(OSError, ClientError):
                async with http.get("/readyz") as resp:
                    if resp.status == 200:
                        return
            if time.monotonic() > deadline:
                raise RuntimeError("the worker did not become ready")
            await asyncio.sleep(0.1)


def keep_off(cpu: int) -> None:
    """Keep this process, and the children it starts from now on (broker, Redis, the
    traffic's producer), off ``cpu``: on a machine of two cores, the timed path and the rest
    of the run otherwise take turns on both, and its latency times that contention too."""
    cpus = os.sched_getaffinity(0)
    if cpu not in cpus or len(cpus) < 2:
        raise ValueError(f"CPU {cpu} is not one of this process's {sorted(cpus)}, or the only one")
    os.sched_setaffinity(0, cpus - {cpu})


def pin(pid: int, cpu: int) -> None:
    """Run process ``pid`` on ``cpu`` only (before it starts threads: they inherit it)."""
    os.sched_setaffinity(pid, {cpu})


def process_cpu_seconds(pid: int) -> float | None:
    """User + system CPU a process has spent so far (None where /proc does not tell)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
