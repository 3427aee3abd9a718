"""Everything Kafka-specific that is not the hot path: how a customer maps to a partition, the
only place aiokafka clients are built (with the deployment's SASL/TLS), and topic admin.

The worker keeps one customer's state under the input partition the record arrived on, so
every producer of input topics and every lookup must agree on :func:`partition_of`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from typing import Any, Final

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError
from aiokafka.helpers import create_ssl_context
from aiokafka.partitioner import murmur2

from worker.settings import Settings

METADATA_TIMEOUT_MS: Final = 15_000  # one-off metadata questions of the CLI

Connection = Settings | str
"""Where a client connects: the deployment's settings (bootstrap servers, SASL and TLS), or,
for tools and tests that talk to a local plain broker, its bootstrap string."""


def partition_of(customer_id: str, partitions: int) -> int:
    """Kafka's default (Java) partitioner, so lookups find the partition the producer chose."""
    return int(murmur2(customer_id.encode()) & 0x7FFFFFFF) % partitions


def kafka_security(settings: Settings) -> dict[str, Any]:
    """Client arguments for SASL and TLS, shared by the consumer, producer and admin."""
    out: dict[str, Any] = {"security_protocol": settings.kafka_security_protocol}
    if settings.kafka_security_protocol in ("SSL", "SASL_SSL"):
        out["ssl_context"] = create_ssl_context(
            cafile=str(settings.kafka_ssl_cafile) if settings.kafka_ssl_cafile else None,
            certfile=str(settings.kafka_ssl_certfile) if settings.kafka_ssl_certfile else None,
            keyfile=str(settings.kafka_ssl_keyfile) if settings.kafka_ssl_keyfile else None,
        )
    if settings.kafka_security_protocol.startswith("SASL"):
        out["sasl_mechanism"] = settings.kafka_sasl_mechanism
        out["sasl_plain_username"] = settings.kafka_sasl_username
        out["sasl_plain_password"] = settings.kafka_sasl_password
    return out


def _connection(to: Connection) -> dict[str, Any]:
    if isinstance(to, str):
        return {"bootstrap_servers": to}
    return {"bootstrap_servers": to.kafka_bootstrap, **kafka_security(to)}


def consumer(to: Connection, *topics: str, **overrides: Any) -> AIOKafkaConsumer:
    """A consumer of ``topics`` (none: assign or subscribe later); ``overrides`` are aiokafka
    arguments."""
    return AIOKafkaConsumer(*topics, **_connection(to) | overrides)


def producer(to: Connection, **overrides: Any) -> AIOKafkaProducer:
    """A producer that waits for all in-sync replicas and, with settings, is idempotent unless
    SEGMENT_WORKER_KAFKA_IDEMPOTENCE is off (brokers without InitProducerId); ``overrides``
    are aiokafka arguments."""
    defaults: dict[str, Any] = {"acks": "all"}
    if isinstance(to, Settings):
        defaults["enable_idempotence"] = to.kafka_idempotence
    return AIOKafkaProducer(**_connection(to) | defaults | overrides)


def admin(to: Connection, **overrides: Any) -> AIOKafkaAdminClient:
    """An admin client; ``overrides`` are aiokafka arguments."""
    return AIOKafkaAdminClient(**_connection(to) | overrides)


async def ensure_topics(settings: Settings, partitions: int) -> None:
    """Create the topics if missing, each replicated SEGMENT_WORKER_TOPIC_REPLICATION times
    (``min.insync.replicas`` is the broker's): inputs, changes, classes and erasure requests
    with ``partitions`` each (co-partitioned), the dead-letter topic with one. The classes
    topic is compacted: the newest record per customer is the customer's current classes."""
    client = admin(settings)
    await client.start()
    replicas = settings.topic_replication
    try:
        wanted = [
            NewTopic(settings.topic_orders, partitions, replicas),
            NewTopic(settings.topic_visits, partitions, replicas),
            NewTopic(settings.topic_changes, partitions, replicas),
            NewTopic(settings.topic_dlq, 1, replicas),
            NewTopic(settings.topic_erasures, partitions, replicas),
            NewTopic(
                settings.topic_classes,
                partitions,
                replicas,
                topic_configs={"cleanup.policy": "compact"},
            ),
        ]
        existing = set(await client.list_topics())
        missing = [t for t in wanted if t.name not in existing]
        if missing:
            with contextlib.suppress(TopicAlreadyExistsError):
                await client.create_topics(missing)
    finally:
        await client.close()


async def send_erasures(settings: Settings, customer_ids: Sequence[str]) -> None:
    """Erasure requests, keyed by customer id so they reach the partition owning the customer."""
    client = producer(settings)
    await client.start()
    try:
        for customer_id in customer_ids:
            value = orjson.dumps({"customer_id": customer_id})
            await client.send_and_wait(settings.topic_erasures, value, key=customer_id.encode())
    finally:
        await client.stop()


async def input_partitions(settings: Settings) -> int:
    """The orders topic's partition count, which places a customer; KafkaError if Kafka
    cannot tell."""
    # A metadata question: nothing is sent, so no producer id is needed.
    client = producer(settings, request_timeout_ms=METADATA_TIMEOUT_MS, enable_idempotence=False)
    try:
        await client.start()
        return len(await client.partitions_for(settings.topic_orders))
    finally:
        await client.stop()
