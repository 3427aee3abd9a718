"""Spike: faust-streaming as a service container and web server over the embedded Tansu broker.

No agents and no tables: the app runs our own aiokafka group consumer inside an
``@app.service`` (a ``mode.Service``) and serves custom routes (health, Prometheus text)
through Faust's aiohttp web server. Findings (faust-streaming 0.15.3, mode 0.7.1):

* With no agents Faust's own consumer subscribes to nothing and its thread crashes
  (aiokafka ``TypeError: You should provide either `topics` or `pattern```). So the Faust
  consumer is switched off with a ``BootStrategy`` (``enable_kafka_consumer = False``: no
  consumer, leader assignor, conductor or table manager); the producer and web server stay.
* ``App.on_start`` touches ``app.consumer`` even then, which builds a consumer thread with
  a private event loop that is never closed ("unclosed event loop" ResourceWarning at GC,
  an error under ``filterwarnings = error``); the subclass below skips that.
* ``topic_disable_leader=True`` and no tables: no internal topics are created. (An agent app
  with default settings creates ``<id>-__assignor-__leader`` and takes ~31 s to start on
  Tansu; with ``broker_session_timeout=6``, ``broker_heartbeat_interval=0.5``,
  ``broker_rebalance_timeout=6`` and ``topic_disable_leader=True`` it takes ~4 s.)
* Faust's producer is not idempotent unless ``processing_guarantee="exactly_once"``, so it
  works against Tansu as is.
* ``await app.start()`` returns in ~0.05 s with routes served; the service's own consumer is
  assigned ~3 s later (Tansu join = half the session timeout); ``await app.stop()`` takes
  ~0.1 s once the service stops its consumer in ``on_stop`` (before mode cancels its tasks).
"""

import asyncio
import time
from pathlib import Path
from typing import Any

import aiohttp
import faust
import mode
import pytest
from aiokafka.coordinator.assignors.range import RangePartitionAssignor
from faust.app.base import BootStrategy
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, generate_latest

from worker import kafka
from worker.tools.embedded import Broker
from worker.tools.servers import free_port

pytestmark = [pytest.mark.integration, pytest.mark.broker_only, pytest.mark.timeout(90)]


class NoFaustConsumer(BootStrategy):
    """Sensors, producer and web server only."""

    enable_kafka_consumer = False


class ServiceApp(faust.App):
    """A Faust app without Faust's consumer: services, producer and web server."""

    BootStrategy = NoFaustConsumer

    async def on_start(self) -> None:
        # The stock on_start also reattaches the conductor to ``self.consumer``, which
        # creates an (unused) consumer thread and event loop that nobody closes.
        self.finalize()


def faust_settings(broker: Broker, web_port: int, datadir: Path) -> dict[str, Any]:
    """The settings that start fast and clean against Tansu."""
    return {
        "broker": f"kafka://{broker.bootstrap}",
        "store": "memory://",
        "datadir": str(datadir),  # Faust creates "<id>-data" in the cwd otherwise
        "autodiscover": False,
        "web_enabled": True,
        "web_host": "127.0.0.1",
        "web_bind": "127.0.0.1",
        "web_port": web_port,
        "topic_disable_leader": True,  # no <id>-__assignor-__leader topic
        "topic_allow_declare": False,  # Faust never creates topics
        "broker_session_timeout": 6.0,  # only used by a Faust consumer (agents); Tansu
        "broker_heartbeat_interval": 0.5,  # joins take half the session timeout
        "broker_rebalance_timeout": 6.0,
        "producer_acks": -1,  # "all"; idempotence stays off (no exactly_once)
    }


