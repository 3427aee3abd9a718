"""The customer lookup says "try again" (503), not "bug" (500), when Redis cannot answer."""

import asyncio

import pytest
from aiohttp import ClientSession

from tests.integration.live_support import AUTH, NOW, ManualClock, make_settings, wait_until
from worker.service import Worker
from worker.tools.embedded import Broker, RedisServer

pytestmark = pytest.mark.integration


async def test_a_lookup_while_redis_is_down_is_503(
    broker: Broker, redis_server: RedisServer
) -> None:
    settings = await make_settings(broker, redis_server.url)
    worker = Worker(settings, ManualClock(NOW))
    task = asyncio.create_task(worker.run())
    try:
        async with ClientSession(f"http://127.0.0.1:{settings.http_port}") as http:

            async def answered() -> bool:
                try:
                    async with http.get("/customers/bob", headers=AUTH) as resp:
                        return resp.status == 404
                except OSError:  # the port is not open yet
                    return False

            await wait_until(answered, 90, "lookups answered")
            redis_server.pause()  # unresponsive: the lookup times out (the client's 10 s)
            try:
                async with http.get("/customers/bob", headers=AUTH) as resp:
                    assert resp.status == 503
                    assert "redis unavailable" in (await resp.json())["error"]
            finally:
                redis_server.resume()
    finally:
        worker.stop()
        await asyncio.wait_for(task, 60)
