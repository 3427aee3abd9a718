"""`segment-worker demo`: the whole product on one machine with nothing installed.

Starts the embedded Kafka-compatible broker and a Redis server (or uses the ones given),
runs the real worker in-process against them with a simulated clock (a shop day per second
by default), streams simulated shop traffic into the input topics, and shows a live view of
class populations, the feed of segment changes, throughput, lag and dead letters.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
import socket
import sys
import time
from collections import Counter, defaultdict, deque
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from typing import TextIO

import orjson

from worker import kafka
from worker.clock import SimulatedClock
from worker.core.timeutil import DAY_MS, format_ms, parse_rfc3339
from worker.kafka import ensure_topics
from worker.service import Worker
from worker.settings import Settings
from worker.tools.embedded import Broker, RedisServer, free_port
from worker.tools.simulate import FeedFaults, Simulator

log = logging.getLogger("segment_worker.demo")
PARTITIONS = 4


@dataclass(frozen=True)
class DemoOptions:
    customers: int = 2000
    seed: int = 1
    start: str = "2026-01-01T00:00:00Z"
    days_per_second: float = 1.0
    max_rate: int = 3000  # events per real second, so a small machine keeps up
    duration: float | None = None  # seconds; None = until Ctrl-C
    kafka: str | None = None
    redis: str | None = None
    http_port: int = 8080
    view: bool = True


@contextlib.asynccontextmanager
async def services(options: DemoOptions) -> AsyncIterator[tuple[str, str, bool]]:
    """(bootstrap, redis URL, embedded broker?): started here unless given, always stopped."""
    with contextlib.ExitStack() as stack:
        bootstrap = options.kafka
        if bootstrap is None:
            broker = stack.enter_context(Broker())
            bootstrap = broker.bootstrap
        redis_url = options.redis
        if redis_url is None:
            redis_url = stack.enter_context(RedisServer()).url
        yield bootstrap, redis_url, options.kafka is None


class View:
    """Populations per dimension and the latest changes, from the segment-change topic."""

    def __init__(self) -> None:
        self.population: dict[str, Counter[str]] = defaultdict(Counter)
        self.feed: deque[str] = deque(maxlen=12)
        self.changes = 0
        self.dead_letters = 0
        self.produced = 0
        self.last_customer = "cus_0000001"

    def absorb(self, change: dict[str, object]) -> None:
        dim = str(change["dimension"])
        if change["from"] is not None:
            self.population[dim][str(change["from"])] -= 1
        if change["to"] is not None:
            self.population[dim][str(change["to"])] += 1
        self.changes += 1
        self.last_customer = str(change["customer_id"])
        cause = change["cause"]
        kind = cause.get("type") if isinstance(cause, dict) else "?"
        self.feed.append(
            f"{str(change['occurred_at'])[:10]}  {change['customer_id']!s:<12} "
            f"{dim:<13} {change['from'] or '-':>18} -> {change['to'] or '-':<18} ({kind})"
        )

    def render(self, clock_ms: int, rate: float, processed: float, lag: float, url: str) -> str:
        width = shutil.get_terminal_size((100, 40)).columns
        lines = [
            f"segment-worker demo   shop time {format_ms(clock_ms)[:16]}   "
            f"produced {self.produced:,} ({rate:,.0f}/s)   processed {processed:,.0f}   "
            f"lag {lag:,.0f}   changes {self.changes:,}   dead letters {self.dead_letters:,}",
            f"metrics: {url}/metrics   lookup: {url}/customers/{self.last_customer}   Ctrl-C stops",
            "",
        ]
        for dim in sorted(self.population):
            counts = [(c, n) for c, n in self.population[dim].most_common() if n > 0]
            text = "  ".join(f"{c} {n}" for c, n in counts)
            lines.append(f"{dim:<13} {text}"[:width])
        lines += ["", "latest segment changes:"]
        lines += [line[:width] for line in self.feed]
        return "\n".join(lines)


async def run_demo(options: DemoOptions, out: TextIO = sys.stdout) -> View:
    """Run until Ctrl-C or ``options.duration``; returns the final view (for tests)."""
    async with services(options) as (bootstrap, redis_url, embedded):
        base = Settings.from_env({})
        settings = replace(
            base,
            kafka_bootstrap=bootstrap,
            redis_url=redis_url,
            http_port=options.http_port,
            kafka_idempotence=not embedded,  # the embedded broker has no idempotent producer
            session_timeout_ms=6000,
            heartbeat_interval_ms=500,
            rebalance_timeout_ms=5000,
            timer_interval_ms=200,
            clock_start=options.start,
            clock_speed=options.days_per_second * DAY_MS / 1000,
        )
        await ensure_topics(settings, PARTITIONS)
        clock = SimulatedClock(parse_rfc3339(options.start), settings.clock_speed)
        worker = Worker(settings, clock)
        view = View()
        url = f"http://127.0.0.1:{options.http_port}"
        tasks = [
            asyncio.create_task(worker.run(), name="worker"),
            asyncio.create_task(_produce(settings, options, clock, view), name="traffic"),
            asyncio.create_task(_watch(settings, view), name="feed"),
        ]
        started = time.monotonic()
        try:
            while options.duration is None or time.monotonic() - started < options.duration:
                await asyncio.sleep(1.0)
                if any(t.done() for t in tasks):
                    break
                _show(view, worker, clock.now_ms(), started, url=url, opts=options, out=out)
        finally:
            worker.stop()
            for task in tasks[1:]:
                task.cancel()
            results = await asyncio.gather(*tasks, return_exceptions=True)
            for task, result in zip(tasks, results, strict=True):
                if isinstance(result, Exception):
                    log.error("%s failed: %r", task.get_name(), result)
        view.dead_letters = int(_metric(worker, "segment_worker_dead_letters_total"))
        return view


def _show(
    view: View,
    worker: Worker,
    now: int,
    started: float,
    *,
    url: str,
    opts: DemoOptions,
    out: TextIO,
) -> None:
    view.dead_letters = int(_metric(worker, "segment_worker_dead_letters_total"))
    processed = _metric(worker, "segment_worker_events_total")
    lag = _metric(worker, "segment_worker_consumer_lag")
    rate = view.produced / max(time.monotonic() - started, 1e-9)
    text = view.render(now, rate, processed, lag, url)
    if opts.view and out.isatty():
        out.write("\x1b[H\x1b[2J" + text + "\n")
    else:
        out.write(text.splitlines()[0] + "\n")
    out.flush()


def _metric(worker: Worker, name: str) -> float:
    """Sum of a metric's samples across labels."""
    total = 0.0
    for family in worker.metrics.registry.collect():
        for sample in family.samples:
            if sample.name == name:
                total += sample.value
    return total


