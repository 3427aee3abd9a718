"""With SEGMENT_WORKER_PSEUDONYM_KEY, Redis names customers by HMAC-SHA256 of their id: no key,
due-index member or erasure marker reveals an id, and lookups, timers and erasure still work."""

import hashlib
import hmac
import logging
from dataclasses import replace

import pytest
import redis.asyncio as aioredis
from aiohttp import ClientSession

from tests.integration.live_support import (
    AUTH,
    NOW,
    PARTITIONS,
    ManualClock,
    all_committed,
    change_ids,
    documents,
    one_day_of_traffic,
    produce,
    read_all,
    replay,
    running,
    wait_until,
)
from worker.core.codec import decode_state
from worker.core.state import CustomerState
from worker.core.timeutil import DAY_MS
from worker.kafka import partition_of, send_erasures
from worker.redis.client import connect
from worker.service import Worker
from worker.settings import Settings
from worker.store import Store, store_for
from worker.tools.embedded import RedisServer

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]
KEY = "test-only-pseudonym-key-of-32-bytes!"


async def everything_in(url: str) -> bytes:
    """Every key name and every due-index member, as one blob to search."""
    client = aioredis.from_url(url)
    try:
        out = []
        async for key in client.scan_iter(count=1000):
            out.append(key)
            if key.endswith(b":due"):
                out += [m for m, _ in await client.zrange(key, 0, -1, withscores=True)]
        return b"\n".join(out)
    finally:
        await client.aclose()


async def test_store_names_customers_by_keyed_hash(redis_server: RedisServer) -> None:
    client = aioredis.from_url(redis_server.url)
    store = Store(client, pseudonym_key=KEY.encode())
    other = Store(client, pseudonym_key=b"another key")
    assert store.names.name("alice@example.com") != other.names.name("alice@example.com")
    mac = hmac.new(KEY.encode(), b"alice@example.com", hashlib.sha256).hexdigest()
    assert store.names.name("alice@example.com") == mac
    await store.library.load()
    claim = await store.claim(1)
    await store.commit(
        claim,
        states={"alice@example.com": b"state-a", "{bob}:1 x": b"state-b"},
        due={"alice@example.com": 10, "{bob}:1 x": 20},
        outbox=[],
        offsets={"orders": 1},
    )
    listing = await everything_in(redis_server.url)
    assert b"alice" not in listing and b"bob" not in listing
    assert (await store.read_checked(1, ["alice@example.com", "{bob}:1 x", "carol"])).states == [
        b"state-a",
        b"state-b",
        None,
    ]
    assert (await store.read_checked(1, ["{bob}:1 x"]))[1] == [b"state-b"]
    assert list(await store.due(1, 100, 10)) == ["alice@example.com", "{bob}:1 x"]
    assert sorted((await store.scan_customers(1, 0, 100))[1]) == ["alice@example.com", "{bob}:1 x"]
    assert await store.erase(claim, "alice@example.com", 60_000)
    seen = await store.read_checked(1, ["alice@example.com", "{bob}:1 x"])
    assert seen.erased == {"alice@example.com"}
    assert list(await store.due(1, 100, 10)) == ["{bob}:1 x"]
    assert b"alice" not in await everything_in(redis_server.url)
    await client.aclose()


async def test_the_worker_keeps_ids_out_of_redis_and_still_serves_timers_lookups_erasure(
    settings: Settings, redis_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="segment_worker.http")
    settings = replace(settings, pseudonym_key=KEY)
    events = one_day_of_traffic(200, seed=22, orders_only=True)
    produced = await produce(settings, events)
    clock = ManualClock(NOW)
    worker = Worker(settings, clock)
    async with running(worker):
        await wait_until(lambda: all_committed(settings, produced), 90, "offsets committed")
        expected_replay, expected, _ = replay(events, NOW)
        ids = sorted(expected_replay.states)
        assert change_ids(await read_all(settings, settings.topic_changes)) == documents(expected)
        listing = await everything_in(redis_server.url)
        assert not [cid for cid in ids if cid.encode() in listing]

        # States equal replay's, read through the pseudonymising store.
        client = connect(settings)
        store = store_for(settings, client)
        for cid in ids:
            blob = await store.get(partition_of(cid, PARTITIONS), cid)
            assert blob is not None, cid
            got: CustomerState = decode_state(cid, blob)
            assert got.orders == expected_replay.states[cid].orders, cid
        await client.aclose()

        base = f"http://127.0.0.1:{settings.http_port}"
        async with (
            ClientSession(base) as http,
            http.get(f"/customers/{ids[0]}", headers=AUTH) as resp,
        ):
            assert resp.status == 200
            assert (await resp.json())["customer_id"] == ids[0]
        # The lookup is logged by the customer's pseudonym, not by their id.
        logged = [r.getMessage() for r in caplog.records if r.name == "segment_worker.http"]
        assert f"GET /customers/{store_for(settings, None).names.name(ids[0])}" in logged
        assert not [line for line in logged if ids[0] in line]

        # The timer finds due customers by pseudonym and emits their real ids.
        later = NOW + 200 * DAY_MS
        clock.now = later
        _, expected_later, _ = replay(events, NOW, as_of=later)
        want = documents(expected_later)

        async def timers_done() -> bool:
            return change_ids(await read_all(settings, settings.topic_changes, 0.5)) == want

        await wait_until(timers_done, 60, "time-driven changes")

        await send_erasures(settings, ids[:2])

        async def gone() -> bool:
            c = connect(settings)
            s = store_for(settings, c)
            try:
                left = [await s.get(partition_of(cid, PARTITIONS), cid) for cid in ids[:2]]
                return left == [None, None]
            finally:
                await c.aclose()

        await wait_until(gone, 30, "erasure")
