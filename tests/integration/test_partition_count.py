"""The input partition count the Redis state is built with (``<prefix>:partitions``): recorded
by the first worker, inferred for a state from before the record, and input topics of another
count refused, at start and while the worker runs, by the worker and by the commands that
place customers, with nothing written or sent. Real broker, real Redis."""

import asyncio
import subprocess
import sys
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import pytest
import redis.asyncio as aioredis
from aiokafka.admin import AIOKafkaAdminClient, NewPartitions, NewTopic
from aiokafka.errors import IncompatibleBrokerVersion

from tests.integration.live_support import (
    NOW,
    PARTITIONS,
    ManualClock,
    Produced,
    all_committed,
    assert_matches_replay,
    env_of,
    one_day_of_traffic,
    produce,
    read_all,
    running,
    start_worker,
    wait_until,
    worker_log,
)
from worker import kafka
from worker.cli import main
from worker.kafka import partition_of
from worker.keys import Layout
from worker.service import Worker
from worker.settings import Settings
from worker.tools.servers import KafkaServer
from worker.tools.simulate import SimEvent

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]

MORE = 6  # the partition count the topics get instead of PARTITIONS
LAYOUT = Layout()


def message(count: int, built: int, *, recorded: bool = True) -> str:
    how = (
        "recorded in 'sw:partitions'"
        if recorded
        else "inferred from its partitions' meta hashes; 'sw:partitions' holds no count yet"
    )
    return (
        f"SEGMENT_WORKER_TOPIC_*: the input topics have {count} partitions, but the state in "
        f"Redis under SEGMENT_WORKER_REDIS_PREFIX 'sw' is built with {built} ({how}), and each "
        f"customer's state lives under their partition of {built}: go back to input topics of "
        f"{built} partitions (new ones: Kafka cannot remove partitions), or keep {count} and "
        "rebuild the state under a new SEGMENT_WORKER_REDIS_PREFIX (or in a fresh Redis) from "
        "the history loaded again (docs/sizing.md#changing-the-partition-count)"
    )


def with_more_partitions(settings: Settings, topics: Callable[..., dict[str, str]]) -> Settings:
    """The settings on topics of MORE partitions (the dead-letter topic as it was)."""
    made = topics(orders=MORE, visits=MORE, profiles=MORE, erasures=MORE, changes=MORE)
    more = topics(classes=MORE)
    return replace(
        settings,
        topic_orders=made["orders"],
        topic_visits=made["visits"],
        topic_profiles=made["profiles"],
        topic_erasures=made["erasures"],
        topic_changes=made["changes"],
        topic_classes=more["classes"],
    )


async def build_state(settings: Settings, customers: int = 60) -> Produced:
    """A day of traffic applied by a worker on the settings' topics (PARTITIONS each)."""
    produced = await produce(settings, one_day_of_traffic(customers, orders_only=True))
    async with running(Worker(settings, ManualClock(NOW))):
        await wait_until(lambda: all_committed(settings, produced), 90, "state built")
    return produced


async def snapshot(url: str) -> dict[bytes, bytes]:
    """Every key of the Redis, with its value as DUMP serializes it."""
    client = aioredis.from_url(url)
    try:
        return {key: await client.dump(key) async for key in client.scan_iter(count=1000)}
    finally:
        await client.aclose()


async def recorded(url: str) -> bytes | None:
    client = aioredis.from_url(url)
    try:
        return await client.get(LAYOUT.partitions())  # type: ignore[no-any-return]
    finally:
        await client.aclose()


async def forget_the_record(url: str) -> None:
    """What a Redis written by a release before the record holds: the state, no count."""
    client = aioredis.from_url(url)
    try:
        assert await client.delete(LAYOUT.partitions()) == 1
    finally:
        await client.aclose()


async def refused_start(settings: Settings) -> str:
    """A `segment-worker run` that must stop at start with status 2; its log."""
    proc = start_worker(settings, NOW)
    code = await asyncio.to_thread(proc.wait, 90)
    log = worker_log(proc)
    assert code == 2, log
    assert "Traceback" not in log and "Unclosed" not in log, log
    return log


