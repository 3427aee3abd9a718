"""Redis, not the group, says where a partition's input resumes: when the group's committed
offsets are ahead of Redis (Redis lost writes, or all of them), nothing between is skipped.

aiokafka starts fetching a newly assigned partition from the group's committed offset while
the rebalance listener still runs, so a fetch can hand the loop records from there before the
take has moved the consumer to Redis's offsets. Such records must not be applied: the input
between Redis's offsets and the group's would be jumped over, and its offsets committed past
it (docs/chaos.md, "Two visits lost in one CI run")."""

from __future__ import annotations

import pytest
from aiokafka import TopicPartition

from tests.integration.live_support import (
    NOW,
    ManualClock,
    all_applied,
    assert_matches_replay,
    one_day_of_traffic,
    produce,
    running,
    wait_until,
)
from worker import kafka
from worker.service import Worker
from worker.settings import Settings

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]


async def commit_group_offsets(settings: Settings, offsets: dict[TopicPartition, int]) -> None:
    """Commit ``offsets`` for the worker's group as a member that has left would have."""
    consumer = kafka.consumer(settings, group_id=settings.group_id, enable_auto_commit=False)
    await consumer.start()
    try:
        consumer.assign(list(offsets))
        await consumer.commit(offsets)
    finally:
        await consumer.stop()


async def test_an_empty_redis_behind_the_groups_offsets_rereads_everything(
    settings: Settings,
) -> None:
    events = one_day_of_traffic(300, seed=12, orders_only=True)
    produced = await produce(settings, events)
    # The group had consumed half of each partition into a Redis that has since lost it all.
    await commit_group_offsets(settings, {tp: end // 2 for tp, end in produced.ends.items()})
    async with running(Worker(settings, ManualClock(NOW))):
        await wait_until(lambda: all_applied(settings, produced), 90, "every event applied")
    await assert_matches_replay(settings, events)
