"""Helpers for the live-worker tests: topics, traffic, reading outputs back, the expected
result from replay, and worker processes to kill."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import subprocess
import sys
import tempfile
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, replace
from itertools import islice
from pathlib import Path

import orjson
from aiohttp import ClientSession
from aiokafka import ConsumerRecord, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

from worker import kafka
from worker.core.codec import decode_state
from worker.core.events import ParseLimits
from worker.core.rules import Rules, load_rules
from worker.core.state import CustomerState
from worker.core.timeutil import DAY_MS, format_ms, parse_rfc3339
from worker.core.views import describe
from worker.kafka import partition_of
from worker.kafka_topics import ensure_topics
from worker.keys import BUCKET, Layout, glob_escape, offset_field
from worker.redis.client import Client, connect
from worker.replay import Replayer
from worker.service import Worker
from worker.settings import Settings
from worker.store import store_for
from worker.tools.servers import KafkaServer, free_port
from worker.tools.simulate import FeedFaults, SimEvent, Simulator

PARTITIONS = 4
DAY0 = parse_rfc3339("2026-03-02T00:00:00Z")
NOW = DAY0 + DAY_MS - 1  # end of the traffic's day: every event is in the past, none is late
RULES = load_rules(None)
TOKEN = "live-test-token"  # SEGMENT_WORKER_HTTP_TOKEN of the workers these tests start
AUTH = {"Authorization": f"Bearer {TOKEN}"}  # what a caller of customer data sends


class ManualClock:
    def __init__(self, now_ms: int) -> None:
        self.now = now_ms

    def now_ms(self) -> int:
        return self.now


def one_day_of_traffic(
    customers: int, seed: int = 1, *, orders_only: bool = False
) -> list[SimEvent]:
    """A realistic, faulty feed whose deliveries all fall on DAY0.

    Change ids depend on the order a customer's events are applied in, and the order of two
    topics' records is not fixed (nor is it in production), so tests that compare ids exactly
    use one topic; mixed feeds are compared on final state and unbroken change chains.
    """
    sim = Simulator(seed, customers, DAY0, faults=FeedFaults.realistic(), signup_days=0.9)
    return [
        e
        for e in islice(sim, customers * 10)
        if e.delivered_ms < DAY0 + DAY_MS and (e.topic == "orders" or not orders_only)
    ]


@contextlib.asynccontextmanager
async def running(worker: Worker, timeout: float = 30) -> AsyncIterator[None]:
    """``worker`` running in this event loop for the block; stopped, and its end awaited
    (``timeout`` seconds at most, so a worker that does not stop fails the test), on leaving."""
    task = asyncio.create_task(worker.run())
    try:
        yield
    finally:
        worker.stop()
        await asyncio.wait_for(task, timeout)


async def make_settings(broker: KafkaServer, redis_url: str) -> Settings:
    tag = uuid.uuid4().hex[:8]
    settings = replace(
        Settings(),
        kafka_bootstrap=broker.bootstrap,
        redis_url=redis_url,
        http_port=free_port(),
        http_token=TOKEN,
        kafka_idempotence=broker.idempotent,  # on where the broker has it (not on Tansu)
        session_timeout_ms=6000,
        heartbeat_interval_ms=500,
        rebalance_timeout_ms=5000,
        timer_interval_ms=100,
        batch_wait_ms=50,
        batch_size=300,
        topic_orders=f"orders-{tag}",
        topic_visits=f"visits-{tag}",
        topic_profiles=f"profiles-{tag}",
        topic_changes=f"changes-{tag}",
        topic_dlq=f"dlq-{tag}",
        topic_erasures=f"erasures-{tag}",
        topic_classes=f"classes-{tag}",
        group_id=f"group-{tag}",
        topic_replication=broker.replication,  # on every node of a cluster (up to 3)
    )
    await ensure_topics(settings, PARTITIONS)
    return settings


def env_of(settings: Settings, **extra: str) -> dict[str, str]:
    """The settings as the environment of a `segment-worker run` process."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SEGMENT_WORKER_")}
    return env | settings.to_env() | extra


