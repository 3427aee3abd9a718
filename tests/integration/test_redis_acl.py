"""The worker runs as the least-privilege Redis user of deploy/redis/users.acl (only its key
prefix, only the commands it needs, FCALL), with the default user disabled."""

import asyncio
from pathlib import Path

import pytest
import redis.asyncio as aioredis
from redis.exceptions import AuthenticationError, NoPermissionError, ResponseError

from tests.integration.live_support import (
    NOW,
    ManualClock,
    all_committed,
    assert_state_matches,
    make_settings,
    one_day_of_traffic,
    produce,
    replay,
    wait_until,
)
from worker.core.timeutil import DAY_MS
from worker.keys import Layout
from worker.service import Worker
from worker.store import Store
from worker.tools.embedded import Broker, RedisServer

pytestmark = pytest.mark.integration
ACL = Path(__file__).parents[2] / "deploy" / "redis" / "users.acl"
PASSWORD = "test-only-password"


def acl_lines() -> tuple[str, ...]:
    lines = [
        line.strip()
        for line in ACL.read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    # The file leaves the password to the deployment (a secret): give the worker user one here.
    return tuple(
        f"{line} >{PASSWORD}" if line.startswith("user segment-worker ") else line for line in lines
    )


@pytest.fixture
def locked_redis(redis_factory) -> RedisServer:  # type: ignore[no-untyped-def]
    return redis_factory(config=acl_lines())


def url(server: RedisServer) -> str:
    return f"redis://segment-worker:{PASSWORD}@127.0.0.1:{server.port}/0"


async def test_default_user_is_off_and_other_keys_are_out_of_reach(
    locked_redis: RedisServer,
) -> None:
    anonymous = aioredis.from_url(locked_redis.url)
    with pytest.raises((AuthenticationError, ResponseError)):
        await anonymous.get(Layout().meta(0))
    await anonymous.aclose()
    client = aioredis.from_url(url(locked_redis))
    with pytest.raises(NoPermissionError):
        await client.get("other-app:secret")
    with pytest.raises(NoPermissionError):
        await client.flushall()
    with pytest.raises(NoPermissionError):
        await client.config_get("*")
    await client.aclose()


async def test_every_store_operation_works_with_least_privilege(locked_redis: RedisServer) -> None:
    client = aioredis.from_url(url(locked_redis))
    store = Store(client)
    await store.load_library()
    claim = await store.claim(2)
    await store.commit(
        claim,
        states={"c1": b"state"},
        due={"c1": 5},
        outbox=[b"r"],
        offsets={"orders": 3},
        populations={("lifecycle", "new"): 1},
    )
    assert (await store.read_checked(2, ["c1"])).states == [b"state"]
    seen = await store.read_checked(2, ["c1"])
    assert seen.run_id and seen.states == [b"state"] and not seen.erased
    assert await store.due(2, 10, 10) == ["c1"]
    assert await store.outbox(2, 10) == [b"r"]
    await store.ack_outbox(claim, 1)
    assert await store.populations(2) == {("lifecycle", "new"): 1}
    assert (await store.scan_customers(2, 0, 100))[1] == ["c1"]
    await store.mark_rules(claim, "v1")
    assert await store.rules_version(2) == "v1"
    assert await store.erase(claim, "c1", 60_000)
    assert (await store.read_checked(2, ["c1"])).erased == {"c1"}
    await client.aclose()


async def test_the_worker_runs_end_to_end_as_that_user(
    broker: Broker, locked_redis: RedisServer
) -> None:
    settings = await make_settings(broker, url(locked_redis))
    events = one_day_of_traffic(150, seed=12, orders_only=True)
    produced = await produce(settings, events)
    worker = Worker(settings, ManualClock(NOW))
    task = asyncio.create_task(worker.run())
    try:
        await wait_until(lambda: all_committed(settings, produced), 90, "offsets committed")
    finally:
        worker.stop()
        await asyncio.wait_for(task, 30)
    expected_replay, _, _ = replay(events, NOW)
    await assert_state_matches(settings, expected_replay, NOW // DAY_MS)
