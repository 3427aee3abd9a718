"""The worker runs as the least-privilege Redis user of deploy/redis/users.acl (only its key
prefix, only the commands it needs, FCALL but no FUNCTION LOAD), with the default user
disabled; the admin user of the same file loads the Functions library
(`segment-worker redis install`)."""

import asyncio
import subprocess
import sys
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
    running,
    wait_until,
)
from worker.core.codec import encode_state
from worker.core.state import CustomerState
from worker.core.timeutil import DAY_MS
from worker.keys import Layout
from worker.redis.library import LibraryNotLoaded
from worker.service import Worker, WorkerCrashed
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
    # The file leaves the passwords to the deployment (secrets): give its users one here.
    return tuple(
        f"{line} >{PASSWORD}" if line.startswith("user segment-") else line for line in lines
    )


@pytest.fixture
def bare_redis(redis_factory) -> RedisServer:  # type: ignore[no-untyped-def]
    """Locked down, and without the library."""
    return redis_factory(config=acl_lines())


@pytest.fixture
def locked_redis(bare_redis: RedisServer) -> RedisServer:
    """Locked down, with the library installed by the admin."""
    install = install_command(bare_redis)
    assert install.returncode == 0, install.stderr
    return bare_redis


def url(server: RedisServer, user: str = "segment-worker") -> str:
    return f"redis://{user}:{PASSWORD}@127.0.0.1:{server.port}/0"


def install_command(
    server: RedisServer, user: str = "segment-worker-admin"
) -> subprocess.CompletedProcess[str]:
    return redis_command(server, "install", user)


def redis_command(server: RedisServer, command: str, user: str) -> subprocess.CompletedProcess[str]:
    """``segment-worker redis <command>`` as ``user``."""
    return subprocess.run(
        [sys.executable, "-m", "worker", "redis", command, "--redis-url", url(server, user)],
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
    )


async def test_only_the_admin_loads_code_and_the_worker_checks_it_is_there(
    bare_redis: RedisServer,
) -> None:
    client = aioredis.from_url(url(bare_redis))
    store = Store(client)
    try:
        # The worker's user can neither load its own library nor any other Lua.
        with pytest.raises(NoPermissionError):
            await client.function_load(
                "#!lua name=mine\nredis.register_function('f', function() return 1 end)"
            )
        with pytest.raises(NoPermissionError):
            await client.eval("return 1", 0)
        assert not await store.library.loaded()
        with pytest.raises(LibraryNotLoaded, match="segment-worker redis install"):
            await store.library.ensure()
        refused = install_command(bare_redis, "segment-worker")
        assert refused.returncode == 2
        assert "may not load Functions" in refused.stderr

        installed = install_command(bare_redis)
        assert installed.returncode == 0, installed.stderr
        assert "loaded" in installed.stdout and "already" not in installed.stdout
        assert "already loaded" in install_command(bare_redis).stdout
        assert await store.library.loaded()
        await store.library.ensure()
        # Another release's library (or someone else's code under its name) is not this one.
        admin = aioredis.from_url(url(bare_redis, "segment-worker-admin"))
        old = "#!lua name=segment_worker\nredis.register_function('segment_worker_old', function() return 1 end)"
        await admin.function_load(old, replace=True)
        await admin.aclose()
        with pytest.raises(LibraryNotLoaded):
            await store.library.ensure()
    finally:
        await client.aclose()


