"""The paced latency runs of `bench live` and bench/latency.py: simulated traffic sent at a
fixed rate, each change timed back to the event that caused it, for the worker and for a
broker-only relay beside it, after a warm-up."""

from __future__ import annotations

import asyncio
import contextlib
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Sequence
from dataclasses import replace
from itertools import islice

import orjson

from worker import kafka
from worker.kafka import partition_of
from worker.tools.livesetup import (
    PARTITIONS,
    SOURCE,
    Plan,
    Servers,
    Topics,
    inherited_env,
    pin,
    process_cpu_seconds,
    settings_for,
    topics_for,
    until_ready,
    worker_process,
)
from worker.tools.simulate import SimEvent, Simulator


async def latency(servers: Servers, plan: Plan, rate: float, pace: str) -> None:
    """Paced traffic at ``rate``: from each event's send to the arrival of the change it
    caused on the output topic; the same for the broker-only relay baseline, side by side.
    Events sent during the warm-up are timed apart."""
    simulator = Simulator(plan.seed + 1, plan.customers, plan.start_ms)
    seconds = plan.latency_warmup + plan.latency_seconds
    traffic = list(islice(simulator, int(rate * seconds)))
    clock_ms = max(e.delivered_ms for e in traffic) + 60_000
    rows = []
    for name, is_worker in (("broker only (relay baseline)", False), ("segment-worker", True)):
        topics = await topics_for(servers)
        group = f"lat-{uuid.uuid4().hex[:6]}"
        settings = settings_for(servers, topics, group, plan.rules)
        if plan.batch_linger_ms is not None:
            settings = replace(settings, batch_linger_ms=plan.batch_linger_ms)
        # Each gets a process (and a core) of its own, as in production: sharing this event
        # loop with the paced producer and the watcher would time their queueing too.
        if is_worker:
            proc = worker_process(settings, clock_ms)
        else:
            command = [
                sys.executable,
                "-m",
                "worker.tools.baselines.relay",
                servers.bootstrap,
                settings.group_id,
                str(settings.batch_wait_ms),
                "idempotent" if servers.idempotent else "plain",
                topics.changes,
                topics.orders,
                topics.visits,
            ]
            proc = subprocess.Popen(
                command, env=inherited_env(), stdout=subprocess.PIPE, cwd=SOURCE
            )
        if plan.path_cpu is not None:
            pin(proc.pid, plan.path_cpu)
        try:
            if is_worker:
                await until_ready(settings.http_port, proc)
            elif proc.stdout is None or await asyncio.to_thread(proc.stdout.readline) != b"ready\n":
                raise RuntimeError("the relay baseline did not start")
            timed, cpu = await _paced(
                servers.bootstrap, topics, traffic, rate, warmup=plan.latency_warmup, pid=proc.pid
            )
        finally:
            proc.terminate()
            proc.wait(30)
        steady = [ms for sent_s, ms in timed if sent_s >= plan.latency_warmup]
        per_event = "-" if cpu is None else f"{cpu / (plan.latency_seconds * rate) * 1e6:.0f}"
        rows.append(
            (
                name,
                len(steady),
                _p(steady, 50),
                _p(steady, 99),
                _p([ms for _, ms in timed], 99),
                per_event,
            )
        )
    print(
        f"\nevent-to-change latency at {rate:,.0f} events/s ({pace}), "
        f"events sent after a {plan.latency_warmup:g} s warm-up:"
    )
    print(
        f"{'path':<34} {'changes':>9} {'p50 ms':>8} {'p99 ms':>8} {'p99 with warm-up':>17} "
        f"{'CPU us/event':>12}"
    )
    for name, count, p50, p99, cold, per_event in rows:
        print(f"{name:<34} {count:>9,} {p50:>8.1f} {p99:>8.1f} {cold:>17.1f} {per_event:>12}")
    print(
        f"segment-worker p99 - broker-only p99: {rows[1][3] - rows[0][3]:+.1f} ms "
        f"(with the warm-up: {rows[1][4] - rows[0][4]:+.1f} ms)"
    )


def _p(latencies: list[float], percentile: int) -> float:
    if len(latencies) < 2:
        return latencies[0] if latencies else 0.0
    return statistics.quantiles(latencies, n=100)[percentile - 1]


async def _paced(
    bootstrap: str,
    topics: Topics,
    traffic: Sequence[SimEvent],
    rate: float,
    *,
    warmup: float,
    pid: int,
) -> tuple[list[tuple[float, float]], float | None]:
    """Send ``traffic`` at ``rate`` and time each change back to the event that caused it:
    (seconds into the run the event was sent, milliseconds until its change arrived); and
    the CPU seconds process ``pid`` spent while the events after the warm-up were sent."""
    sent: dict[str, float] = {}
    timed: list[tuple[float, float]] = []
    watcher = kafka.consumer(
        bootstrap,
        topics.changes,
        auto_offset_reset="earliest",
        fetch_max_wait_ms=10,
    )
    await watcher.start()
    begin = 0.0

    async def watch() -> None:
        while True:
            batch = await watcher.getmany(timeout_ms=50)
            now = time.perf_counter()
            for messages in batch.values():
                for m in messages:
                    cause = orjson.loads(m.value or b"")["cause"]["event_id"]
                    if cause in sent:
                        at = sent.pop(cause)
                        timed.append((at - begin, (now - at) * 1000))

    watching = asyncio.create_task(watch())
    producer = kafka.producer(bootstrap, linger_ms=1, acks=1)
    await producer.start()
    try:
        await asyncio.sleep(2.0)  # the consumer group settles
        begin = time.perf_counter()
        warm = int(warmup * rate)
        cpu: float | None = None
        for n, e in enumerate(traffic):
            if n == warm:
                cpu = process_cpu_seconds(pid)
            due = begin + n / rate
            delay = due - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            topic = topics.orders if e.topic == "orders" else topics.visits
            sent[orjson.loads(e.value)["event_id"]] = time.perf_counter()
            await producer.send(
                topic, e.value, key=e.key, partition=partition_of(e.key.decode(), PARTITIONS)
            )
        end = process_cpu_seconds(pid)
        cpu = None if cpu is None or end is None else end - cpu
        await asyncio.sleep(3.0)
    finally:
        watching.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watching
        await producer.stop()
        await watcher.stop()
    return timed, cpu
