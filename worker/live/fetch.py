"""The consumer loop's fetch, bounded in time: aiokafka's getmany waits without limit while
the group rebalances, and a rebalance that never ends (docs/tansu-group-stall.md) must be
reported and must not keep the loop from a stop or a timer tick."""

from __future__ import annotations

import asyncio
import logging
from typing import Final

from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition

from worker.live.ownership import Listener
from worker.settings import Settings

log = logging.getLogger("segment_worker")
Batch = dict[TopicPartition, list[ConsumerRecord[bytes, bytes]]]
REBALANCE_POLL_S: Final = 1.0  # how long past the batch wait a getmany may block
REBALANCE_STUCK_TIMEOUTS: Final = 3  # rebalance timeouts after which a rebalance is stuck


async def fetch(
    consumer: AIOKafkaConsumer, listener: Listener, settings: Settings, max_records: int
) -> Batch | None:
    """One getmany of up to ``max_records``; None if it did not return in time (the group is
    rebalancing), after reporting a rebalance that has run too long."""
    try:
        return await asyncio.wait_for(
            consumer.getmany(timeout_ms=settings.batch_wait_ms, max_records=max_records),
            settings.batch_wait_ms / 1000 + REBALANCE_POLL_S,
        )
    except TimeoutError:
        report_long_rebalance(listener, settings)
        return None


def report_long_rebalance(listener: Listener, settings: Settings) -> None:
    """A rebalance normally ends within the rebalance timeout; one past several is stuck
    (Tansu can keep a departed member as the group's leader: docs/tansu-group-stall.md)."""
    took = listener.overdue(REBALANCE_STUCK_TIMEOUTS * settings.rebalance_timeout_ms / 1000)
    if took is not None:
        log.warning(
            "no partition assignment from the group coordinator after %.0f s of "
            "rebalancing (group %s); consuming nothing until one comes",
            took,
            settings.group_id,
        )
