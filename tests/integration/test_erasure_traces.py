"""An erasure leaves no id in Redis key names, even without a pseudonym key. A request for an
id no event can carry (over the id length limit), or on another partition than the one Kafka's
default partitioner gives its key (where the customer's state is not), is dead-lettered and
leaves nothing else: no key, no marker, no tombstone that would claim an erasure."""

import zlib

import orjson
import pytest
from aiokafka import TopicPartition

from tests.integration.live_support import (
    NOW,
    PARTITIONS,
    ManualClock,
    Produced,
    all_committed,
    read_all,
    running,
    wait_until,
)
from worker import kafka
from worker.core.timeutil import format_ms
from worker.kafka import partition_of
from worker.redis.client import connect
from worker.service import Worker
from worker.settings import Settings
from worker.store import store_for

pytestmark = pytest.mark.integration
WHO = "alice@example.com"
HUGE = "h" * 100_000


async def test_an_erasure_leaves_no_id_in_a_key_and_an_impossible_id_leaves_nothing(
    settings: Settings,
) -> None:
    order = {
        "event_id": "o1",
        "customer_id": WHO,
        "occurred_at": format_ms(NOW - 3_600_000),
        "amount": "25.00",
        "currency": "USD",
        "status": "paid",
    }
    producer = kafka.producer(settings, max_request_size=1024 * 1024)
    await producer.start()
    ends: dict[TopicPartition, int] = {}
    try:
        sent = await producer.send_and_wait(
            settings.topic_orders,
            orjson.dumps(order),
            key=WHO.encode(),
            partition=partition_of(WHO, PARTITIONS),
        )
        ends[TopicPartition(sent.topic, sent.partition)] = sent.offset + 1
        # bob as a CRC32 (librdkafka) producer places him: 0, where murmur2 says 2.
        for customer_id, partition in (
            (HUGE, partition_of(HUGE, PARTITIONS)),
            ("bob", zlib.crc32(b"bob") % PARTITIONS),
            (WHO, partition_of(WHO, PARTITIONS)),
        ):
            sent = await producer.send_and_wait(
                settings.topic_erasures,
                orjson.dumps({"customer_id": customer_id}),
                key=customer_id.encode(),
                partition=partition,
            )
            ends[TopicPartition(sent.topic, sent.partition)] = sent.offset + 1
    finally:
        await producer.stop()

    worker = Worker(settings, ManualClock(NOW))
    async with running(worker):
        await wait_until(lambda: all_committed(settings, Produced(ends)), 90, "offsets committed")
        changes = await read_all(settings, settings.topic_changes, timeout=1.0)
        dlq = await read_all(settings, settings.topic_dlq, timeout=1.0)

    tombstones = [r.key for r in changes if r.value is None]
    assert tombstones == [WHO.encode()]  # none for the refused requests
    refused = {r.key: dict(r.headers)["dlq.error.class"] for r in dlq}
    assert refused == {HUGE.encode(): b"invalid_value", b"bob": b"wrong_partition"}
    client = connect(settings)
    try:
        store = store_for(settings, client)
        seen = await store.read_checked(partition_of(WHO, PARTITIONS), [WHO])
        assert seen.states == [None] and seen.erased == {WHO}
        names = [k async for k in client.scan_iter()]
    finally:
        await client.aclose()
    assert names
    assert not [k for k in names if b"alice" in k or b"hhhh" in k or b"bob" in k], names
    assert len([k for k in names if b":x:" in k]) == 1  # alice's marker only
    assert max(len(k) for k in names) < 100