async def _produce(
    settings: Settings, options: DemoOptions, clock: SimulatedClock, view: View
) -> None:
    """Feed simulated traffic as shop time passes (never ahead of the worker's clock)."""
    producer = kafka.producer(settings, linger_ms=20)
    await producer.start()
    try:
        simulator = Simulator(
            options.seed, options.customers, clock.start_ms, faults=FeedFaults.realistic()
        )
        events = iter(simulator)
        pending = next(events, None)
        while pending is not None:
            budget = options.max_rate // 10
            now = clock.now_ms()
            while pending is not None and pending.delivered_ms <= now and budget > 0:
                topic = (
                    settings.topic_orders if pending.topic == "orders" else settings.topic_visits
                )
                await producer.send(topic, pending.value, key=pending.key)
                view.produced += 1
                budget -= 1
                pending = next(events, None)
            await asyncio.sleep(0.1)
    finally:
        await producer.stop()


async def _watch(settings: Settings, view: View) -> None:
    consumer = kafka.consumer(settings, settings.topic_changes, auto_offset_reset="earliest")
    await consumer.start()
    try:
        async for message in consumer:
            if message.value is not None:
                view.absorb(orjson.loads(message.value))
    finally:
        await consumer.stop()


def free_http_port(preferred: int) -> int:
    """The preferred port if it is free, else any free one (a second demo must not fail)."""
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", preferred))
        except OSError:
            return free_port()
    return preferred