class ConsumerLoop(mode.Service):
    """Our own group consumer inside the app; stopped gracefully before mode cancels it."""

    def __init__(self, bootstrap: str, topics: list[str], group: str, counter: Counter) -> None:
        super().__init__()
        self.bootstrap, self.topics, self.group, self.counter = bootstrap, topics, group, counter
        self.records: list[tuple[str, int, bytes | None, tuple[tuple[str, bytes], ...]]] = []
        self.joined_after: float | None = None
        self.finished = asyncio.Event()
        self.started_at = time.monotonic()

    @mode.Service.task
    async def _consume(self) -> None:
        consumer = kafka.consumer(
            self.bootstrap,
            *self.topics,
            group_id=self.group,
            partition_assignment_strategy=(RangePartitionAssignor,),
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            session_timeout_ms=6000,
            heartbeat_interval_ms=500,
            rebalance_timeout_ms=6000,
            max_poll_interval_ms=10000,
        )
        try:
            await consumer.start()
            while not self.should_stop:
                batch = await consumer.getmany(timeout_ms=100, max_records=500)
                if self.joined_after is None and consumer.assignment():
                    self.joined_after = time.monotonic() - self.started_at
                for tp, records in batch.items():
                    for r in records:
                        self.records.append((tp.topic, tp.partition, r.key, tuple(r.headers)))
                        self.counter.inc()
                    await consumer.commit({tp: records[-1].offset + 1})
        finally:
            await consumer.stop()
            self.finished.set()

    async def on_stop(self) -> None:
        # should_stop is already set: the loop ends within one poll and closes the consumer.
        await asyncio.wait_for(self.finished.wait(), 15)


async def http_get(session: aiohttp.ClientSession, url: str) -> tuple[int, str, str]:
    async with session.get(url) as response:
        return response.status, response.headers["Content-Type"], await response.text()


async def test_faust_app_with_own_consumer_service_and_custom_routes(
    broker: Broker, topics: Any, tmp_path: Path
) -> None:
    names = topics(orders=4, visits=4)
    orders, visits = names["orders"], names["visits"]
    app_id = f"sw-test-{orders.rsplit('-', 1)[1]}"
    web_port = free_port()
    registry = CollectorRegistry()
    consumed = Counter("sw_spike_records", "records consumed", registry=registry)

    app = ServiceApp(app_id, **faust_settings(broker, web_port, tmp_path))
    loop_service = ConsumerLoop(broker.bootstrap, [orders, visits], f"{app_id}-group", consumed)
    app.service(loop_service)  # type: ignore[arg-type]  # an instance works too (mode)

    @app.page("/healthz")
    async def healthz(web: Any, request: Any) -> Any:
        ready = loop_service.joined_after is not None
        return web.json({"ready": ready}, status=200 if ready else 503)

    @app.page("/metrics")
    async def metrics(web: Any, request: Any) -> Any:
        # aiohttp refuses a charset inside content_type=; a full header passes through as is
        return web.bytes(generate_latest(registry), headers={"Content-Type": CONTENT_TYPE_LATEST})

    base = f"http://127.0.0.1:{web_port}"
    t0 = time.monotonic()
    await app.start()
    started = time.monotonic() - t0
    try:
        async with aiohttp.ClientSession() as http:
            status, _, body = await http_get(http, f"{base}/healthz")  # served right away
            assert status in (200, 503), body
            while (await http_get(http, f"{base}/healthz"))[0] != 200:
                assert time.monotonic() - t0 < 20, "consumer never joined"
                await asyncio.sleep(0.05)
            ready = time.monotonic() - t0

            # Faust's own producer (not idempotent) works against Tansu
            for i in range(8):
                await app.producer.send_and_wait(
                    orders if i % 2 else visits,
                    f"c{i}".encode(),
                    b"{}",
                    None,
                    None,
                    [("source", b"faust")],
                )
            while len(loop_service.records) < 8:
                assert time.monotonic() - t0 < 30, loop_service.records
                await asyncio.sleep(0.05)

            status, content_type, text = await http_get(http, f"{base}/metrics")
            assert status == 200
            assert content_type == CONTENT_TYPE_LATEST
            assert "sw_spike_records_total 8.0" in text
    finally:
        t1 = time.monotonic()
        await app.stop()
        stopped = time.monotonic() - t1

    assert {h for *_, headers in loop_service.records for h in headers} == {("source", b"faust")}
    assert loop_service.finished.is_set()
    # the web server is gone
    async with aiohttp.ClientSession() as http:
        with pytest.raises(aiohttp.ClientConnectionError):
            await http_get(http, f"{base}/healthz")
    # nothing of Faust or aiokafka is left running
    leftovers = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
    assert not leftovers, leftovers
    # no internal topics (leader assignor, changelogs) were declared
    admin = kafka.admin(broker.bootstrap)
    await admin.start()
    try:
        assert not [t for t in await admin.list_topics() if t.startswith(app_id)]
    finally:
        await admin.close()

    # Measured, not asserted (a loaded machine is slower): ~0.05 s, ~3 s, ~0.1 s when idle.
    print(f"start {started:.2f}s, ready {ready:.2f}s, stop {stopped:.2f}s")
