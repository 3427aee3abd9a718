"""Scale-out against a real Redis Cluster (three masters started here on loopback): workers in
one group spread the partitions, each partition's keys live in its hash-tag slot on one master,
no call crosses slots, and the result equals replay (which a single worker also equals)."""

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import replace

import pytest
import redis
from redis.asyncio.cluster import RedisCluster

from tests.integration.live_support import (
    NOW,
    PARTITIONS,
    all_committed,
    assert_matches_replay,
    make_settings,
    one_day_of_traffic,
    produce,
    start_worker,
    wait_until,
    worker_log,
)
from worker.core.codec import encode_state
from worker.core.state import CustomerState
from worker.keys import Layout, glob_escape
from worker.partition_count import Built, PartitionCountChanged, settle, state_count
from worker.store import Store
from worker.tools.embedded import Broker, RedisServer
from worker.tools.servers import free_port

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]


@pytest.fixture
def cluster(redis_factory: Callable[..., RedisServer]) -> list[RedisServer]:
    bus = [free_port() for _ in range(3)]
    masters = [
        redis_factory(
            config=(
                "cluster-enabled yes",
                "cluster-config-file nodes.conf",
                "cluster-node-timeout 5000",
                f"cluster-port {bus[i]}",  # else port + 10000, which may not exist
            )
        )
        for i in range(3)
    ]
    # What `redis-cli --cluster create` does: split the 16,384 slots, then introduce the nodes.
    for i, m in enumerate(masters):
        first, last = i * 16384 // 3, (i + 1) * 16384 // 3 - 1
        redis.Redis(port=m.port).execute_command("CLUSTER", "ADDSLOTSRANGE", first, last)
    for i, m in enumerate(masters[1:], 1):
        redis.Redis(port=masters[0].port).execute_command(
            "CLUSTER", "MEET", "127.0.0.1", m.port, bus[i]
        )
    deadline = time.monotonic() + 30
    while True:
        states = [
            redis.Redis(port=m.port).execute_command("CLUSTER", "INFO").decode() for m in masters
        ]
        if all("cluster_state:ok" in s for s in states):
            break
        assert time.monotonic() < deadline, states
        time.sleep(0.2)
    return masters


def owner_of(masters: list[RedisServer], key: str) -> int:
    slot = int(redis.Redis(port=masters[0].port).execute_command("CLUSTER", "KEYSLOT", key))
    for i, m in enumerate(masters):
        for start, end, *_ in redis.Redis(port=m.port).execute_command("CLUSTER", "SLOTS"):
            if start <= slot <= end and int(_[0][1]) == m.port:
                return i
    raise AssertionError(f"no master serves slot {slot}")


async def test_two_workers_on_a_three_master_cluster_equal_replay(
    broker: Broker, cluster: list[RedisServer]
) -> None:
    settings = replace(
        await make_settings(broker, f"redis://127.0.0.1:{cluster[0].port}/0"), redis_cluster=True
    )
    events = one_day_of_traffic(300, seed=21, orders_only=True)
    produced = await produce(settings, events)
    workers = [
        start_worker(settings, NOW),
        start_worker(settings, NOW, SEGMENT_WORKER_HTTP_PORT=str(free_port())),
    ]
    try:
        await wait_until(lambda: all_committed(settings, produced), 120, "two workers, cluster")
    finally:
        for w in workers:
            if w.poll() is None:
                w.send_signal(signal.SIGTERM)
                w.wait(30)
    logs = "".join(worker_log(w) for w in workers)
    assert "CROSSSLOT" not in logs and "MOVED" not in logs and "Traceback" not in logs, logs

    await assert_matches_replay(settings, events)

    # Each partition's keys sit on the master that owns its hash tag, and only there.
    layout = Layout(settings.redis_prefix)
    holders = {p: owner_of(cluster, layout.meta(p)) for p in range(PARTITIONS)}
    assert len(set(holders.values())) >= 2, holders  # the partitions really are spread
    for p, owner in holders.items():
        for i, m in enumerate(cluster):
            keys = await asyncio.to_thread(
                lambda m=m, p=p: list(
                    redis.Redis(port=m.port).scan_iter(glob_escape(layout.base(p)) + "*")
                )
            )
            assert bool(keys) == (i == owner), (p, i, owner)


async def test_recount_rewrites_the_counts_of_partitions_on_every_master(
    cluster: list[RedisServer],
) -> None:
    url = f"redis://127.0.0.1:{cluster[0].port}/0"
    client = RedisCluster.from_url(url)
    store = Store(client)
    try:
        await store.library.load()
        partitions = range(6)
        assert len({owner_of(cluster, Layout().meta(p)) for p in partitions}) > 1
        for p in partitions:
            claim = await store.claim(p)
            states = {
                f"c{p}-{i}": encode_state(CustomerState(f"c{p}-{i}", classes={"tier": "gold"}))
                for i in range(p + 1)
            }
            await store.commit(
                claim,
                states=states,
                due={},
                outbox=[],
                offsets={},
                populations={("tier", "gold"): 9},
            )
        env = {k: v for k, v in os.environ.items() if not k.startswith("SEGMENT_WORKER_")}
        done = subprocess.run(
            [sys.executable, "-m", "worker", "redis", "recount", "--redis-url", url],
            check=False,
            capture_output=True,
            text=True,
            timeout=60,
            env=env | {"SEGMENT_WORKER_REDIS_CLUSTER": "1"},
        )
        assert done.returncode == 0, done.stderr
        assert "tier: 54 -> 21 customers in a class" in done.stdout
        for p in partitions:
            assert await store.populations(p) == {("tier", "gold"): p + 1}
    finally:
        await client.aclose()


async def test_the_partition_count_is_inferred_across_masters_and_recorded_once(
    cluster: list[RedisServer],
) -> None:
    """The meta hashes of a state from before the record live on several masters (one
    pipeline per master); the record, a key of no partition, on the master of its own slot."""
    client = RedisCluster.from_url(f"redis://127.0.0.1:{cluster[0].port}/0")
    store = Store(client)
    try:
        await store.library.load()
        partitions = range(6)
        assert len({owner_of(cluster, Layout().meta(p)) for p in partitions}) > 1
        for p in partitions:
            await store.claim(p)
        assert await state_count(store, 6) == Built(6, recorded=False)
        with pytest.raises(PartitionCountChanged):
            await settle(store, 8)
        assert await store.recorded_partitions() is None  # a refusal writes nothing
        assert await settle(store, 6) == Built(6, recorded=True)
        holder = cluster[owner_of(cluster, Layout().partitions())]
        assert redis.Redis(port=holder.port).get(Layout().partitions()) == b"6"
        assert await store.record_partitions(8) == 6  # set once: the first count stays
        with pytest.raises(PartitionCountChanged):
            await settle(store, 8)
    finally:
        await client.aclose()
