"""A worker joining a group that Tansu holds with a departed leader (the follower left, then
the leader; docs/tansu-group-stall.md) never gets partitions: it must say so, and still stop."""

import asyncio
import logging
from dataclasses import replace

import pytest
from aiokafka import AIOKafkaConsumer
from aiokafka.coordinator.assignors.range import RangePartitionAssignor

from tests.integration.live_support import NOW, ManualClock, running, wait_until
from worker.live.fetch import REBALANCE_STUCK_TIMEOUTS
from worker.service import Worker
from worker.settings import Settings
from worker.tools.apache_kafka import ApacheKafka
from worker.tools.embedded import Broker

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]


async def member(settings: Settings) -> AIOKafkaConsumer:
    consumer = AIOKafkaConsumer(
        settings.topic_orders,
        bootstrap_servers=settings.kafka_bootstrap,
        group_id=settings.group_id,
        session_timeout_ms=settings.session_timeout_ms,
        heartbeat_interval_ms=settings.heartbeat_interval_ms,
        rebalance_timeout_ms=settings.rebalance_timeout_ms,
        enable_auto_commit=False,
        partition_assignment_strategy=(RangePartitionAssignor,),  # the worker's
    )
    await consumer.start()
    return consumer


async def test_a_worker_in_a_group_with_a_departed_leader_says_so_and_stops(
    broker: ApacheKafka | Broker, settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    if not isinstance(broker, Broker):
        pytest.skip("Tansu's group coordinator only (Apache Kafka clears a departed leader)")
    settings = replace(settings, rebalance_timeout_ms=2000)
    members: list[AIOKafkaConsumer] = []

    async def all_assigned() -> bool:
        await asyncio.gather(*(m.getmany(timeout_ms=100) for m in members))
        return all(m.assignment() for m in members)

    members.append(await member(settings))  # A, the leader
    await wait_until(all_assigned, 30, "A assigned")
    members.append(await member(settings))  # B, a follower
    await wait_until(all_assigned, 30, "A and B assigned")
    leader, follower = members
    await follower.stop()  # the group goes Forming with A kept as leader
    await leader.stop()  # A leaves; Tansu keeps it as the leader of nobody

    caplog.set_level(logging.WARNING, logger="segment_worker")
    worker = Worker(settings, ManualClock(NOW))
    limit = REBALANCE_STUCK_TIMEOUTS * settings.rebalance_timeout_ms / 1000
    async with running(worker, timeout=10):  # a stop is obeyed within 10 s

        def reported() -> bool:
            return any("no partition assignment" in r.getMessage() for r in caplog.records)

        await wait_until(reported, limit + 20, "the stuck rebalance reported")
        assert not worker.pipeline.owned_partitions()