@dataclass
class Produced:
    """What the broker holds per input partition: the next offset after our last message."""

    ends: dict[TopicPartition, int]

    def total(self) -> int:
        return sum(self.ends.values())


async def produce(
    settings: Settings, events: list[SimEvent], produced: Produced | None = None
) -> Produced:
    producer = kafka.producer(settings)
    await producer.start()
    ends = dict(produced.ends) if produced else {}
    try:
        futures = []
        for e in events:
            topic = {
                "orders": settings.topic_orders,
                "visits": settings.topic_visits,
                "profiles": settings.topic_profiles,
            }[e.topic]
            partition = partition_of(e.key.decode(), PARTITIONS)
            futures.append(await producer.send(topic, e.value, key=e.key, partition=partition))
        for meta in await asyncio.gather(*futures):
            tp = TopicPartition(meta.topic, meta.partition)
            ends[tp] = max(ends.get(tp, 0), meta.offset + 1)
    finally:
        await producer.stop()
    return Produced(ends)


async def committed(
    settings: Settings, partitions: list[TopicPartition]
) -> dict[TopicPartition, int]:
    """The group's committed offsets (read without joining the group)."""
    consumer = kafka.consumer(settings, group_id=settings.group_id, enable_auto_commit=False)
    await consumer.start()
    try:
        return {tp: (await consumer.committed(tp)) or 0 for tp in partitions}
    finally:
        await consumer.stop()


async def wait_until(check: Callable[[], object], timeout: float, what: str) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        result = check()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.2)


KAFKA_ERRORS = re.compile(r'^segment_worker_kafka_errors_total\{op="([a-z]+)"\} (\S+)$', re.M)


async def kafka_errors(port: int) -> dict[str, float]:
    """segment_worker_kafka_errors_total by op, as Prometheus scrapes it from the worker."""
    async with (
        ClientSession(f"http://127.0.0.1:{port}") as http,
        http.get("/metrics") as resp,
    ):
        text = await resp.text()
    return {op: float(value) for op, value in KAFKA_ERRORS.findall(text)}


async def all_committed(settings: Settings, produced: Produced) -> bool:
    got = await committed(settings, list(produced.ends))
    return all(got[tp] >= end for tp, end in produced.ends.items())


async def all_applied(settings: Settings, produced: Produced) -> bool:
    """Redis holds every produced event: its input offsets, not the group's, are the truth. A
    Redis that lost writes is behind the group's offsets until a worker has re-read them."""
    client = connect(settings)
    layout = Layout(settings.redis_prefix)
    try:
        for tp, end in produced.ends.items():
            stored = await client.hget(layout.meta(tp.partition), offset_field(tp.topic))
            if int(stored or 0) < end:
                return False
        return True
    finally:
        await client.aclose()


async def read_all(
    settings: Settings, topic: str, timeout: float = 3.0
) -> list[ConsumerRecord[bytes, bytes]]:
    """Everything in ``topic`` now (read until it has been quiet for a moment)."""
    consumer = kafka.consumer(settings, topic, auto_offset_reset="earliest")
    await consumer.start()
    out: list[ConsumerRecord[bytes, bytes]] = []
    try:
        quiet = 0.0
        while quiet < timeout:
            batch = await consumer.getmany(timeout_ms=500)
            got = [m for messages in batch.values() for m in messages]
            out += got
            quiet = 0.0 if got else quiet + 0.5
    finally:
        await consumer.stop()
    return out


def replay(
    events: list[SimEvent], now_ms: int, as_of: int | None = None, rules: Rules = RULES
) -> tuple[Replayer, list[dict[str, object]], int]:
    """The expected outcome: replay of the same deliveries (changes, states, rejects)."""
    changes: list[dict[str, object]] = []
    rejects = 0

    def on_reject(*_: object) -> None:
        nonlocal rejects
        rejects += 1

    replayer = Replayer(
        rules,
        lambda c: changes.append(c.to_dict()),
        on_reject,
        limits=ParseLimits(),
        future_reference_ms=now_ms,
    )
    for n, e in enumerate(events):
        replayer.feed(e.jsonl(), n)
    if as_of is not None:
        replayer.advance(as_of)
    return replayer, changes, rejects


