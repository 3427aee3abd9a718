"""segment_worker_kafka_errors_total{op}: every failed Kafka call of the running worker is
counted once, under the call that failed, where the failure is handled: the relay's produce
and metadata calls, the loop's fetch, the offset commit; the take's read-back and partition
count by the retry that handles them. With stand-ins for the clients and Redis;
tests/integration/test_kafka_errors.py has a real broker stop answering."""

from __future__ import annotations

import asyncio
from functools import partial
from types import SimpleNamespace
from typing import Any

import pytest
from aiokafka import TopicPartition
from aiokafka.errors import (
    CommitFailedError,
    KafkaConnectionError,
    KafkaError,
    KafkaTimeoutError,
    TopicAuthorizationFailedError,
)
from redis.exceptions import ConnectionError as RedisConnectionError

from worker.clock import WallClock
from worker.core.outbox import OutRecord
from worker.core.rules import load_rules
from worker.live import Pipeline
from worker.live.partitions import Partitions
from worker.live.relay import Relay, topics_of
from worker.live.retry import KAFKA_OPS, Health
from worker.live.storage import Storage
from worker.metrics import Metrics
from worker.redis.claims import Claim
from worker.settings import Settings

RULES = load_rules(None)
SETTINGS = Settings()
TOPICS = topics_of(SETTINGS)


def errors(metrics: Metrics) -> dict[str, float]:
    """segment_worker_kafka_errors_total by op, the ops never counted left out."""
    counted = {
        sample.labels["op"]: sample.value
        for family in metrics.kafka_errors.collect()
        for sample in family.samples
        if sample.name.endswith("_total")
    }
    return {op: n for op, n in counted.items() if n}


class Batch:
    """What the relay needs of aiokafka's BatchBuilder."""

    def __init__(self) -> None:
        self.records = 0

    def append(self, **_: object) -> object:
        self.records += 1
        return object()

    def close(self) -> None:
        pass

    def record_count(self) -> int:
        return self.records


class Producer:
    """An AIOKafkaProducer whose next calls fail with the errors queued in ``failures``
    (``partitions_for``, or ``ack``: the broker's answer to a batch sent)."""

    def __init__(self) -> None:
        self.failures: dict[str, list[BaseException]] = {"partitions_for": [], "ack": []}
        self.delivered: list[tuple[str, int, int]] = []  # topic, partition, records
        self.offsets: dict[tuple[str, int], int] = {}

    def _fail(self, call: str) -> None:
        if self.failures[call]:
            raise self.failures[call].pop(0)

    async def partitions_for(self, topic: str) -> set[int]:
        self._fail("partitions_for")
        return {0, 1, 2, 3}

    def create_batch(self) -> Batch:
        return Batch()

    async def send_batch(self, batch: Batch, topic: str, partition: int) -> asyncio.Future[Any]:
        future = asyncio.get_running_loop().create_future()
        if self.failures["ack"]:
            future.set_exception(self.failures["ack"].pop(0))
            return future
        offset = self.offsets.get((topic, partition), 0)
        self.offsets[(topic, partition)] = offset + batch.record_count()
        self.delivered.append((topic, partition, batch.record_count()))
        future.set_result(SimpleNamespace(topic=topic, partition=partition, offset=offset))
        return future


class Consumer:
    """An AIOKafkaConsumer whose commit and getmany raise what is queued for them."""

    def __init__(self) -> None:
        self.commit_failures: list[BaseException] = []
        self.committed: list[dict[TopicPartition, int]] = []
        self.on_getmany: Any = None

    async def commit(self, offsets: dict[TopicPartition, int]) -> None:
        if self.commit_failures:
            raise self.commit_failures.pop(0)
        self.committed.append(dict(offsets))

    async def getmany(self, **_: object) -> dict[TopicPartition, list[Any]]:
        return await self.on_getmany()  # type: ignore[no-any-return]


class Store:
    """The outbox part of worker.store.Store: what a relay that failed drains."""

    def __init__(self, outbox: list[bytes]) -> None:
        self.stored = outbox

    async def outbox(self, partition: int, limit: int) -> list[bytes]:
        return self.stored[:limit]

    async def ack_outbox(self, claim: Claim, count: int, relayed: int | None = None) -> None:
        del self.stored[:count]


