"""The consumer loop's fetch, bounded in time: aiokafka's getmany waits without limit while
the group rebalances, and a rebalance that never ends (docs/tansu-group-stall.md) must be
reported and must not keep the loop from a stop or a timer tick."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
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


class Pacing:
    """While input trickles in, a fetch at most every ``linger_ms``. Each partition batch
    costs CPU beyond its events (a Redis round trip to read, one to commit, a produce, asyncio
    tasks): fetching again as soon as one record had arrived spent ~0.7 of a core on 1,500
    events/s in batches of a few events; 10 ms between fetches spent ~0.47, 20 ms ~0.37
    (docs/benchmarks.md, "Seventh pass"). A fetch that brought a partition batch's worth or
    more is a backlog: the next one goes at once."""

    def __init__(
        self, linger_ms: int, batch_size: int, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._linger, self._batch_size, self._clock = linger_ms / 1000, batch_size, clock
        self._next = 0.0  # the clock's time before which the next fetch waits

    def delay(self) -> float:
        """Seconds the next fetch waits."""
        return max(0.0, self._next - self._clock())

    def fetched(self, began: float, count: int) -> None:
        """A fetch that began at ``began`` (this pacing's clock) brought ``count`` records."""
        self._next = began + self._linger if count < self._batch_size else 0.0

    async def fetch(
        self, consumer: AIOKafkaConsumer, listener: Listener, settings: Settings, max_records: int
    ) -> Batch | None:
        """:func:`fetch`, after the wait the last fetch calls for."""
        if (rest := self.delay()) > 0:
            await asyncio.sleep(rest)
        began = self._clock()
        batch = await fetch(consumer, listener, settings, max_records)
        self.fetched(began, 0 if batch is None else sum(map(len, batch.values())))
        return batch


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
