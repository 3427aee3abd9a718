"""A worker started before its Redis (or with a host that does not resolve) waits for it,
reports not ready and says what it waits for, instead of crashing; what waiting cannot fix
(a refused password, an address it cannot listen on, topics that are not co-partitioned)
stops the start with one line."""

import asyncio
import signal
import socket
from collections.abc import Callable
from dataclasses import replace

import pytest
from aiohttp import ClientSession

from tests.integration.live_support import (
    NOW,
    PARTITIONS,
    make_settings,
    start_worker,
    wait_until,
    worker_log,
)
from worker.settings import Settings
from worker.tools.embedded import Broker, RedisServer
from worker.tools.servers import free_port

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]


async def readiness(port: int) -> int | None:
    try:
        async with (
            ClientSession(f"http://127.0.0.1:{port}") as http,
            http.get("/readyz") as resp,
        ):
            return resp.status
    except OSError:
        return None


async def test_run_waits_for_a_redis_that_is_down_and_resumes_when_it_is_up(
    broker: Broker,
) -> None:
    port = free_port()
    settings = await make_settings(broker, f"redis://127.0.0.1:{port}/0")
    proc = start_worker(settings, NOW)
    server = RedisServer(port)
    try:
        waiting = f"waiting for Redis at redis://127.0.0.1:{port}/0: unreachable"
        await wait_until(lambda: worker_log(proc).count(waiting) >= 3, 30, "three attempts logged")
        assert proc.poll() is None, worker_log(proc)
        assert "Traceback" not in worker_log(proc)
        assert await readiness(settings.http_port) == 503

        await asyncio.to_thread(server.start)

        async def ready() -> bool:
            return await readiness(settings.http_port) == 200

        await wait_until(ready, 60, "ready once Redis is up")
    finally:
        proc.send_signal(signal.SIGTERM)
        code = await asyncio.to_thread(proc.wait, 30)
        server.stop()
    assert code == 0, worker_log(proc)


async def test_a_redis_host_that_does_not_resolve_is_named_and_waited_for(broker: Broker) -> None:
    settings = await make_settings(broker, "redis://no-such-host.invalid:6379/0")
    proc = start_worker(settings, NOW)
    try:
        waiting = "waiting for Redis at redis://no-such-host.invalid:6379/0: unreachable"
        await wait_until(lambda: worker_log(proc).count(waiting) >= 2, 30, "two attempts logged")
        assert proc.poll() is None, worker_log(proc)
    finally:
        proc.send_signal(signal.SIGTERM)
        code = await asyncio.to_thread(proc.wait, 30)
    assert code == 0, worker_log(proc)


async def test_a_refused_password_stops_the_start_instead_of_waiting(broker: Broker) -> None:
    """redis-py raises a refused password as a connection error; waiting cannot fix it."""
    server = RedisServer(free_port(), config=["requirepass right-password"])
    await asyncio.to_thread(server.start)
    try:
        settings = await make_settings(broker, f"redis://:wrong-password@127.0.0.1:{server.port}/0")
        proc = start_worker(settings, NOW)
        code = await asyncio.to_thread(proc.wait, 60)
    finally:
        server.stop()
    log = worker_log(proc)
    assert code != 0, log
    assert "waiting for Redis" not in log
    assert "wrong-password" not in log


@pytest.mark.parametrize("variable", ["SEGMENT_WORKER_HTTP_HOST", "SEGMENT_WORKER_HTTP_PORT"])
async def test_an_http_address_it_cannot_listen_on_is_named(variable: str) -> None:
    """Faust binds the HTTP port first, before any server is asked: none is needed here."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        nowhere = f"127.0.0.1:{free_port()}"
        settings = Settings(
            kafka_bootstrap=nowhere,
            redis_url=f"redis://{nowhere}/0",
            http_port=taken.getsockname()[1],
            http_host="no-such-host.invalid" if variable.endswith("HOST") else "127.0.0.1",
        )
        proc = start_worker(settings, NOW)
        code = await asyncio.to_thread(proc.wait, 60)
    log = worker_log(proc)
    assert code == 2, log
    assert f"segment-worker: bad setting: {variable}: cannot listen on" in log
    assert "Traceback" not in log and "Unclosed" not in log


@pytest.mark.parametrize("topic", ["topic_visits", "topic_erasures"])
async def test_topics_of_different_partition_counts_stop_the_start(
    settings: Settings, topics: Callable[..., dict[str, str]], topic: str
) -> None:
    """Co-partitioned topics (docs/contracts.md) with another count would have their records
    dead-lettered as wrong_partition: the worker refuses to start, naming every count."""
    odd = replace(settings, **{topic: topics(odd=2)["odd"]})
    proc = start_worker(odd, NOW)
    code = await asyncio.to_thread(proc.wait, 60)
    log = worker_log(proc)
    assert code == 2, log
    counts = {
        name: 2 if name == getattr(odd, topic) else PARTITIONS
        for name in (odd.topic_orders, odd.topic_visits, odd.topic_profiles, odd.topic_erasures)
    }
    listed = ", ".join(f"'{name}' has {count}" for name, count in counts.items())
    assert (
        "segment-worker: bad setting: SEGMENT_WORKER_TOPIC_*: the input and erasure topics must "
        f"have the same partition count (co-partitioned, docs/contracts.md), but {listed}; "
        "create them with one count"
    ) in log.splitlines()
    assert "Traceback" not in log and "Unclosed" not in log
