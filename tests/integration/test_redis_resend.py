"""A Redis call the server ran whose reply was lost must not run again: the worker's client
does not re-send it (an outbox trim by count sent twice would drop changes never relayed)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import replace

import pytest
import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError

from worker.keys import Layout
from worker.redis.client import connect
from worker.settings import Settings
from worker.store import Store

pytestmark = pytest.mark.integration


@contextlib.asynccontextmanager
async def reply_dropping_proxy(redis_url: str, marker: bytes) -> AsyncIterator[str]:
    """A TCP proxy to Redis that, once a request containing ``marker`` went through, closes
    the client's connection instead of passing Redis's reply back (the call ran, the caller
    never hears of it). Later connections are proxied faithfully."""
    host, port = redis_url.removeprefix("redis://").split("/")[0].split(":")
    dropped = asyncio.Event()

    async def serve(client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        cut = asyncio.Event()  # this connection's replies stop here

        async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            up = writer is server_w
            with contextlib.suppress(ConnectionError):
                while data := await reader.read(65536):
                    if up and marker in data and not dropped.is_set():
                        dropped.set()
                        cut.set()
                    elif not up and cut.is_set():
                        break
                    writer.write(data)
                    await writer.drain()

        server_r, server_w = await asyncio.open_connection(host, int(port))
        up = asyncio.create_task(pipe(client_r, server_w))
        down = asyncio.create_task(pipe(server_r, client_w))
        await asyncio.wait([up, down], return_when=asyncio.FIRST_COMPLETED)
        client_w.close()
        server_w.close()
        up.cancel()
        down.cancel()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    proxy_port = server.sockets[0].getsockname()[1]
    try:
        yield f"redis://127.0.0.1:{proxy_port}/0"
    finally:
        server.close()
        assert dropped.is_set(), "the marked request never went through the proxy"


async def test_a_trim_whose_reply_was_lost_is_not_sent_again(redis_url: str) -> None:
    direct = aioredis.from_url(redis_url)
    store = Store(direct)
    await store.library.load()
    claim = await store.claim(0)
    await store.commit(
        claim,
        states={},
        due={},
        outbox=[f"change-{i}".encode() for i in range(5)],
        offsets={"orders": 5},
    )
    outbox = Layout().outbox(0)
    async with reply_dropping_proxy(redis_url, b"segment_worker_ack") as proxied:
        client = connect(replace(Settings(), redis_url=proxied))
        with pytest.raises(RedisConnectionError):
            await Store(client).ack_outbox(claim, 2)
        await client.aclose()
    # Trimmed once (the relay had 2 acknowledged), not twice: 3 records still to relay.
    assert await direct.lrange(outbox, 0, -1) == [f"change-{i}".encode() for i in range(2, 5)]
    await direct.aclose()
