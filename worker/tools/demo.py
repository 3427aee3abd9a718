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
import secrets
import shlex
import shutil
import signal
import socket
import sys
import time
from collections import Counter, defaultdict, deque
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field, replace
from typing import TextIO

import orjson

from worker import kafka
from worker.clock import SimulatedClock
from worker.core.dimensions import SEGMENT_CLASS
from worker.core.rules import Rules
from worker.core.timeutil import DAY_MS, format_ms, parse_rfc3339
from worker.display import clip, pad
from worker.kafka_topics import ensure_topics
from worker.service import Worker
from worker.settings import PREFIX, Settings, redact_url
from worker.tools.embedded import Broker, RedisServer
from worker.tools.servers import free_port
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
    env: Mapping[str, str] = field(default_factory=dict)  # SEGMENT_WORKER_* (see _settings)


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
    """Populations per dimension and the latest changes, from the segment-change topic, in
    the words of the rules (class labels) and with what a marketer needs to read them: the
    current event rate, and how many customers a dimension does not apply to. ``token``: the
    worker's bearer token for customer data, which the lookup hint carries."""

    RATE_WINDOW = 5.0  # seconds the events/s figure looks back

    def __init__(self, rules: Rules, token: str) -> None:
        self.token = token
        self.dimensions = {d.name: d for d in rules.dimensions}
        self.population: dict[str, Counter[str]] = defaultdict(Counter)
        self.customers: set[str] = set()
        self.feed: deque[str] = deque(maxlen=12)
        self.changes = 0
        self.dead_letters = 0
        self.produced = 0
        self.failed = False  # the worker, the traffic or the feed stopped on an error
        self.last_customer: str | None = None  # one the lookup is known to find
        self._samples: deque[tuple[float, int]] = deque()

    def label(self, dim: str, name: object) -> str:
        if name is None:
            return "n/a"
        dimension = self.dimensions.get(dim)
        found = dimension and next((c for c in dimension.classes if c.name == name), None)
        return found.label if found else str(name)

    def absorb(self, change: dict[str, object]) -> None:
        dim = str(change["dimension"])
        if change["from"] is not None:
            self.population[dim][str(change["from"])] -= 1
        if change["to"] is not None:
            self.population[dim][str(change["to"])] += 1
        self.changes += 1
        self.last_customer = str(change["customer_id"])
        self.customers.add(self.last_customer)
        cause = change["cause"]
        kind = cause.get("type") if isinstance(cause, dict) else "?"
        before, after = self.label(dim, change["from"]), self.label(dim, change["to"])
        self.feed.append(
            f"{str(change['occurred_at'])[:10]}  {pad(str(change['customer_id']), 12)} "
            f"{pad(dim, 13)} {pad('-' if change['from'] is None else before, 18, right=True)} "
            f"-> {pad(after, 18)} ({kind})"
        )

    def sample(self, now: float) -> None:
        """Note the produced count at ``now`` (monotonic seconds), for :meth:`rate`."""
        self._samples.append((now, self.produced))
        while len(self._samples) > 2 and now - self._samples[1][0] >= self.RATE_WINDOW:
            self._samples.popleft()

    def rate(self) -> float:
        """Events produced per second over the last few seconds (not since the start)."""
        if len(self._samples) < 2:
            return 0.0
        (t0, n0), (t1, n1) = self._samples[0], self._samples[-1]
        return (n1 - n0) / (t1 - t0) if t1 > t0 else 0.0

    def render(self, clock_ms: int, processed: float, lag: float, url: str) -> str:
        width = shutil.get_terminal_size((100, 40)).columns
        lines = [
            f"segment-worker demo   shop time {format_ms(clock_ms)[:16]}   "
            f"produced {self.produced:,} ({self.rate():,.0f}/s now)   processed {processed:,.0f}"
            f"   lag {lag:,.0f}   changes {self.changes:,}   dead letters {self.dead_letters:,}",
            f"metrics: {url}/metrics   lookup: {self.lookup(url)}   Ctrl-C stops",
            f"{len(self.customers):,} customers seen; per dimension:",
        ]
        for dim in sorted(self.population):
            lines.append(clip(f"{pad(dim, 13)} {self._row(dim)}", width))
        lines += [clip(f"  {note}", width) for note in self._notes()]
        lines += ["", "latest segment changes:"]
        lines += [clip(line, width) for line in self.feed]
        return "\n".join(lines)

    def lookup(self, url: str) -> str:
        """A command that looks a customer up, with the bearer token."""
        if self.last_customer is None:
            return f"{self.curl(url + '/customers/ID')} (an ID appears with the first change)"
        return self.curl(f"{url}/customers/{self.last_customer}")

    def curl(self, url: str) -> str:
        """The curl command that fetches ``url`` with the bearer token."""
        return f"curl -H {shlex.quote('Authorization: Bearer ' + self.token)} {url}"

    def _row(self, dim: str) -> str:
        counts = [(c, n) for c, n in self.population[dim].most_common() if n > 0]
        outside = len(self.customers) - sum(n for _, n in counts)
        dimension = self.dimensions.get(dim)
        if dimension is not None and dimension.classes[0].name == SEGMENT_CLASS:
            inside = sum(n for _, n in counts)
            label = dimension.classes[0].label
            named = f" ({label})" if label != SEGMENT_CLASS else ""
            return f"{inside:,} in the segment{named}, {outside:,} not"
        text = "  ".join(f"{self.label(dim, c)} {n:,}" for c, n in counts)
        # Before the classes, so that a narrow terminal cuts classes, not this count.
        na = f"n/a {outside:,}" if outside > 0 else ""
        return f"{pad(na, 10)} {text}"

    def _notes(self) -> list[str]:
        """Why some rows have n/a: the conditions under which a dimension applies."""
        by_condition: dict[str, list[str]] = defaultdict(list)
        for dim in sorted(self.population):
            dimension = self.dimensions.get(dim)
            classified = sum(n for n in self.population[dim].values() if n > 0)
            if dimension and dimension.applies and classified < len(self.customers):
                by_condition[dimension.applies].append(dim)
        if not by_condition:
            return []
        return ["n/a: customers a dimension does not apply to (yet); it applies when"] + [
            f"  {condition}: {', '.join(dims)}" for condition, dims in by_condition.items()
        ]


STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


async def run_demo(options: DemoOptions, out: TextIO = sys.stdout) -> View:
    """Run until Ctrl-C (or SIGTERM, or the terminal closing: SIGHUP) or ``options.duration``;
    returns the final view (for tests). Every stop takes the same way out, which stops the
    broker and Redis it started; Ctrl-C works even if the shell that started it in the
    background set SIGINT to ignored (which children inherit)."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in STOP_SIGNALS:
        loop.add_signal_handler(sig, stop.set)
    try:
        return await _run(options, out, stop)
    finally:
        for sig in STOP_SIGNALS:
            loop.remove_signal_handler(sig)


async def _run(options: DemoOptions, out: TextIO, stop: asyncio.Event) -> View:
    base = _settings(options)  # before a server starts: a bad --redis or --kafka is refused
    async with services(options) as (bootstrap, redis_url, embedded):
        token = secrets.token_urlsafe(24)  # customer data only for whoever reads it here
        settings = replace(
            base,
            kafka_bootstrap=bootstrap,
            redis_url=redis_url,
            http_host="127.0.0.1",  # what the printed addresses say
            http_port=options.http_port,
            # the embedded broker has no idempotent producer
            kafka_idempotence=base.kafka_idempotence and not embedded,
            session_timeout_ms=6000,
            heartbeat_interval_ms=500,
            rebalance_timeout_ms=5000,
            timer_interval_ms=200,
            clock_start=options.start,
            clock_speed=options.days_per_second * DAY_MS / 1000,
            http_token=token,
        )
        await ensure_topics(settings, PARTITIONS)
        # Logs from here on: a Kafka that failed before is the CLI's one line, which says
        # what aiokafka logged (kafka.start_checked).
        logging.basicConfig(level="WARNING", format="%(levelname)s %(name)s: %(message)s")
        clock = SimulatedClock(parse_rfc3339(options.start), settings.clock_speed)
        worker = Worker(settings, clock)
        view = View(worker.rules, token)
        url = f"http://{settings.http_host}:{settings.http_port}"
        out.write(
            f"segment-worker demo: HTTP {url} (metrics: {url}/metrics); Kafka {bootstrap}; "
            f"Redis {redact_url(redis_url)}\n"
            f"  customer data needs the bearer token: {view.curl(url + '/segments')}\n"
            f"  watch the changes: segment-worker changes --kafka {bootstrap} --follow "
            "--format table\n"
        )
        out.flush()
        tasks = [
            asyncio.create_task(worker.run(), name="worker"),
            asyncio.create_task(_produce(settings, options, clock, view), name="traffic"),
            asyncio.create_task(_watch(settings, view), name="feed"),
        ]
        started = time.monotonic()
        view.sample(started)
        shown_lookup = False
        try:
            while options.duration is None or time.monotonic() - started < options.duration:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), 1.0)
                if stop.is_set() or any(t.done() for t in tasks):
                    break
                view.sample(time.monotonic())
                _show(view, worker, clock.now_ms(), url=url, opts=options, out=out)
                if not shown_lookup and view.last_customer is not None and not _live(options, out):
                    out.write(f"lookup: {view.lookup(url)}\n")  # a customer the worker holds
                    shown_lookup = True
        finally:
            worker.stop()
            for task in tasks[1:]:
                task.cancel()
            results = await asyncio.gather(*tasks, return_exceptions=True)
            for task, result in zip(tasks, results, strict=True):
                if isinstance(result, Exception):
                    log.error("%s failed: %r", task.get_name(), result)
                    view.failed = True
        view.dead_letters = int(_metric(worker, "segment_worker_dead_letters_total"))
        return view


def _settings(options: DemoOptions) -> Settings:
    """The environment's settings of the servers the demo was given (TLS, SASL and idempotence
    of --kafka; TLS, cluster and prefix of --redis, and its URL), which they may need as `run`
    would; the ones it starts itself are plain, and the rest is the demo's own."""
    given = [
        f"{PREFIX}{name}_"
        for name, server in (("KAFKA", options.kafka), ("REDIS", options.redis))
        if server is not None
    ]
    env = {k: v for k, v in options.env.items() if k.startswith(tuple(given))}
    urls = {"redis_url": ("--redis", options.redis), "kafka_bootstrap": ("--kafka", options.kafka)}
    return Settings.from_env(env, given=urls)


def _live(opts: DemoOptions, out: TextIO) -> bool:
    """Whether the whole view is redrawn every second (else one status line is printed)."""
    return opts.view and out.isatty()


def _show(
    view: View, worker: Worker, now: int, *, url: str, opts: DemoOptions, out: TextIO
) -> None:
    view.dead_letters = int(_metric(worker, "segment_worker_dead_letters_total"))
    processed = _metric(worker, "segment_worker_events_total")
    lag = _metric(worker, "segment_worker_consumer_lag")
    text = view.render(now, processed, lag, url)
    if _live(opts, out):
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
