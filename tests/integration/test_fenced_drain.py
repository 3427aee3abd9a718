"""A relay draining a partition's outbox that another worker has taken meanwhile stops at the
fenced trim, on a real broker and redis-server. It once read the same outbox again and again
(the trim is what moves a drain on), producing its records each time: a chaos run spun there
for minutes, inside the take that a rebalance waits for."""

from __future__ import annotations

import asyncio

import pytest
import redis.asyncio as aioredis

from tests.integration.live_support import read_all
from worker import kafka
from worker.core.batch import Outcome
from worker.core.outbox import OutRecord
from worker.core.rules import load_rules
from worker.live.partitions import Partitions
from worker.live.relay import Relay, topics_of
from worker.live.retry import Health
from worker.live.storage import Storage
from worker.metrics import Metrics
from worker.settings import Settings
from worker.store import Store

pytestmark = pytest.mark.integration

RULES = load_rules(None)


async def test_a_fenced_drain_stops_instead_of_relaying_the_outbox_again(
    settings: Settings,
) -> None:
    client = aioredis.from_url(settings.redis_url)
    store = Store(client, settings.redis_prefix)
    await store.library.ensure()
    partitions, metrics = Partitions(), Metrics()
    health = Health(metrics)
    storage = Storage(store, partitions, health, metrics, lambda: RULES.calendar)
    claim = await store.claim(0)
    partitions.took(0, claim)
    out = [OutRecord(settings.topic_classes, b"k", f"r{i}".encode()) for i in range(3)]
    assert await storage.commit(claim, Outcome(out=out))
    await store.claim(0)  # a newer owner, before this one's relay drained the outbox
    consumer = kafka.consumer(settings)
    producer = kafka.producer(settings)
    await consumer.start()
    await producer.start()
    try:
        relay = Relay(
            consumer=consumer,
            producer=producer,
            storage=storage,
            partitions=partitions,
            health=health,
            metrics=metrics,
            topics=topics_of(settings),
        )
        await asyncio.wait_for(relay.drain(claim), 30)
        assert len(await store.outbox(0, 10)) == 3  # left to the new owner's drain
    finally:
        await producer.stop()
        await consumer.stop()
        await client.aclose()
    assert partitions.running() == {}  # dropped, for the new owner
    relayed = await read_all(settings, settings.topic_classes)
    assert [r.value for r in relayed] == [b"r0", b"r1", b"r2"]  # once, not again and again
