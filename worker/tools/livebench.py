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
import gc
import os
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, replace
from itertools import islice
from pathlib import Path
from typing import Final, cast

import orjson
import redis.asyncio as aioredis
from aiohttp import ClientError, ClientSession
from aiokafka import TopicPartition

from worker import kafka
from worker.clock import SimulatedClock
from worker.core.codec import decode_state, encode_state
from worker.core.events import ParseLimits
from worker.core.rules import Rules, load_rules
from worker.core.timeutil import format_ms
from worker.kafka import ensure_topics, partition_of
from worker.keys import offset_topic
from worker.progress import Progress
from worker.replay import Replayer
from worker.service import Worker
from worker.settings import Settings
from worker.store import Store
from worker.tools.apache_kafka import ApacheKafka, chosen_broker, kafka_version
from worker.tools.embedded import Broker, RedisServer, free_port
from worker.tools.simulate import SimEvent, Simulator

PARTITIONS = 4
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
            await _latency(servers, plan, rate, pace)
    await _memory(plan, rules)


def _describe(broker: ApacheKafka | Broker) -> str:
    """Which broker the figures are from, and how the worker writes to it."""
    if isinstance(broker, ApacheKafka):
        return f"Apache Kafka {kafka_version()}, 1 node (idempotent producer, acks=all)"
    return "Tansu, embedded (acks=all; no idempotent producers)"


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


# Children run `python -m ...` from the directory holding this `worker` package: `-m` puts the
# working directory first on sys.path, so from inside another checkout a child would import
# that checkout's code, not the code under test (old/new comparisons with PYTHONPATH).
_SOURCE: Final = Path(__file__).resolve().parents[2]


def _inherited_env() -> dict[str, str]:
    """This process's environment for a child, without the settings it may carry: each
    child's settings are its own."""
    return {k: v for k, v in os.environ.items() if not k.startswith("SEGMENT_WORKER_")}


def worker_process(settings: Settings, clock_ms: int) -> subprocess.Popen[bytes]:
    """`segment-worker run` in a child process of its own, with ``settings`` and a clock that
    starts at ``clock_ms`` and runs at wall-clock speed."""
    env = (
        _inherited_env()
        | settings.to_env()
        | {
            "SEGMENT_WORKER_CLOCK_START": format_ms(clock_ms),
            "SEGMENT_WORKER_CLOCK_SPEED": "1",
        }
    )
    command = [sys.executable, "-m", "worker", "run", "--log-level", "WARNING"]
    return subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, cwd=_SOURCE)


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
        cwd=_SOURCE,
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


async def _latency(servers: Servers, plan: Plan, rate: float, pace: str) -> None:
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
                command, env=_inherited_env(), stdout=subprocess.PIPE, cwd=_SOURCE
            )
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


def process_cpu_seconds(pid: int) -> float | None:
    """User + system CPU a process has spent so far (None where /proc does not tell)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


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


async def _memory(plan: Plan, rules: Rules) -> None:
    """Redis bytes per customer: the states and due index the worker writes, for the states
    a replay of simulated traffic builds for ``customers`` customers."""
    customers = plan.memory_customers
    replayer = Replayer(
        rules, lambda _: None, lambda *_: None, limits=ParseLimits(), future_reference_ms=2**62
    )
    # Until every simulated customer has a state (they sign up over half a year), so that
    # the figure is at ``customers`` customers, as the goal is stated.
    progress = Progress(customers, "memory: customers")
    for n, e in enumerate(Simulator(plan.seed, customers, plan.start_ms), start=1):
        replayer.feed(e.jsonl(), n)
        if n % 8192 == 0:
            progress.update(len(replayer.states), n)
            if len(replayer.states) >= customers:
                break
    progress.close()
    # What the state's size costs the worker's CPU: one encode and one decode per customer
    # an input batch touches. Without collections over the heap of 100k states that only
    # this bench holds. The blobs timed here are the ones loaded into Redis below.
    gc.disable()
    try:
        started = time.process_time()
        blobs = {cid: encode_state(state) for cid, state in replayer.states.items()}
        encoded = time.process_time()
        for cid, blob in blobs.items():
            decode_state(cid, blob)
        decoded = time.process_time()
    finally:
        gc.enable()
    due = {
        cid: None if state.due_day is None else rules.calendar.start_ms(state.due_day)
        for cid, state in replayer.states.items()
    }
    per_customer = await redis_bytes(blobs, due)
    n = len(replayer.states)
    sizes = [len(blob) for blob in blobs.values()]
    print(
        f"Redis memory: {per_customer:,.0f} bytes per customer at {n:,} customers "
        f"(state blob mean {statistics.mean(sizes):,.0f} B, p99 "
        f"{statistics.quantiles(sizes, n=100)[98]:,.0f} B; due index and key overhead included); "
        f"CPU per state: encode {(encoded - started) / n * 1e6:.1f} us, "
        f"decode {(decoded - encoded) / n * 1e6:.1f} us"
    )


async def redis_bytes(blobs: dict[str, bytes], due_ms: dict[str, int | None]) -> float:
    """Redis used_memory growth per customer, states and due index stored in a fresh Redis as
    the worker stores them (fenced commits of up to 1,000 customers of a partition)."""
    batch: dict[int, list[str]] = {}
    for cid in blobs:
        batch.setdefault(partition_of(cid, PARTITIONS), []).append(cid)
    with RedisServer() as server:
        client = aioredis.from_url(server.url)
        try:
            store = Store(client)
            await store.load_library()
            before = int((await client.info("memory"))["used_memory"])
            for partition, ids in batch.items():
                claim = await store.claim(partition)
                for i in range(0, len(ids), 1000):
                    chunk = ids[i : i + 1000]
                    await store.commit(
                        claim,
                        states={c: blobs[c] for c in chunk},
                        due={c: due_ms[c] for c in chunk},
                        outbox=[],
                        offsets={},
                    )
            after = int((await client.info("memory"))["used_memory"])
        finally:
            await client.aclose()
    return (after - before) / len(blobs)


def run(plan: Plan) -> None:
    asyncio.run(bench_live(plan))