@pytest.mark.parametrize("recorded_before", [True, False], ids=["recorded", "from-before"])
async def test_topics_of_another_count_than_the_state_stop_the_start_and_write_nothing(
    settings: Settings, topics: Callable[..., dict[str, str]], recorded_before: bool
) -> None:
    """A state built with PARTITIONS, its count recorded or (a Redis of an older release)
    not: a worker on topics of MORE refuses to start, in one line naming both counts, the
    prefix and what to do, and Redis is left exactly as it was."""
    await build_state(settings)
    if not recorded_before:
        await forget_the_record(settings.redis_url)
    before = await snapshot(settings.redis_url)

    log = await refused_start(with_more_partitions(settings, topics))

    line = "segment-worker: bad setting: " + message(MORE, PARTITIONS, recorded=recorded_before)
    assert line in log.splitlines(), log
    assert await snapshot(settings.redis_url) == before


async def test_the_first_worker_records_the_count_and_the_same_count_starts_again(
    settings: Settings,
) -> None:
    assert await recorded(settings.redis_url) is None  # a fresh Redis
    async with running(Worker(settings, ManualClock(NOW))):
        await wait_until(lambda: recorded(settings.redis_url), 60, "the partition count recorded")
    assert await recorded(settings.redis_url) == str(PARTITIONS).encode()
    events = one_day_of_traffic(40, orders_only=True)
    produced = await produce(settings, events)
    async with running(Worker(settings, ManualClock(NOW))):
        await wait_until(lambda: all_committed(settings, produced), 90, "offsets committed")
    await assert_matches_replay(settings, events)


async def test_a_state_from_before_the_record_keeps_working_and_gets_its_count_recorded(
    settings: Settings,
) -> None:
    """A deployment upgrading with an unchanged count: its state has no record; the worker
    infers PARTITIONS from the meta hashes, records it and carries on where the state is
    (changes chain on from the classes stored, not from null)."""
    first = one_day_of_traffic(60, seed=1, orders_only=True)
    produced = await produce(settings, first)
    async with running(Worker(settings, ManualClock(NOW))):
        await wait_until(lambda: all_committed(settings, produced), 90, "first day applied")
    await forget_the_record(settings.redis_url)

    second = one_day_of_traffic(60, seed=2, orders_only=True)  # the same customer ids
    produced = await produce(settings, second, produced)
    async with running(Worker(settings, ManualClock(NOW))):
        await wait_until(lambda: all_committed(settings, produced), 90, "second day applied")

    assert await recorded(settings.redis_url) == str(PARTITIONS).encode()
    await assert_matches_replay(settings, first + second)


async def add_partitions(broker: KafkaServer, names: list[str], count: int) -> None:
    """Give the topics ``count`` partitions: CreatePartitions where the broker has it (Apache
    Kafka); Tansu has not, so there the topics are deleted and created again with ``count``
    (to a running worker, the same: the topics it reads have more partitions)."""
    admin = AIOKafkaAdminClient(bootstrap_servers=broker.bootstrap)
    await admin.start()
    try:
        try:
            await admin.create_partitions({name: NewPartitions(count) for name in names})
        except IncompatibleBrokerVersion:
            await admin.delete_topics(names)
            await admin.create_topics([NewTopic(n, count, broker.replication) for n in names])
    finally:
        await admin.close()


