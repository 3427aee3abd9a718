"""Redis over TLS with client certificates, as the least-privilege ACL user: the worker and the
CLI connect with SEGMENT_WORKER_REDIS_TLS_*; plaintext, unknown CAs and certificate-less
clients are turned away. The CA and certificates are generated per test run."""

import asyncio
from dataclasses import replace

import pytest
import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError

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
from tests.integration.test_redis_acl import PASSWORD, acl_lines
from tests.pki import Pki, make_pki
from worker.core.timeutil import DAY_MS
from worker.redis.claims import Claim
from worker.redis.client import connect
from worker.service import Worker
from worker.settings import Settings, SettingsError
from worker.store import Store
from worker.tools.embedded import Broker, RedisServer

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture
def tls_redis(redis_factory, pki: Pki) -> RedisServer:  # type: ignore[no-untyped-def]
    return redis_factory(
        tls=True,
        config=(
            f"tls-cert-file {pki.server_cert}",
            f"tls-key-file {pki.server_key}",
            f"tls-ca-cert-file {pki.ca}",
            "tls-auth-clients yes",
            *acl_lines(),
        ),
    )


def tls_settings(
    base: Settings, server: RedisServer, pki: Pki, user: str = "segment-worker"
) -> Settings:
    return replace(
        base,
        redis_url=f"rediss://{user}:{PASSWORD}@127.0.0.1:{server.port}/0",
        redis_tls_cafile=pki.ca,
        redis_tls_certfile=pki.client_cert,
        redis_tls_keyfile=pki.client_key,
    )


async def install(server: RedisServer, pki: Pki) -> None:
    """What `segment-worker redis install` does, as the Redis admin, over TLS."""
    client = connect(tls_settings(Settings(), server, pki, "segment-worker-admin"))
    try:
        assert await Store(client).library.load()
    finally:
        await client.aclose()


async def test_only_verified_tls_clients_with_a_certificate_get_in(
    tls_redis: RedisServer, pki: Pki
) -> None:
    await install(tls_redis, pki)
    good = tls_settings(Settings(), tls_redis, pki)
    client = connect(good)
    store = Store(client)
    await store.library.ensure()
    claim = await store.claim(0)
    assert claim == Claim(0, 1, {}, await store.server_id(0))  # a fresh server: the first owner
    await client.aclose()

    refused = [
        # plaintext on the TLS port
        aioredis.from_url(f"redis://127.0.0.1:{tls_redis.port}/0", socket_timeout=3),
        # a server certificate signed by a CA we do not trust
        connect(replace(good, redis_tls_cafile=pki.stranger_ca)),
        # no client certificate
        connect(replace(good, redis_tls_certfile=None, redis_tls_keyfile=None)),
    ]
    for bad in refused:
        with pytest.raises((RedisConnectionError, OSError, asyncio.TimeoutError)):
            await bad.ping()
        await bad.aclose()


def test_tls_files_need_a_rediss_url_and_come_in_pairs(pki: Pki) -> None:
    with pytest.raises(SettingsError, match="REDIS_URL"):
        Settings(redis_url="redis://localhost:6379/0", redis_tls_cafile=pki.ca)
    with pytest.raises(SettingsError, match="REDIS_TLS_KEYFILE"):
        Settings(redis_url="rediss://localhost:6379/0", redis_tls_certfile=pki.client_cert)


async def test_the_worker_runs_end_to_end_over_tls(
    broker: Broker, tls_redis: RedisServer, pki: Pki
) -> None:
    settings = tls_settings(await make_settings(broker, "redis://unused:1/0"), tls_redis, pki)
    events = one_day_of_traffic(150, seed=13, orders_only=True)
    produced = await produce(settings, events)
    await install(tls_redis, pki)
    worker = Worker(settings, ManualClock(NOW))
    async with running(worker):
        await wait_until(lambda: all_committed(settings, produced), 90, "offsets committed")
    expected_replay, _, _ = replay(events, NOW)
    await assert_state_matches(settings, expected_replay, NOW // DAY_MS)
