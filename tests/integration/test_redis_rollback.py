"""A write prepared on one Redis server process must not land on the next one.

The chaos run's Redis rollback (kill -9, restore an AOF copy ~1.5 s old, start) once lost
input on one partition: a batch read its customers from the old server, Redis was rolled
back, and the batch's commit reached the restored server anyway. redis-py hands out pooled
connections after reconnecting any whose peer went away, so the commit met no error; the
epoch in the copy was the one the batch held, so fencing let it through; and the commit's
input offsets (``max(stored, given)``) jumped over the input the copy had lost. The retake
that followed resumed after the gap and never re-read it. These tests replay that order of
events deterministically against a real redis-server."""

from __future__ import annotations

import pytest
from redis.exceptions import ConnectionError as RedisConnectionError

from tests.integration.conftest import AofStore
from worker.core.batch import Outcome
from worker.core.state import CustomerState
from worker.core.timeutil import UTC_CALENDAR
from worker.live.partitions import Partitions
from worker.live.retry import Health
from worker.live.storage import RedisReset, Storage
from worker.metrics import Metrics

pytestmark = pytest.mark.integration


async def test_a_batch_read_before_a_rollback_commits_nothing_after_it(
    aof_store: AofStore,
) -> None:
    server, _, store = aof_store
    metrics = Metrics()
    partitions = Partitions()
    storage = Storage(store, partitions, Health(metrics), metrics, lambda: UTC_CALENDAR)
    claim = await store.claim(0)
    partitions.took(0, claim)
    applied = Outcome(offsets={"visits": 100})
    applied.states["a"] = CustomerState("a")
    assert await storage.commit(claim, applied)
    server.copy_aof()
    await storage.commit(claim, Outcome(offsets={"visits": 200}))  # lost by the rollback

    # The next batch (input 200..300) reads its customers from this server ...
    states = await storage.load(0, ["a"])
    server.roll_back()
    # Another partition's call meets the dropped connection first (the worker runs its
    # partitions' batches side by side); redis-py then connects afresh, to the new server.
    with pytest.raises(RedisConnectionError):
        await store.server_id(1)
    # The batch commits after the rollback, through the same client.
    batch = Outcome(offsets={"visits": 300})
    batch.states["a"] = states["a"] or CustomerState("a")
    with pytest.raises(RedisReset):
        await storage.commit(claim, batch)
    # Nothing was written: taking the partition again resumes where the copy left off,
    # so input 100..300 is read again.
    assert (await store.claim(0)).offsets == {"visits": 100}
