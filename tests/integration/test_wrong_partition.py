"""A producer that partitions with CRC32 (librdkafka's default, so confluent-kafka's and kcat's)
puts some customers on another partition than Kafka's default partitioner (murmur2), which the
worker, its lookups and its erasures use. The live worker refuses such a record to the DLQ
(`wrong_partition`) instead of starting a second state for the customer."""

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


def consistent_random(key: bytes, partitions: int) -> int:
    """librdkafka's default partitioner for a non-empty key: CRC32 of the key."""
    return zlib.crc32(key) % partitions


async def test_a_crc32_partitioned_record_is_dead_lettered_and_leaves_no_state(
    settings: Settings,
) -> None:
    customers = ["bob", "cus_0"]  # CRC32 and murmur2 disagree on bob (0 vs 2), agree on cus_0
    assert consistent_random(b"bob", PARTITIONS) != partition_of("bob", PARTITIONS)
    assert consistent_random(b"cus_0", PARTITIONS) == partition_of("cus_0", PARTITIONS)
    producer = kafka.producer(settings)
    await producer.start()
    ends: dict[TopicPartition, int] = {}
    try:
        for n, customer in enumerate(customers):
            order = {
                "event_id": f"o{n}",
                "customer_id": customer,
                "occurred_at": format_ms(NOW - 3_600_000),
                "amount": "25.00",
                "currency": "USD",
                "status": "paid",
            }
            key = customer.encode()
            meta = await producer.send_and_wait(
                settings.topic_orders,
                orjson.dumps(order),
                key=key,
                partition=consistent_random(key, PARTITIONS),
            )
            ends[TopicPartition(meta.topic, meta.partition)] = meta.offset + 1
    finally:
        await producer.stop()

    worker = Worker(settings, ManualClock(NOW))
    async with running(worker):
        await wait_until(lambda: all_committed(settings, Produced(ends)), 90, "offsets committed")
        dlq = await read_all(settings, settings.topic_dlq, timeout=1.0)
        seen = [dict(r.headers) for r in dlq]
        assert [(h["dlq.source.partition"], h["dlq.error.class"]) for h in seen] == [
            (b"0", b"wrong_partition")
        ]
        assert [r.key for r in dlq] == [b"bob"]
        exposition = worker.metrics.exposition().decode()
        assert 'segment_worker_dead_letters_total{reason="wrong_partition"} 1.0' in exposition

    client = connect(settings)
    store = store_for(settings, client)
    try:
        held = {
            customer: [p for p in range(PARTITIONS) if await store.get(p, customer) is not None]
            for customer in customers
        }
    finally:
        await client.aclose()
    assert held == {"bob": [], "cus_0": [partition_of("cus_0", PARTITIONS)]}
