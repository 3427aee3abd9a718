"""`ensure_topics` on a 3-node Apache Kafka cluster: every topic replicated
SEGMENT_WORKER_TOPIC_REPLICATION times, min.insync.replicas the broker's, the classes topic
compacted."""

import asyncio
from dataclasses import replace

import pytest

from tests.integration.live_support import topic_configs
from worker import kafka
from worker.kafka_topics import ensure_topics
from worker.settings import Settings
from worker.tools.apache_kafka import ApacheKafka

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]


async def test_every_topic_gets_the_configured_replication_on_a_cluster() -> None:
    cluster = ApacheKafka(3)
    await asyncio.to_thread(cluster.start)
    try:
        settings = replace(Settings(), kafka_bootstrap=cluster.bootstrap, topic_replication=3)
        await ensure_topics(settings, 4)
        names = [
            settings.topic_orders,
            settings.topic_visits,
            settings.topic_changes,
            settings.topic_dlq,
            settings.topic_erasures,
            settings.topic_classes,
        ]
        admin = kafka.admin(settings)
        await admin.start()
        try:
            described = {t["topic"]: t["partitions"] for t in await admin.describe_topics(names)}
            configs = await topic_configs(admin, names, ["cleanup.policy", "min.insync.replicas"])
        finally:
            await admin.close()
        assert {name: len(parts) for name, parts in described.items()} == {
            **dict.fromkeys(names, 4),
            settings.topic_dlq: 1,
        }
        for name, parts in described.items():
            assert [len(p["replicas"]) for p in parts] == [3] * len(parts), name
            assert configs[name]["min.insync.replicas"] == "2", name
            policy = "compact" if name == settings.topic_classes else "delete"
            assert configs[name]["cleanup.policy"] == policy, name
    finally:
        await asyncio.to_thread(cluster.stop)
