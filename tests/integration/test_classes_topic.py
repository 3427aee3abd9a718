"""The compacted classes topic on Apache Kafka: after the log cleaner has run, reading it from
the beginning and keeping the newest value per customer gives replay's classes (and when
each was entered) for every customer, and nothing of an erased one."""

import asyncio
from collections import Counter, defaultdict

import orjson
import pytest
from aiokafka import ConsumerRecord, TopicPartition
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

from tests.integration.live_support import (
    NOW,
    PARTITIONS,
    ManualClock,
    all_committed,
    one_day_of_traffic,
    produce,
    read_all,
    replay,
    running,
    topic_configs,
    wait_until,
)
from worker import kafka
from worker.core.classes import classes_document
from worker.core.timeutil import DAY_MS
from worker.kafka import partition_of, send_erasures
from worker.service import Worker
from worker.settings import Settings
from worker.tools.apache_kafka import ApacheKafka
from worker.tools.embedded import Broker

pytestmark = [pytest.mark.integration, pytest.mark.timeout(720)]

# Per topic, for this test only: a segment rolls on the first append 100 ms after it opened
# (the cleaner never touches the open segment), and a partition is cleaned whenever any of it
# is dirty. With a 1% ratio, a cleaner pass between the two rounds of erasures left the
# partitions uncleaned for good: the segment the second round closes holds one tombstone,
# under 1% of the cleaned log (reproduced by sleeping 20 s between rounds). The broker's
# cleaner looks for work every 15 s when idle (its default). A roll compares the appended
# batch's timestamp with the segment's first: each round of erasures starts ROLL_S after the
# records before it, so that it closes their segment.
ROLL_S = 0.5
FAST_COMPACTION = {
    "cleanup.policy": "compact",
    "segment.ms": "100",
    "min.cleanable.dirty.ratio": "0",
}


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
        configs = await topic_configs(admin, [settings.topic_classes], ["cleanup.policy"])
        policy = configs[settings.topic_classes]["cleanup.policy"]
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


async def published(settings: Settings, want: dict[str, object]) -> bool:
    return fold(await read_all(settings, settings.topic_classes, 1.0)) == want


async def end_offsets(settings: Settings, partitions: int) -> int:
    consumer = kafka.consumer(settings)
    await consumer.start()
    try:
        tps = [TopicPartition(settings.topic_classes, p) for p in range(partitions)]
        return sum((await consumer.end_offsets(tps)).values())
    finally:
        await consumer.stop()


async def test_the_compacted_topic_rebuilds_replays_classes_for_every_customer(
    broker: ApacheKafka | Broker, settings: Settings
) -> None:
    if not isinstance(broker, ApacheKafka):
        pytest.skip("Tansu never compacts: the classes topic needs Apache Kafka")
    policy, replicas, partitions = await topic_setup(settings)
    assert (policy, replicas) == ("compact", settings.topic_replication)
    await compact_fast(settings)
    events = one_day_of_traffic(1200, seed=5, orders_only=True)
    produced = await produce(settings, events)
    # Replay's classes 200 days on: timers move most customers again, superseding their
    # records of the first day.
    later = NOW + 200 * DAY_MS
    expected, _, _ = replay(events, NOW, as_of=later)
    want = {
        cid: classes_document(state)
        for cid, state in expected.states.items()
        if any(state.classes.values())
    }
    assert len(want) > 200
    # Two rounds of erasures, one customer per partition each: each round's tombstones are
    # the last records of every partition, so the segments before them can be cleaned.
    by_partition: dict[int, list[str]] = defaultdict(list)
    for cid in sorted(want):
        by_partition[partition_of(cid, PARTITIONS)].append(cid)
    rounds = [[cids[n] for cids in by_partition.values()] for n in (0, 1)]
    assert all(len(r) == PARTITIONS for r in rounds)
    clock = ManualClock(NOW)
    worker = Worker(settings, clock)
    async with running(worker):
        await wait_until(lambda: all_committed(settings, produced), 90, "offsets committed")
        clock.now = later
        await wait_until(lambda: published(settings, want), 60, "the timers' records")
        for victims in rounds:
            await asyncio.sleep(ROLL_S)
            await send_erasures(settings, victims)
            for cid in victims:
                del want[cid]
            await wait_until(lambda: published(settings, want), 60, "the tombstones")

    # The cleaner has run: every customer's earlier records are gone, and an erased
    # customer's values too (the second round's last value stays until a later record
    # closes the segment holding its tombstone).
    erased = {cid for victims in rounds for cid in victims}
    total = await end_offsets(settings, partitions)

    async def compacted() -> bool:
        records = await read_all(settings, settings.topic_classes, 1.0)
        count = Counter((r.key or b"").decode() for r in records)
        return all(n == 1 or (cid in rounds[1] and n == 2) for cid, n in count.items())

    await wait_until(compacted, 420, "the log cleaner to compact the classes topic")
    records = await read_all(settings, settings.topic_classes)
    assert len(records) < total * 0.6
    assert fold(records) == want  # every customer's classes and since, as replay has them
    assert {(r.key or b"").decode() for r in records if r.value is None} == erased
    values = {(r.key or b"").decode() for r in records if r.value is not None}
    assert not values & set(rounds[0])
