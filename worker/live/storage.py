"""The partition's state in Redis: reading customers, the one atomic commit of an outcome,
fencing by a newer owner, and noticing that Redis came back as a different server."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterable

from worker.core.batch import Outcome
from worker.core.codec import decode_state, encode_state
from worker.core.state import CustomerState
from worker.core.timeutil import Calendar
from worker.errors import SegmentWorkerError
from worker.live.partitions import Partitions
from worker.live.retry import Health
from worker.metrics import Metrics
from worker.redis.claims import Claim, Fenced, ServerChanged
from worker.store import Store

log = logging.getLogger("segment_worker")


class RedisReset(SegmentWorkerError):
    """Raised when Redis answers as a different server than the one our partitions were taken
    on (restarted, possibly without its last writes), on a read or on a write it refused:
    every partition is taken again."""


class Storage:
    """Reads and commits for the owned partitions, through the store."""

    def __init__(
        self,
        store: Store,
        partitions: Partitions,
        health: Health,
        metrics: Metrics,
        calendar: Callable[[], Calendar],
    ) -> None:
        self.store, self.partitions, self.health, self.metrics = store, partitions, health, metrics
        self.calendar = calendar  # the shop calendar of the rules in force: due days -> instants
        # Per partition, the due instants of the customers last read or committed there: the
        # bucket each is indexed under, which the next commit takes them out of.
        self._indexed: dict[int, dict[str, int]] = {}

    async def guard(self) -> None:
        """After a Redis failure, before writing again: if Redis came back as a different
        server (restarted, possibly having lost its last second of writes, or restored from
        an older copy), raise :class:`RedisReset`, so that every partition is taken again and
        input is re-read from the offsets Redis now holds. Re-reading is safe: applying an
        event twice changes nothing."""
        if not self.health.suspect:
            return
        running = self.partitions.running()
        current = {p: await self.store.server_id(p) for p in running}
        self.health.suspect = False
        for partition, run_id in current.items():
            state = self.partitions.get(partition)
            if state is not None and run_id != state.redis_id:
                raise RedisReset(run_id)

    async def load(
        self, partition: int, customer_ids: list[str]
    ) -> dict[str, CustomerState | None]:
        return (await self.read(partition, customer_ids))[0]

    async def read(
        self, partition: int, customer_ids: list[str]
    ) -> tuple[dict[str, CustomerState | None], set[str]]:
        """The customers' states, and which of the unknown ones were erased."""
        if not customer_ids:
            return {}, set()
        seen = await self.health.timed("read", self.store.read_checked(partition, customer_ids))
        state = self.partitions.get(partition)
        if state is not None and seen.run_id != state.redis_id:
            raise RedisReset(seen.run_id)  # restarted since we took it: take it again first
        states = {
            cid: None if blob is None else decode_state(cid, blob)
            for cid, blob in zip(customer_ids, seen.states, strict=True)
        }
        start = self.calendar().start_ms
        self._indexed[partition] = {
            cid: start(s.due_day) for cid, s in states.items() if s and s.due_day is not None
        }
        return states, seen.erased

    async def commit(
        self, claim: Claim, outcome: Outcome, found: dict[str, int] | None = None
    ) -> bool:
        """The one atomic write; False if another worker now owns the partition. ``found``:
        the instants the timer found customers under, where they differ from their states'."""
        await self.partitions.settled([claim.partition])  # the outbox is relayed in commit order
        acked, relayed = self.partitions.take_acked(claim.partition)
        indexed = self._indexed.setdefault(claim.partition, {})
        if found:
            indexed.update(found)
        due = outcome.due_ms(self.calendar())
        try:
            await self.health.timed(
                "commit",
                self.store.commit(
                    claim,
                    states={cid: encode_state(s) for cid, s in outcome.states.items()},
                    due=due,
                    indexed=indexed,
                    outbox=[r.encode() for r in outcome.out],
                    offsets=outcome.offsets,
                    populations=outcome.population_deltas(),
                    acked=acked,
                    relayed=relayed,
                ),
            )
        except Fenced:
            self.fenced(claim.partition)
            return False
        except ServerChanged as exc:
            raise RedisReset(exc.current) from None
        except BaseException:
            if acked or relayed is not None:
                self.partitions.trim_failed(claim.partition)
            raise
        for topic, offset in outcome.offsets.items():
            claim.offsets[topic] = max(claim.offsets.get(topic, 0), offset)
        for cid, at in due.items():
            if at is None:
                indexed.pop(cid, None)
            else:
                indexed[cid] = at
        return True

    async def erase(self, claim: Claim, customer_id: str, ttl_ms: int) -> bool:
        """Delete a customer's state and due entry, leaving a marker; False if fenced."""
        indexed = self._indexed.get(claim.partition, {}).pop(customer_id, None)
        try:
            await self.health.timed("erase", self.store.erase(claim, customer_id, ttl_ms, indexed))
        except Fenced:
            self.fenced(claim.partition)
            return False
        except ServerChanged as exc:
            raise RedisReset(exc.current) from None
        return True

    async def begin_rules(self, claim: Claim, version: str) -> None:
        """Record that a re-evaluation under ``version`` begins, before any customer of the
        partition is classified under it (a fenced one leaves the partition to the new owner)."""
        await self._rules_mark(claim, self.store.begin_rules(claim, version))

    async def mark_rules(self, claim: Claim, version: str) -> None:
        """Record that the partition's customers were classified by ``version`` (a fenced mark
        leaves it to the new owner, which re-evaluates)."""
        await self._rules_mark(claim, self.store.mark_rules(claim, version))

    async def _rules_mark(self, claim: Claim, call: Awaitable[None]) -> None:
        try:
            await self.health.timed("mark", call)
        except Fenced:
            self.fenced(claim.partition)
        except ServerChanged as exc:
            raise RedisReset(exc.current) from None

    async def ack(self, claim: Claim, count: int, relayed: int | None = None) -> bool:
        """Trim relayed records from the outbox; False if fenced (a fenced trim leaves them
        to the new owner)."""
        try:
            await self.health.timed("ack", self.store.ack_outbox(claim, count, relayed))
        except Fenced:
            self.fenced(claim.partition)
            return False
        except ServerChanged as exc:
            raise RedisReset(exc.current) from None
        return True

    async def trim(self, partitions: Iterable[int] | None = None) -> None:
        """Trim what the relays had acknowledged and no commit trimmed yet (of
        ``partitions``, else all): when idle, before a drain reads the outbox, and before a
        partition is let go, so that its next owner does not read those records again. The
        partitions' calls go side by side (one round trip, see Store)."""
        running = self.partitions.running()
        numbers = sorted(running if partitions is None else partitions)
        await asyncio.gather(*(self._trim(p, running[p]) for p in numbers if p in running))

    async def _trim(self, partition: int, claim: Claim) -> None:
        acked, relayed = self.partitions.take_acked(partition)
        if not acked and relayed is None:
            return
        try:
            await self.ack(claim, acked, relayed)
        except BaseException:
            self.partitions.trim_failed(partition)
            raise

    def fenced(self, partition: int) -> None:
        """A newer owner took the partition: drop it until the rebalance revokes it."""
        self.metrics.fenced.inc()
        log.warning("partition %d: fenced by a newer owner; dropping it", partition)
        self.partitions.stop_running(partition)