async def test_partitions_added_while_it_runs_stop_it_before_it_applies_a_record(
    broker: KafkaServer, settings: Settings
) -> None:
    """Kafka lets an operator add partitions at any time; the worker's metadata refresh
    (30 s) and the rebalance that follows show it more. It must not process the records
    placed by the new count (their customers' state is under the old one): it stops with
    the refusal, and no state is written for them."""
    produced = await produce(settings, one_day_of_traffic(60, orders_only=True))
    proc = start_worker(settings, NOW)
    try:
        await wait_until(lambda: all_committed(settings, produced), 90, "state built")
        states = {k: v for k, v in (await snapshot(settings.redis_url)).items() if b":c:" in k}
        inputs = [
            settings.topic_orders,
            settings.topic_visits,
            settings.topic_profiles,
            settings.topic_erasures,
        ]
        await add_partitions(broker, inputs, MORE)
        # Traffic placed by the new count, for customers the state holds under the old one.
        moved = [
            e
            for e in one_day_of_traffic(60, seed=2, orders_only=True)
            if partition_of(e.key.decode(), MORE) != partition_of(e.key.decode(), PARTITIONS)
        ]
        assert moved
        await produce_placed(settings, moved, MORE)
        try:
            code = await asyncio.to_thread(proc.wait, 150)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"still running:\n{worker_log(proc)}") from None
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    log = worker_log(proc)
    assert code == 2, log
    assert "segment-worker: bad setting: " + message(MORE, PARTITIONS) in log.splitlines(), log
    after = await snapshot(settings.redis_url)
    assert {k: v for k, v in after.items() if b":c:" in k} == states
    assert not [k for k in after if any(f"{{p{p}}}".encode() in k for p in range(4, MORE))]


async def produce_placed(settings: Settings, events: list[SimEvent], partitions: int) -> None:
    """``events`` sent where Kafka's default partitioner places them among ``partitions``."""
    producer = kafka.producer(settings)
    await producer.start()
    try:
        for e in events:
            await producer.send_and_wait(
                settings.topic_orders,
                e.value,
                key=e.key,
                partition=partition_of(e.key.decode(), partitions),
            )
    finally:
        await producer.stop()


# -- the commands that place customers: produce, erase; and those that look them up


def run_cli(settings: Settings, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "worker", *args],
        check=False,
        env=env_of(settings),
        capture_output=True,
        text=True,
        timeout=120,
    )


async def record(url: str, count: int) -> None:
    client = aioredis.from_url(url)
    try:
        await client.set(LAYOUT.partitions(), count)
    finally:
        await client.aclose()


async def test_produce_and_erase_refuse_topics_of_another_count_and_send_nothing(
    settings: Settings, topics: Callable[..., dict[str, str]], tmp_path: Path
) -> None:
    await record(settings.redis_url, PARTITIONS)
    more = with_more_partitions(settings, topics)
    events = tmp_path / "one.jsonl"
    events.write_bytes(one_day_of_traffic(3, orders_only=True)[0].jsonl() + b"\n")

    produced = await asyncio.to_thread(run_cli, more, "produce", str(events))
    erased = await asyncio.to_thread(run_cli, more, "erase", "cus_a")

    for done in (produced, erased):
        assert done.returncode == 2, done.stderr
        assert done.stderr.splitlines() == [
            "segment-worker: bad setting: " + message(MORE, PARTITIONS)
        ]
    for topic in (more.topic_orders, more.topic_erasures):
        assert await read_all(more, topic, timeout=1.0) == []

    # The same count: sent, and nothing recorded by them (they build no state).
    assert (await asyncio.to_thread(run_cli, settings, "produce", str(events))).returncode == 0
    assert (await asyncio.to_thread(run_cli, settings, "erase", "cus_a")).returncode == 0
    assert len(await read_all(settings, settings.topic_erasures, timeout=1.0)) == 1


async def test_customer_lookups_refuse_a_count_other_than_the_states(
    settings: Settings, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    await record(settings.redis_url, PARTITIONS)
    for name, value in env_of(settings).items():
        if name.startswith("SEGMENT_WORKER_"):
            monkeypatch.setenv(name, value)

    assert await asyncio.to_thread(main, ["customer", "cus_a", "--partitions", str(MORE)]) == 2
    assert capsys.readouterr().err.splitlines() == [
        f"segment-worker: bad setting: --partitions {MORE}: the state in Redis under "
        f"SEGMENT_WORKER_REDIS_PREFIX 'sw' is built with {PARTITIONS} input partitions "
        f"(recorded in 'sw:partitions'), and each customer's state lives under their "
        f"partition of {PARTITIONS}: give --partitions {PARTITIONS}"
    ]
    assert await asyncio.to_thread(main, ["customer", "cus_a", "--partitions", "4"]) == 1
    assert "unknown customer 'cus_a'" in capsys.readouterr().err
