"""The compacted classes topic on Apache Kafka: after the log cleaner has run, reading it from
the beginning and keeping the newest value per customer gives replay's classes (and when
each was entered) for every customer, and nothing of an erased one."""

import asyncio
import contextlib
from collections.abc import AsyncIterator

import orjson
import pytest
from aiokafka import ConsumerRecord, TopicPartition
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

from tests.integration.live_support import (
    NOW,
    ManualClock,
    all_committed,
    make_settings,
    one_day_of_traffic,
    produce,
    read_all,
    replay,
    stored_states,
    wait_until,
)
from worker import kafka
from worker.core.classes import classes_document
from worker.core.timeutil import DAY_MS
from worker.kafka import send_erasures
from worker.service import Worker
from worker.settings import Settings
from worker.tools.apache_kafka import ApacheKafka
from worker.tools.embedded import Broker, RedisServer

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

# Per topic, for this test only: a segment rolls on the first append 100 ms after it opened
# (the cleaner never touches the open segment), and a partition is cleaned as soon as 1% of
# it is superseded. The broker's cleaner looks for work every 15 s when idle (its default).
FAST_COMPACTION = {
    "cleanup.policy": "compact",
    "segment.ms": "100",
    "min.cleanable.dirty.ratio": "0.01",
}


@contextlib.asynccontextmanager
async def running(worker: Worker) -> AsyncIterator[None]:
    task = asyncio.create_task(worker.run())
    try:
        yield
    finally:
        worker.stop()
        await asyncio.wait_for(task, 30)


def fold(records: list[ConsumerRecord[bytes, bytes]]) -> dict[str, object]:
    """What a downstream system rebuilds: the newest value per key, tombstones dropped, and
    customers in no class left out (those never classified have no record at all)."""
    latest: dict[bytes, bytes | None] = {}
    for r in sorted(records, key=lambda r: (r.partition, r.offset)):
        assert r.key is not None
        latest[r.key] = r.value
    docs = {k.decode(): orjson.loads(v) for k, v in latest.items() if v is not None}
    return {cid: doc for cid, doc in docs.items() if doc["classes"]}


async def topic_setup(settings: Settings) -> tuple[str, int, int]:
    """The classes topic's cleanup policy, replica count and partition count as created."""
    admin = kafka.admin(settings)
    await admin.start()
    try:
        resource = ConfigResource(
            ConfigResourceType.TOPIC, settings.topic_classes, {"cleanup.policy": None}
        )
        *_, entries = (await admin.describe_configs([resource]))[0].resources[0]
        policy = {e[0]: e[1] for e in entries}["cleanup.policy"]
        partitions = (await admin.describe_topics([settings.topic_classes]))[0]["partitions"]
        return policy, len(partitions[0]["replicas"]), len(partitions)
    finally:
        await admin.close()


async def compact_fast(settings: Settings) -> None:
    admin = kafka.admin(settings)
    await admin.start()
    try:
        resource = ConfigResource(
            ConfigResourceType.TOPIC, settings.topic_classes, dict(FAST_COMPACTION)
        )
        await admin.alter_configs([resource])
    finally:
        await admin.close()


async def end_offsets(settings: Settings, partitions: int) -> int:
    consumer = kafka.consumer(settings)
    await consumer.start()
    try:
        tps = [TopicPartition(settings.topic_classes, p) for p in range(partitions)]
        return sum((await consumer.end_offsets(tps)).values())
    finally:
        await consumer.stop()


async def test_the_compacted_topic_rebuilds_replays_classes_for_every_customer(
    broker: ApacheKafka | Broker, redis_server: RedisServer
) -> None:
    if not isinstance(broker, ApacheKafka):
        pytest.skip("Tansu never compacts: the classes topic needs Apache Kafka")
    settings = await make_settings(broker, redis_server.url)
    policy, replicas, partitions = await topic_setup(settings)
    assert (policy, replicas) == ("compact", settings.topic_replication)
    await compact_fast(settings)
    events = one_day_of_traffic(1200, seed=5, orders_only=True)
    produced = await produce(settings, events)
    clock = ManualClock(NOW)
    worker = Worker(settings, clock)
    async with running(worker):
        await wait_until(lambda: all_committed(settings, produced), 90, "offsets committed")
        first, _, _ = replay(events, NOW)
        victims = sorted(first.states)[::40]  # spread over the partitions
        await send_erasures(settings, victims)

        async def erased() -> bool:
            return all(s is None for s in (await stored_states(settings, victims)).values())

        await wait_until(erased, 30, "erasure")
        # Time passes: timers move many customers again, superseding their earlier records.
        later = NOW + 200 * DAY_MS
        clock.now = later
        expected, _, _ = replay(events, NOW, as_of=later)
        want = {
            cid: classes_document(state)
            for cid, state in expected.states.items()
            if cid not in victims and any(state.classes.values())
        }
        assert len(want) > 200

        async def published() -> bool:
            return fold(await read_all(settings, settings.topic_classes, 1.0)) == want

        await wait_until(published, 60, "every customer's classes published")

    # The cleaner has run once records are missing from the log (offsets show gaps), and
    # removed every record of an erased customer but the tombstone.
    total = await end_offsets(settings, partitions)

    async def compacted() -> bool:
        records = await read_all(settings, settings.topic_classes, 1.0)
        kept = {(r.key or b"").decode() for r in records if r.value is not None}
        return len(records) < total and not set(victims) & kept

    await wait_until(compacted, 120, "the log cleaner to compact the classes topic")
    records = await read_all(settings, settings.topic_classes)
    assert len(records) < total
    assert fold(records) == want  # every customer's classes and since, as replay has them
    tombstones = {(r.key or b"").decode() for r in records if r.value is None}
    assert tombstones == set(victims)