async def stored_states(
    settings: Settings, customer_ids: list[str]
) -> dict[str, CustomerState | None]:
    client = connect(settings)
    store = store_for(settings, client)
    try:
        out: dict[str, CustomerState | None] = {}
        for cid in customer_ids:
            blob = await store.get(partition_of(cid, PARTITIONS), cid)
            out[cid] = None if blob is None else decode_state(cid, blob)
        return out
    finally:
        await client.aclose()


async def assert_state_matches(
    settings: Settings, replayer: Replayer, day: int, *, exact: bool = True
) -> None:
    """Redis holds what replay computed; with ``exact`` False, when each class was entered
    may differ (it depends on the order of the two topics' records)."""
    stored = await stored_states(settings, sorted(replayer.states))
    for cid, want in replayer.states.items():
        got = stored[cid]
        assert got is not None, f"{cid} missing in Redis"
        a, b = describe(got, RULES, day), describe(want, RULES, day)
        if not exact:
            del a["since"], b["since"]
        assert a == b, cid
    await assert_due_index(settings, stored)


async def due_index(client: Client, layout: Layout, partition: int) -> dict[int, set[str]]:
    """The partition's due index as instant -> names, read key by key (with commands the
    worker's ACL user has); checks that ``at`` lists exactly the buckets there are."""
    out: dict[int, set[str]] = {}
    for member in await client.zrangebyscore(layout.at(partition), "-inf", "+inf"):
        instant = int(member)
        names = {n.decode() for n in await client.hgetall(layout.bucket(partition, instant))}
        assert names, f"an empty bucket at {instant}"
        out[instant] = names
    pattern = glob_escape(layout.base(partition) + BUCKET) + "*"
    buckets = [k async for k in client.scan_iter(match=pattern)]
    listed = await client.zcount(layout.at(partition), "-inf", "+inf")
    assert len(buckets) == listed, "a bucket not in at"
    return out


async def assert_due_index(settings: Settings, states: dict[str, CustomerState | None]) -> None:
    """The due index holds each customer under its due day's start and nothing else: no
    customer a timer would miss, and no stale name that the commits failed to take out."""
    expected: dict[int, dict[int, set[str]]] = {p: {} for p in range(PARTITIONS)}
    client = connect(settings)
    store = store_for(settings, client)
    for cid, state in states.items():
        if state is not None and state.due_day is not None:
            at = RULES.calendar.start_ms(state.due_day)
            bucket = expected[partition_of(cid, PARTITIONS)].setdefault(at, set())
            bucket.add(store.names.name(cid))
    try:
        layout = Layout(settings.redis_prefix)
        found = {p: await due_index(client, layout, p) for p in range(PARTITIONS)}
    finally:
        await client.aclose()
    assert found == expected