def relay_of(
    producer: Producer, consumer: Consumer, records: list[OutRecord]
) -> tuple[Relay, Claim, Metrics, Health, Store]:
    """A relay of partition 0, whose outbox in "Redis" holds ``records``, committed and not
    relayed yet, as a batch leaves it."""
    metrics = Metrics()
    health, partitions = Health(metrics), Partitions()
    store = Store([r.encode() for r in records])
    storage = Storage(store, partitions, health, metrics, lambda: RULES.calendar)  # type: ignore[arg-type]
    claim = Claim(0, 1, {}, "run-id")
    partitions.took(0, claim).backlog = False  # taken: the take's drain is done
    relay = Relay(
        consumer=consumer,
        producer=producer,
        storage=storage,
        partitions=partitions,
        health=health,
        metrics=metrics,
        topics=TOPICS,
    )
    return relay, claim, metrics, health, store


RECORDS = [
    OutRecord(TOPICS.changes, b"c-1", b'{"event_id": "e-1"}'),
    OutRecord(TOPICS.classes, b"c-1", b'{"class": 1}'),
    OutRecord(TOPICS.dlq, b"c-2", b"{not json"),
]


@pytest.mark.parametrize(
    "error",
    [KafkaTimeoutError(), TopicAuthorizationFailedError(TOPICS.dlq)],
    ids=["timeout", "refused"],
)
async def test_a_failed_produce_is_counted_once_and_the_retry_relays_it(
    error: KafkaError,
) -> None:
    """Counted where the send failed, not again by the retry that handles it (the refused
    write is raised again, naming the ACL, from the producer's error: still one failure)."""
    producer = Producer()
    relay, claim, metrics, health, store = relay_of(producer, Consumer(), RECORDS)
    producer.failures["ack"].append(error)
    await health.retry("relay", partial(relay.relay, claim, RECORDS))
    assert errors(metrics) == {"produce": 1}
    assert store.stored == []  # relayed on the retry (again, where it had gone), and trimmed
    assert {topic for topic, _, _ in producer.delivered} == {r.topic for r in RECORDS}


async def test_a_failed_metadata_call_of_the_relay_is_counted_as_metadata() -> None:
    producer = Producer()
    relay, claim, metrics, health, store = relay_of(producer, Consumer(), RECORDS)
    producer.failures["partitions_for"].append(KafkaTimeoutError())
    await health.retry("relay", partial(relay.relay, claim, RECORDS))
    assert errors(metrics) == {"metadata": 1}
    assert store.stored == []


async def test_a_refused_offset_commit_is_counted_and_left_to_the_next_one() -> None:
    consumer = Consumer()
    relay, claim, metrics, _, _ = relay_of(Producer(), consumer, [])
    consumer.commit_failures.append(CommitFailedError("the group has rebalanced"))
    await relay.offsets_relayed(claim.partition, {TOPICS.orders: 7})
    assert errors(metrics) == {"commit": 1}
    assert consumer.committed == []
    await relay.offsets_relayed(claim.partition, {TOPICS.orders: 9})
    await relay.commit_offsets()
    assert consumer.committed == [{TopicPartition(TOPICS.orders, 0): 9}]
    assert errors(metrics) == {"commit": 1}


@pytest.mark.parametrize(
    ("step", "op"),
    [("read back", "fetch"), ("partitions", "metadata"), ("take", "other")],
)
async def test_the_retry_counts_kafka_errors_no_call_site_counted(step: str, op: str) -> None:
    """The take's read-back of the change topic and its partition count call Kafka from
    worker/live/ownership.py under a retry, which counts them; a Kafka error in any other
    retried step is counted as ``other`` rather than not at all. A Redis error is none."""
    metrics = Metrics()
    health = Health(metrics)
    failures: list[BaseException] = [
        KafkaConnectionError("Unable to bootstrap"),
        RedisConnectionError("refused"),
        KafkaError(),
    ]

    async def attempt() -> str:
        if failures:
            raise failures.pop(0)
        return "done"

    assert await health.retry(step, attempt) == "done"
    assert errors(metrics) == {op: 2}
    assert op in KAFKA_OPS


async def test_a_failed_fetch_of_the_loop_is_counted_as_fetch() -> None:
    consumer = Consumer()
    metrics = Metrics()
    pipeline = Pipeline(
        SETTINGS,
        RULES,
        Store([]),  # type: ignore[arg-type]
        consumer=consumer,
        producer=Producer(),
        reader=Consumer,
        metrics=metrics,
        clock=WallClock(),
    )

    async def getmany() -> None:
        pipeline.stop()  # after this fetch
        raise TopicAuthorizationFailedError(SETTINGS.topic_orders)

    consumer.on_getmany = getmany
    await asyncio.wait_for(pipeline.run(), 10)  # backs off 1 s, then sees the stop
    assert errors(metrics) == {"fetch": 1}
    assert not pipeline.healthy
