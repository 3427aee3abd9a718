"""What the worker knows of each input partition it owns, in one object per partition, so
that letting a partition go drops everything about it at once."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

from aiokafka import TopicPartition

from worker.redis.claims import Claim

log = logging.getLogger("segment_worker")


@dataclass(slots=True)
class PartitionState:
    """One owned partition, from the moment it is taken until it is revoked."""

    partition: int
    redis_id: str  # run id of the Redis server the partition was taken on
    # The epoch and offsets Redis handed us when we took it; None while the partition is
    # stopped or after a newer owner fenced us: nothing of it runs then.
    claim: Claim | None = None
    backlog: bool = True  # the outbox may hold unrelayed records
    relaying: asyncio.Task[None] | None = None  # its last batch's relay
    # Relayed and acknowledged by the broker, not yet trimmed from the outbox: the next
    # commit trims them in the same call (Storage.commit), or an idle loop does.
    acked: int = 0
    relayed: int | None = None  # the change topic's offset after them, for the relay mark
    committable: dict[str, int] = field(default_factory=dict)  # relayed, not yet in the group
    reevaluate_from: int | None = None  # SCAN cursor of a re-evaluation under new rules
    stopped_until: float | None = None  # stopped on a state it cannot read: retry then
    # Input offsets (per topic) that changes already in Kafka had reached when Redis lost the
    # writes behind them: input is absorbed, unclassified, until there.
    recovering: dict[str, int] | None = None
    taken: int = 0  # Partitions.takes as of its last take


class Partitions:
    """The owned partitions, and the lock that lets one batch, take or release run at a time."""

    def __init__(self) -> None:
        self._states: dict[int, PartitionState] = {}
        self.lock = asyncio.Lock()
        # Takes so far: a fetch notes the count as it begins, so that the records of a
        # partition taken while it ran can be told apart (see Pipeline.run).
        self.takes = 0

    def __iter__(self) -> Iterator[PartitionState]:
        return iter(sorted(self._states.values(), key=lambda s: s.partition))

    def get(self, partition: int) -> PartitionState | None:
        return self._states.get(partition)

    def running(self) -> dict[int, Claim]:
        """The claims of the partitions that run (taken, neither stopped nor fenced)."""
        return {s.partition: s.claim for s in self if s.claim is not None}

    def owned(self) -> list[int]:
        return [s.partition for s in self if s.claim is not None]

    def stopped(self) -> list[int]:
        return [s.partition for s in self if s.stopped_until is not None]

    def recovering(self) -> list[int]:
        return [s.partition for s in self if s.recovering is not None]

    def reevaluating(self) -> list[int]:
        return [s.partition for s in self if s.reevaluate_from is not None]

    def took(self, partition: int, claim: Claim) -> PartitionState:
        """Record a take: a new state, or the same one again (after a stop or a Redis restart)."""
        state = self._states.get(partition)
        if state is None:
            state = self._states[partition] = PartitionState(partition, claim.server)
        state.claim, state.redis_id, state.backlog = claim, claim.server, True
        state.acked, state.relayed = 0, None  # the take's read-back and drain see to them
        state.recovering = None  # the read-back decides afresh
        self.takes += 1
        state.taken = self.takes
        return state

    def taken_since(self, takes: int) -> set[int]:
        """The partitions taken after :attr:`takes` was ``takes``."""
        return {s.partition for s in self._states.values() if s.taken > takes}

    def drop(self, partition: int) -> None:
        """Forget a revoked partition; the next owner meets its state afresh."""
        self._states.pop(partition, None)

    def stop_running(self, partition: int) -> None:
        """Nothing of the partition runs until it is taken again (fenced, or stopped)."""
        state = self._states.get(partition)
        if state is not None:
            state.claim = None

    def stop_until(self, partition: int, until: float) -> None:
        """Stop the partition, taken or not (a take that failed half-way), until ``until``
        (monotonic): it is taken again then."""
        state = self._states.setdefault(partition, PartitionState(partition, redis_id=""))
        state.claim, state.stopped_until = None, until

    def pop_committable(self, partitions: Iterable[int] | None = None) -> dict[TopicPartition, int]:
        """Remove and return the offsets relayed, not yet committed to the group (of
        ``partitions``, else all)."""
        wanted = None if partitions is None else set(partitions)
        out: dict[TopicPartition, int] = {}
        for state in self:
            if wanted is None or state.partition in wanted:
                out.update(
                    (TopicPartition(t, state.partition), o) for t, o in state.committable.items()
                )
                state.committable = {}
        return out

    def take_acked(self, partition: int) -> tuple[int, int | None]:
        """The records (and relay mark) acknowledged and not trimmed yet, now left to the
        caller's trim: two trims in flight never take the same records."""
        state = self._states.get(partition)
        if state is None:
            return 0, None
        taken = state.acked, state.relayed
        state.acked, state.relayed = 0, None
        return taken

    def trim_failed(self, partition: int) -> None:
        """A call with a trim taken by :meth:`take_acked` failed, perhaps after Redis did it:
        trimming again could take records not yet relayed, so the next relay drains the
        outbox as Redis holds it instead (records relayed twice keep their event ids)."""
        state = self._states.get(partition)
        if state is not None:
            state.backlog = True

    def any_acked(self) -> bool:
        """Whether some outbox holds relayed records not trimmed yet."""
        return any(s.acked or s.relayed is not None for s in self._states.values())

    def any_committable(self) -> bool:
        return any(s.committable for s in self._states.values())

    async def settled(
        self, partitions: Iterable[int] | None = None, *, handing_over: bool = False
    ) -> None:
        """Wait for the relays in flight (of ``partitions``, else all). A relay's error is
        raised here once, to the first caller that waits for it; ``handing_over``: only
        logged, because whoever takes the partition next relays from the outbox in Redis."""
        numbers = self._states if partitions is None else set(partitions)
        for partition in sorted(numbers):
            state = self._states.get(partition)
            task = None if state is None else state.relaying
            if state is None or task is None:
                continue
            try:
                await task
            except Exception as exc:
                if not handing_over:
                    raise
                log.warning("partition %d: relay left to the outbox: %r", partition, exc)
            finally:
                if state.relaying is task:
                    state.relaying = None