async def test_the_worker_user_recounts_populations_and_the_admin_may_not(
    bare_redis: RedisServer,
) -> None:
    early = redis_command(bare_redis, "recount", "segment-worker")
    assert early.returncode == 2 and "run `segment-worker redis install` first" in early.stderr
    assert install_command(bare_redis).returncode == 0
    client = aioredis.from_url(url(bare_redis))
    store = Store(client)
    try:
        claim = await store.claim(1)
        state = encode_state(CustomerState("a", classes={"lifecycle": "active"}))
        too_many = {("lifecycle", "active"): 3, ("lifecycle", "new"): 1}
        await store.commit(
            claim, states={"a": state}, due={}, outbox=[], offsets={}, populations=too_many
        )
        done = redis_command(bare_redis, "recount", "segment-worker")
        assert done.returncode == 0, done.stderr
        assert await store.populations(1) == {("lifecycle", "active"): 1}
        admin = redis_command(bare_redis, "recount", "segment-worker-admin")
        assert admin.returncode == 2 and "use the worker's URL" in admin.stderr
    finally:
        await client.aclose()


async def test_install_renames_markers_an_older_release_named_by_the_id(
    bare_redis: RedisServer,
) -> None:
    admin = aioredis.from_url(url(bare_redis, "segment-worker-admin"))
    client = aioredis.from_url(url(bare_redis))
    old = Layout().erased(2, "alice@example.com")  # as release 6 named it, with no pseudonym key
    try:
        await admin.set(old, "1", px=3_600_000)
        installed = install_command(bare_redis)
        assert installed.returncode == 0, installed.stderr
        assert "1 erasure marker(s)" in installed.stdout
        store = Store(client)
        assert (await store.read_checked(2, ["alice@example.com", "bob"])).erased == {
            "alice@example.com"
        }
        new = store.erased_key(2, "alice@example.com")
        assert "alice" not in new and 0 < await admin.pttl(new) <= 3_600_000
        assert await admin.pttl(old) == -2  # gone
        assert "marker" not in install_command(bare_redis).stdout  # nothing left to rename
    finally:
        await admin.aclose()
        await client.aclose()


async def test_a_worker_without_the_library_stops_with_the_reason(
    broker: Broker, bare_redis: RedisServer
) -> None:
    settings = await make_settings(broker, url(bare_redis))
    worker = Worker(settings, ManualClock(NOW))
    with pytest.raises(WorkerCrashed, match="segment-worker redis install"):
        await asyncio.wait_for(worker.run(), 60)


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
    await store.library.ensure()
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
    assert await store.due(2, 10, 10) == {"c1": 5}
    assert await store.outbox(2, 10) == [b"r"]
    await store.ack_outbox(claim, 1)
    assert await store.populations(2) == {("lifecycle", "new"): 1}
    assert (await store.scan_customers(2, 0, 100))[1] == ["c1"]
    await store.begin_rules(claim, "v1")
    assert await store.rules_pass(2) == "v1"
    await store.mark_rules(claim, "v1")
    assert (await store.rules_version(2), await store.rules_pass(2)) == ("v1", None)
    await store.commit(claim, states={"c2": b"damaged"}, due={"c2": 5}, outbox=[], offsets={})
    assert await store.forget(2, "c2", b"damaged")  # a Function: the user has no EVAL
    assert await store.get(2, "c2") is None
    assert await store.erase(claim, "c1", 60_000)
    assert (await store.read_checked(2, ["c1"])).erased == {"c1"}
    # The partition count the state is built with (worker/partition_count.py).
    assert await store.claimed_among(range(4)) == {2}
    assert await store.recorded_partitions() is None
    assert await store.record_partitions(4) == 4
    assert await store.record_partitions(6) == 4
    assert await store.recorded_partitions() == 4
    await client.aclose()


async def test_the_worker_runs_end_to_end_as_that_user(
    broker: Broker, locked_redis: RedisServer
) -> None:
    settings = await make_settings(broker, url(locked_redis))
    events = one_day_of_traffic(150, seed=12, orders_only=True)
    produced = await produce(settings, events)
    worker = Worker(settings, ManualClock(NOW))
    async with running(worker):
        await wait_until(lambda: all_committed(settings, produced), 90, "offsets committed")
    expected_replay, _, _ = replay(events, NOW)
    await assert_state_matches(settings, expected_replay, NOW // DAY_MS)