async def assert_matches_replay(
    settings: Settings, events: list[SimEvent], *, exact: bool = True
) -> int:
    """The worker's outputs are replay's for ``events`` as of NOW: the same change ids, and the
    same state in Redis (``exact``: see :func:`assert_state_matches`). Returns replay's count
    of rejected records, for the caller's dead-letter check."""
    replayer, expected, rejects = replay(events, NOW)
    assert change_ids(await read_all(settings, settings.topic_changes)) == documents(expected)
    await assert_state_matches(settings, replayer, NOW // DAY_MS, exact=exact)
    return rejects


def assert_unbroken_chains(records: list[ConsumerRecord[bytes, bytes]], replayer: Replayer) -> None:
    """Per customer and dimension, in topic order: each change starts where the last ended,
    and the last one ends at the class replay ends with."""
    last: dict[tuple[str, str], object] = {}
    seen: set[str] = set()
    for r in sorted(records, key=lambda r: (r.partition, r.offset)):
        change = orjson.loads(r.value or b"")
        if change["event_id"] in seen:
            continue  # a re-relayed duplicate: same id, same content (checked elsewhere)
        seen.add(change["event_id"])
        key = (change["customer_id"], change["dimension"])
        assert change["from"] == last.get(key), f"broken chain at {change}"
        last[key] = change["to"]
    for cid, state in replayer.states.items():
        for dim, cls in state.classes.items():
            assert last.get((cid, dim)) == cls, (cid, dim)


def _canonical(change: dict[str, object]) -> bytes:
    """A change document minus ``emitted_at`` (when it was published may differ), sorted."""
    return orjson.dumps(
        {k: v for k, v in change.items() if k != "emitted_at"}, option=orjson.OPT_SORT_KEYS
    )


def change_ids(records: list[ConsumerRecord[bytes, bytes]]) -> dict[str, bytes]:
    """event_id -> document minus emitted_at; fails on a conflicting duplicate (same id,
    different content)."""
    seen: dict[str, bytes] = {}
    for r in records:
        assert r.value is not None
        body = orjson.loads(r.value)
        event_id, canonical = str(body["event_id"]), _canonical(body)
        assert seen.setdefault(event_id, canonical) == canonical, (
            f"conflicting duplicate {event_id}"
        )
    return seen


def documents(changes: list[dict[str, object]]) -> dict[str, bytes]:
    """Replay's changes in the form change_ids gives the published ones: whole documents."""
    return {str(c["event_id"]): _canonical(c) for c in changes}


def start_worker(settings: Settings, clock_ms: int, **extra: str) -> subprocess.Popen[bytes]:
    """`segment-worker run` in a child process with a frozen clock; its log is at
    ``worker_log(proc)``."""
    env = env_of(settings, **extra)
    env["SEGMENT_WORKER_CLOCK_START"] = format_ms(clock_ms)
    env["SEGMENT_WORKER_CLOCK_SPEED"] = "0.000001"
    with tempfile.NamedTemporaryFile(prefix="worker-", suffix=".log", delete=False) as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "worker", "run", "--log-level", "WARNING"],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=log,
        )
    LOGS[proc.pid] = Path(log.name)
    return proc


LOGS: dict[int, Path] = {}


@contextlib.asynccontextmanager
async def worker_process(
    settings: Settings, clock_ms: int, **extra: str
) -> AsyncIterator[subprocess.Popen[bytes]]:
    """:func:`start_worker`, stopped with SIGTERM on the way out, which it must obey (exit 0)."""
    proc = start_worker(settings, clock_ms, **extra)
    try:
        yield proc
    finally:
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(proc.wait, 30) == 0, worker_log(proc)


def worker_log(proc: subprocess.Popen[bytes]) -> str:
    return LOGS[proc.pid].read_text(errors="replace")[-3000:]


async def topic_configs(
    admin: AIOKafkaAdminClient, topics: list[str], names: list[str], timeout: float = 30
) -> dict[str, dict[str, str]]:
    """The configs ``names`` of each of ``topics`` as the cluster reports them. The broker
    that answers may not know a topic created a moment ago yet (a KRaft cluster spreads its
    metadata to the brokers one by one), and then reports no entries: ask until every one is
    there, or the timeout passes."""
    deadline = asyncio.get_running_loop().time() + timeout
    resources = [
        ConfigResource(ConfigResourceType.TOPIC, topic, dict.fromkeys(names)) for topic in topics
    ]
    while True:
        configs: dict[str, dict[str, str]] = {}
        for response in await admin.describe_configs(resources):
            for *_, topic, entries in response.resources:
                configs[topic] = {e[0]: e[1] for e in entries}
        known = all(set(names) <= configs.get(t, {}).keys() for t in topics)
        if known or asyncio.get_running_loop().time() > deadline:
            return configs
        await asyncio.sleep(0.2)
