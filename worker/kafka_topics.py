"""The worker's topics in one place: which are co-partitioned, creating them, checking counts."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Sequence
from typing import Any, Final

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError

from worker.kafka import admin, start_checked
from worker.settings import PREFIX, Settings, SettingsError

TOPIC_READY_S: Final = 30.0  # how long created topics may take to show leaders everywhere


class NotCoPartitioned(SettingsError):
    """Topics that must have one partition count have several: the worker keeps a customer's
    state under the input partition, so a customer's records on a topic with another count
    land on a partition that is not theirs (dead-lettered as wrong_partition)."""


async def ensure_topics(settings: Settings, partitions: int) -> None:
    """Create the topics if missing, each replicated SEGMENT_WORKER_TOPIC_REPLICATION times
    (``min.insync.replicas`` is the broker's): inputs, changes, classes and erasure requests
    with ``partitions`` each (co-partitioned), the dead-letter topic with one. The classes
    topic is compacted: the newest record per customer is the customer's current classes."""
    client = admin(settings)
    await start_checked(settings, client.start)
    replicas = settings.topic_replication
    try:
        wanted = [
            NewTopic(settings.topic_orders, partitions, replicas),
            NewTopic(settings.topic_visits, partitions, replicas),
            NewTopic(settings.topic_profiles, partitions, replicas),
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
            await await_leaders(client, [t.name for t in missing])
    finally:
        await client.close()


async def await_leaders(
    client: AIOKafkaAdminClient, names: Sequence[str], timeout_s: float = TOPIC_READY_S
) -> None:
    """Return once the metadata lists every partition of the topics ``names`` with a leader.
    Kafka answers CreateTopics when its controller has a topic, and a broker that has not
    applied it yet describes the topic as unknown, with no partitions."""
    deadline = time.monotonic() + timeout_s
    while not _led(await client.describe_topics(list(names))):
        if time.monotonic() > deadline:
            raise TimeoutError(f"topics {sorted(names)}: no leaders after {timeout_s:g} s")
        await asyncio.sleep(0.05)


def _led(described: list[dict[str, Any]]) -> bool:
    """Whether every described topic is known and each of its partitions has a leader."""
    return all(
        not t["error_code"] and t["partitions"] and all(p["leader"] >= 0 for p in t["partitions"])
        for t in described
    )


def co_partitioned_topics(settings: Settings) -> tuple[str, ...]:
    """The topics a customer's records reach the worker on: each must have one partition
    count (docs/contracts.md)."""
    return (
        settings.topic_orders,
        settings.topic_visits,
        settings.topic_profiles,
        settings.topic_erasures,
    )


def known_count(consumer: AIOKafkaConsumer, settings: Settings) -> int | None:
    """The largest partition count of the co-partitioned topics in ``consumer``'s metadata
    as it stands (no request: refreshed every ``metadata_max_age_ms``); None if it knows none
    of them yet."""
    found = (consumer.partitions_for_topic(topic) for topic in co_partitioned_topics(settings))
    return max((len(partitions) for partitions in found if partitions), default=None)


async def partition_counts(client: AIOKafkaProducer, settings: Settings) -> dict[str, int]:
    """The partition count of each co-partitioned topic that exists, asked through the
    started ``client``; NotCoPartitioned, naming every count, if they differ."""
    metadata = await client.client.fetch_all_metadata()
    counts = {
        name: len(found)
        for name in co_partitioned_topics(settings)
        if (found := metadata.partitions_for_topic(name))
    }
    if len(set(counts.values())) > 1:
        listed = ", ".join(f"{name!r} has {count}" for name, count in counts.items())
        raise NotCoPartitioned(
            f"{PREFIX}TOPIC_*: the input and erasure topics must have the same partition count "
            f"(co-partitioned, docs/contracts.md), but {listed}; create them with one count"
        )
    return counts
