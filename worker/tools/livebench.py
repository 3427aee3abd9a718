"""`segment-worker bench live`: the worker end to end against two baselines in the same run,
on a broker of its own (Tansu, embedded, or the pinned Apache Kafka) and a local Redis, plus
latency at half and at a tenth of its capacity and Redis memory per customer. On Apache Kafka
every producer of the worker and of the relay baseline is idempotent with acks=all, as
deployed; on Tansu, which has no idempotent producers, acks=all alone.

- raw ceiling: aiokafka getmany + orjson + one Lua call per batch of up to 1,000 events that
  bumps a counter per customer; no classification, no output;
- segment-worker: the real worker, from assignment until every offset is committed (which it
  does only after the changes are in Kafka);
- plain Faust agent: a Faust agent doing per-event work (parse, one Redis update per event).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, replace
from itertools import islice
from pathlib import Path
from typing import cast

import orjson
import redis.asyncio as aioredis
from aiokafka import TopicPartition

from worker import kafka
from worker.clock import SimulatedClock
from worker.core.rules import load_rules
from worker.kafka_topics import ensure_topics
from worker.keys import offset_topic
from worker.service import Worker
from worker.store import Store
from worker.tools.apache_kafka import ApacheKafka, chosen_broker
from worker.tools.embedded import Broker, RedisServer
from worker.tools.kafka_jars import kafka_version
from worker.tools.livesetup import (
    PARTITIONS,
    SOURCE,
    Plan,
    Servers,
    Topics,
    produce,
    settings_for,
    topics_for,
    until_committed,
    until_ready,
    worker_process,
)
from worker.tools.memorybench import memory
from worker.tools.pacedbench import latency
from worker.tools.simulate import Simulator

RAW_LUA = """
for i = 1, #KEYS do redis.call('HINCRBY', KEYS[i], 'n', 1) end
return #KEYS
"""


@dataclass(frozen=True)
class Row:
    name: str
    events: int
    seconds: float
    cpu_seconds: float | None = None  # of this process: steadier than wall time on a shared box

    @property
    def rate(self) -> float:
        return self.events / self.seconds if self.seconds else 0.0


async def bench_live(plan: Plan) -> None:
    rules = load_rules(plan.rules)
    print(f"rules: {rules.source}, version {rules.version}")
    traffic = list(islice(Simulator(plan.seed, plan.customers, plan.start_ms), plan.events))
    end_ms = max(e.delivered_ms for e in traffic) + 60_000
    with chosen_broker(plan.broker) as broker, RedisServer() as redis_server:
        print(f"broker: {_describe(broker)}")
        servers = Servers(broker.bootstrap, redis_server.url, broker.idempotent)
        topics = await topics_for(servers)
        print(
            f"producing {len(traffic):,} events for {plan.customers:,} customers ...",
            file=sys.stderr,
        )
        ends = await produce(servers.bootstrap, topics, traffic)
        rows = [
            await _raw_ceiling(servers, topics, ends),
            await _worker(servers, topics, ends, end_ms, rules=plan.rules),
        ]
        processes = min(os.cpu_count() or 1, PARTITIONS)
        if processes > 1:
            rows.append(
                await _processes(
                    servers,
                    topics,
                    ends,
                    end_ms,
                    count=processes,
                    rules=plan.rules,
                )
            )
        rows.append(await _faust(servers, topics, ends))
        raw = rows[0].rate
        print(
            f"\n{'path':<34} {'events':>9} {'seconds':>8} {'events/s':>9} {'x raw':>6} "
            f"{'CPU us/event':>12}"
        )
        for row in rows:
            cpu = "-" if row.cpu_seconds is None else f"{row.cpu_seconds / row.events * 1e6:.1f}"
            print(
                f"{row.name:<34} {row.events:>9,} {row.seconds:>8.2f} {row.rate:>9,.0f} "
                f"{row.rate / raw if raw else 0:>6.2f} {cpu:>12}"
            )
        worker_rate = rows[1].rate
        print(f"segment-worker vs plain Faust agent: {worker_rate / rows[-1].rate:.1f}x")
        # Half the capacity is where batches are small enough to cost most per event; a tenth
        # is where the worker should add nothing the broker does not (goal: p99 within 30 ms).
        shares = [("as asked", plan.latency_rate)] if plan.latency_rate else []
        for pace, rate in shares or [
            ("half the measured capacity", worker_rate / 2),
            ("a tenth of the measured capacity", worker_rate / 10),
        ]:
            await latency(servers, plan, rate, pace)
    await memory(plan, rules)


def _describe(broker: ApacheKafka | Broker) -> str:
    """Which broker the figures are from, and how the worker writes to it."""
    if isinstance(broker, ApacheKafka):
        return f"Apache Kafka {kafka_version()}, 1 node (idempotent producer, acks=all)"
    return "Tansu, embedded (acks=all; no idempotent producers)"


async def _raw_ceiling(servers: Servers, topics: Topics, ends: dict[TopicPartition, int]) -> Row:
    client = aioredis.from_url(servers.redis_url)
    script = client.register_script(RAW_LUA)
    consumer = kafka.consumer(
        servers.bootstrap,
        topics.orders,
        topics.visits,
        group_id=f"raw-{uuid.uuid4().hex[:6]}",
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        session_timeout_ms=6000,
        heartbeat_interval_ms=500,
    )
    await consumer.start()
    total, done, started, cpu = sum(ends.values()), 0, 0.0, 0.0
    try:
        while done < total:
            batch = await consumer.getmany(timeout_ms=100, max_records=1000)
            keys = []
            for messages in batch.values():
                for m in messages:
                    if not started:
                        started, cpu = time.perf_counter(), time.process_time()
                    with contextlib.suppress(orjson.JSONDecodeError):
                        doc = orjson.loads(m.value or b"")
                        if isinstance(doc, dict) and isinstance(doc.get("customer_id"), str):
                            keys.append(f"raw:c:{doc['customer_id']}")
                    done += 1
            if keys:
                await script(keys=keys)
            if batch:
                await consumer.commit()
        return Row(
            "raw ceiling (getmany+orjson+Lua)",
            total,
            time.perf_counter() - started,
            time.process_time() - cpu,
        )
    finally:
        await consumer.stop()
        await client.aclose()


async def _worker(
    servers: Servers,
    topics: Topics,
    ends: dict[TopicPartition, int],
    clock_ms: int,
    *,
    rules: Path | None,
) -> Row:
    settings = settings_for(servers, topics, f"worker-{uuid.uuid4().hex[:6]}", rules)
    worker = Worker(settings, SimulatedClock(clock_ms, 1.0))
    task = asyncio.create_task(worker.run())
    try:
        while not worker.pipeline.owned_partitions():
            await asyncio.sleep(0.02)
        started, cpu = time.perf_counter(), time.process_time()
        await until_committed(servers.bootstrap, settings.group_id, ends)
        return Row(
            "segment-worker (end to end)",
            sum(ends.values()),
            time.perf_counter() - started,
            time.process_time() - cpu,
        )
    finally:
        worker.stop()
        await task


async def _processes(
    servers: Servers,
    topics: Topics,
    ends: dict[TopicPartition, int],
    clock_ms: int,
    *,
    count: int,
    rules: Path | None,
) -> Row:
    """The worker scaled out as deployed: ``count`` `segment-worker run` processes in one
    group (one per core), with a change topic of their own. Timed from when
    every process owns partitions to the last offset committed, over the events not yet
    applied in Redis then (the group's offsets trail by up to a second)."""
    tag = uuid.uuid4().hex[:6]
    own = replace(topics, changes=f"changes-{tag}", dlq=f"dlq-{tag}")
    await ensure_topics(settings_for(servers, own, "unused"), PARTITIONS)
    group = f"workers-{tag}"
    started: list[tuple[int, subprocess.Popen[bytes]]] = []
    probe = kafka.consumer(servers.bootstrap, group_id=group, enable_auto_commit=False)
    await probe.start()
    client = aioredis.from_url(servers.redis_url)
    store = Store(client, group)

    async def applied() -> int:
        metas = [await client.hgetall(store.keys.meta(p)) for p in range(PARTITIONS)]
        offsets = cast(list[dict[bytes, bytes]], metas)
        return sum(
            int(v) for meta in offsets for k, v in meta.items() if offset_topic(k) is not None
        )

    try:
        for _ in range(count):
            settings = settings_for(servers, own, group, rules)
            started.append((settings.http_port, worker_process(settings, clock_ms)))
        for port, proc in started:  # ready: it owns partitions, so the group has settled
            await until_ready(port, proc)
        begin = time.perf_counter()
        first = await applied()
        while True:
            committed = {tp: (await probe.committed(tp)) or 0 for tp in ends}
            if all(committed[tp] >= end for tp, end in ends.items()):
                break
            await asyncio.sleep(0.05)
        seconds = time.perf_counter() - begin
    finally:
        await probe.stop()
        await client.aclose()
        for _, proc in started:
            proc.terminate()
        for _, proc in started:
            proc.wait(30)
    return Row(f"segment-worker, {count} processes", sum(ends.values()) - first, seconds)


async def _faust(servers: Servers, topics: Topics, ends: dict[TopicPartition, int]) -> Row:
    client = aioredis.from_url(servers.redis_url)
    total = sum(ends.values())
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "worker.tools.baselines.faust_agent",
            servers.bootstrap,
            servers.redis_url,
            f"faust-{uuid.uuid4().hex[:6]}",
            topics.orders,
            topics.visits,
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        cwd=SOURCE,
    )
    try:
        started = 0.0
        while True:
            seen = int(await client.get("faust:events") or 0)
            if seen and not started:
                started = time.perf_counter()
            if seen >= total:
                return Row("plain Faust agent (per event)", total, time.perf_counter() - started)
            if proc.poll() is not None:
                raise RuntimeError("the Faust baseline exited early")
            await asyncio.sleep(0.05)
    finally:
        proc.terminate()
        proc.wait(30)
        await client.aclose()


def run(plan: Plan) -> None:
    asyncio.run(bench_live(plan))
