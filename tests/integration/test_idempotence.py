"""A new user's first run against a broker without idempotent producers (Tansu), the setting
left at its default: the worker stops at once with one line naming the setting, instead of
retrying InitProducerId forever."""

import asyncio
from dataclasses import replace

import pytest

from tests.integration.live_support import NOW, make_settings, start_worker, worker_log
from worker.tools.embedded import Broker, RedisServer

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]


async def test_a_broker_without_idempotence_stops_the_worker_with_one_clear_line(
    redis_server: RedisServer,
) -> None:
    with Broker() as tansu:
        settings = replace(await make_settings(tansu, redis_server.url), kafka_idempotence=True)
        proc = start_worker(settings, NOW)
        try:
            code = await asyncio.to_thread(proc.wait, 60)
        finally:
            proc.kill()
    log = worker_log(proc)
    assert code == 2, log
    named = [line for line in log.splitlines() if "SEGMENT_WORKER_KAFKA_IDEMPOTENCE" in line]
    assert len(named) == 1, log
    assert "refused an idempotent producer" in named[0] and "Tansu" in named[0]
    assert "Traceback" not in log, log
