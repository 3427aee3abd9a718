"""Taking a partition and letting it go: fencing the previous owner, reading back the changes
Kafka holds that Redis lost, relaying what the outbox still holds, resuming from the offsets
Redis holds; stopping a partition on a state it cannot read, and taking it again later.

Ownership is fenced: taking a partition bumps its epoch in Redis, and a commit carrying an
older epoch is refused, so a paused ex-owner cannot write late."""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from collections.abc import Callable, Iterable
from functools import partial
from typing import Final

from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition
from aiokafka.abc import ConsumerRebalanceListener
from aiokafka.errors import KafkaTimeoutError

from worker.core.batch import Topics
from worker.core.outbox import OutRecord
from worker.core.packing import CorruptRecord
from worker.core.reconcile import Trust, lost_window, read_back, reconcile
from worker.kafka import end_offsets, partition_of
from worker.kafka_topics import known_count
from worker.live.partitions import Partitions
from worker.live.relay import Relay
from worker.live.retry import TRANSIENT, Health
from worker.live.storage import RedisReset, Storage
from worker.metrics import Metrics
from worker.partition_count import Guard, PartitionCountChanged
from worker.redis.claims import Claim
from worker.settings import Settings

READ_BACK_SECONDS: Final = 60.0
log = logging.getLogger("segment_worker")


class Ownership:
    """Takes, stops and releases partitions; called under the partitions' lock."""

    def __init__(
        self,
        settings: Settings,
        *,
        consumer: AIOKafkaConsumer,
        reader: Callable[[], AIOKafkaConsumer],
        storage: Storage,
        relay: Relay,
        partitions: Partitions,
        health: Health,
        metrics: Metrics,
        topics: Topics,
        rules_version: Callable[[], str],
        guard: Guard,
    ) -> None:
        self.settings, self.consumer = settings, consumer
        self.reader = reader  # a group-less consumer, to read back the change topic
        self.storage, self.relay, self.partitions = storage, relay, partitions
        self.health, self.metrics, self.topics = health, metrics, topics
        self.rules_version = rules_version
        # The partition count the state is built with, and the refusal of another count met
        # while taking partitions: the loop stops the worker with it (see Pipeline.run).
        self.guard = guard
        self.refusal: PartitionCountChanged | None = None

    async def take(self, assigned: list[TopicPartition]) -> None:
        """Take the partitions (fencing their previous owners), bring their states in line
        with the changes Kafka already holds, relay what the outbox still holds, and resume
        from the offsets Redis holds (it may be ahead of the group's committed offsets).
        If Redis restarts meanwhile (a write of the take was refused), take them again.
        Input topics of another partition count than the state's raise
        :class:`PartitionCountChanged` before anything is claimed, kept in :attr:`refusal`."""
        while True:
            try:
                return await self._take(assigned)
            except PartitionCountChanged as exc:
                self.refusal = exc
                raise
            except RedisReset:
                numbers = sorted({tp.partition for tp in assigned})
                log.warning("Redis restarted while taking partitions %s: again", numbers)

    async def _take(self, assigned: list[TopicPartition]) -> None:
        store, retry = self.storage.store, self.health.retry
        partitions = sorted({tp.partition for tp in assigned})
        # The topics' partition count, the largest the producer's or the consumer's metadata
        # or the assignment shows (partitions added reach each at its own metadata refresh),
        # against the state's, before the first claim: partitions of another count are not
        # taken.
        listed = await retry("partitions", self._input_partitions)
        seen = known_count(self.consumer, self.settings) or 0
        count = max([len(listed), seen, *(p + 1 for p in partitions)])
        await retry("partition count", partial(self.guard.check, count))
        await self.partitions.settled(partitions, handing_over=True)
        for tp in assigned:  # superseded by the offsets Redis holds, below
            known = self.partitions.get(tp.partition)
            if known is not None:
                known.committable.pop(tp.topic, None)
        versions: dict[int, frozenset[str]] = {}
        for partition in partitions:
            fence = await retry("take", partial(store.claim, partition))
            state = self.partitions.took(partition, fence)
            current = self.rules_version()
            done = await retry("rules", partial(store.rules_version, partition))
            begun = await retry("rules", partial(store.rules_pass, partition))
            if done != current or begun is not None:  # e.g. the last owner died mid-way
                if begun != current:  # before any customer is classified under it
                    await retry("rules", partial(self.storage.begin_rules, fence, current))
                if state.reevaluate_from is None:
                    state.reevaluate_from = 0
            versions[partition] = frozenset({current, done or "", begun or ""})
        starts = {p: await retry("relayed", partial(store.relayed, p)) for p in partitions}
        emitted, ends = await retry("read back", partial(self._emitted_since, starts, assigned))
        for partition in partitions:
            taken = self.partitions.get(partition)
            claim = None if taken is None else taken.claim
            if taken is None or claim is None:
                continue  # fenced meanwhile
            trust = Trust(
                partition,
                {tp.topic: end for tp, end in ends.items() if tp.partition == partition},
                self.settings.signing_keys(),
                versions[partition],
                partial(_belongs, count, partition),
            )
            try:
                in_kafka = await retry(
                    "reconcile", partial(self._reconcile, claim, emitted.get(partition, []), trust)
                )
            except RedisReset:
                raise  # every partition is taken again (see take)
            except Exception as exc:  # one partition's trouble must not stop the others
                self.stop(partition, exc)
                continue
            await retry("drain", partial(self.relay.drain, claim, in_kafka))
            resume = await self.rewind(claim, [tp for tp in assigned if tp.partition == partition])
            taken.committable.update((tp.topic, o) for tp, o in resume.items())
        # What Redis holds is durable: a crash between the Redis commit and the offset commit
        # must not leave the group's offsets behind forever.
        await self.relay.commit_offsets(partitions)
        self.metrics.partitions.set(len(self.partitions.owned()))

    async def rewind(self, claim: Claim, tps: list[TopicPartition]) -> dict[TopicPartition, int]:
        """Move the consumer to where Redis says the partition's input is applied to; returns
        those offsets (topics Redis holds none of start from the beginning)."""
        resume = {tp: claim.offsets[tp.topic] for tp in tps if tp.topic in claim.offsets}
        for tp, offset in resume.items():
            self.consumer.seek(tp, offset)
        unseen = [tp for tp in tps if tp not in resume]
        if unseen:
            # Redis holds nothing applied from these (new, or lost with a Redis that went
            # back in time): start from the beginning, not from the group's committed offset.
            await self.consumer.seek_to_beginning(*unseen)
        return resume

    async def release(self, revoked: list[TopicPartition]) -> None:
        """Let revoked partitions go once their relays are out and their offsets committed."""
        numbers = {tp.partition for tp in revoked}
        await self.partitions.settled(numbers, handing_over=True)
        await self.trim_quietly(numbers)
        await self.relay.commit_offsets(numbers)
        for partition in numbers:
            self.partitions.drop(partition)
        self.metrics.partitions.set(len(self.partitions.owned()))
        self.metrics.stopped.set(len(self.partitions.stopped()))

    async def trim_quietly(self, partitions: Iterable[int] | None = None) -> None:
        """Before letting partitions go: trim what was relayed, so that the next owner does not
        relay it again; if Redis does not answer, the next owner's read-back sees to it."""
        try:
            await self.storage.trim(partitions)
        except TRANSIENT as exc:
            log.warning("outbox trim left to the next owner: %r", exc)

    async def take_all_again(self) -> None:
        """Redis came back as a different server: take every owned partition again, so that
        input is re-read from the offsets Redis now holds."""
        owned = self.partitions.owned()
        log.warning("Redis restarted: taking partitions %s again from its offsets", owned)
        self.metrics.redis_resets.inc()
        await self.take([tp for tp in self.consumer.assignment() if tp.partition in owned])

    def stop(self, partition: int, exc: Exception) -> None:
        """Stop a partition on a stored state this worker cannot read (damaged, or written by
        a newer release during a rolling update) instead of the whole process, which would
        stop every worker that took the partition over in turn. Nothing of the batch was
        written. The partition is paused and, every SEGMENT_WORKER_STUCK_RETRY_MS, taken again
        (read from the offsets Redis holds), until the state reads: repaired, or a newer
        worker took the partition over. Its other customers wait too: input offsets are
        committed in order."""
        self.consumer.pause(*self._assigned(partition))
        retry_s = self.settings.stuck_retry_ms / 1000
        self.partitions.stop_until(partition, time.monotonic() + retry_s)
        self.metrics.stopped.set(len(self.partitions.stopped()))
        log.error(
            "partition %d stopped: %s; trying again in %.0f s",
            partition,
            exc,
            retry_s,
            exc_info=not isinstance(exc, CorruptRecord),  # anything else is a bug: show where
        )

    async def take_stopped(self) -> None:
        """Take the stopped partitions whose retry time came again; resume those that read."""
        now = time.monotonic()
        due = [
            s.partition
            for s in self.partitions
            if s.stopped_until is not None and s.stopped_until <= now
        ]
        if not due:
            return
        async with self.partitions.lock:
            for partition in due:
                state = self.partitions.get(partition)
                tps = self._assigned(partition)
                if state is None or state.stopped_until is None or not tps:
                    continue  # revoked meanwhile
                state.stopped_until = None
                try:
                    await self.take(tps)  # stops it again if the state still does not read
                except PartitionCountChanged:
                    raise  # stops the worker (Pipeline.run)
                except Exception as exc:  # e.g. damaged partition metadata: again later
                    self.stop(partition, exc)
                if state.stopped_until is None:
                    self.consumer.resume(*tps)
        self.metrics.stopped.set(len(self.partitions.stopped()))

    def _assigned(self, partition: int) -> list[TopicPartition]:
        return [tp for tp in self.consumer.assignment() if tp.partition == partition]

    async def _input_partitions(self) -> set[int]:
        return set(await self.relay.producer.partitions_for(self.topics.orders))

    async def _emitted_since(
        self, starts: dict[int, int], inputs: list[TopicPartition]
    ) -> tuple[dict[int, list[ConsumerRecord[bytes, bytes]]], dict[TopicPartition, int]]:
        """The change topic's records from each partition's last acknowledged relay on: in
        steady state nothing or a batch relayed but not yet acknowledged; after Redis lost
        writes, also the changes of the lost window. And the end offsets of the ``inputs``,
        asked first: no change this worker stamped can have reached past them."""
        reader = self.reader()
        await reader.start()
        try:
            input_ends = await end_offsets(reader, inputs, READ_BACK_SECONDS)
            known = await self.relay.changes_partitions()
            tps = {p: TopicPartition(self.topics.changes, p) for p in starts if p in known}
            reader.assign(list(tps.values()))
            for p, tp in tps.items():
                reader.seek(tp, starts[p])
            ends = await reader.end_offsets(list(tps.values()))
            deadline = time.monotonic() + READ_BACK_SECONDS
            out: dict[int, list[ConsumerRecord[bytes, bytes]]] = defaultdict(list)
            while True:  # to the end offsets, then until a fetch brings nothing more
                batch = await reader.getmany(timeout_ms=200)
                for tp, records in batch.items():
                    out[tp.partition].extend(records)
                positions = [await reader.position(tp) for tp in tps.values()]
                if not batch and all(
                    at >= ends[tp] for at, tp in zip(positions, tps.values(), strict=True)
                ):
                    return out, input_ends
                if time.monotonic() > deadline:
                    raise KafkaTimeoutError(f"reading back {self.topics.changes} took too long")
        finally:
            await reader.stop()

    async def _reconcile(
        self, claim: Claim, records: Iterable[ConsumerRecord[bytes, bytes]], trust: Trust
    ) -> frozenset[str]:
        """Bring the classes in Redis in line with the changes Kafka holds that Redis lost
        (see :func:`worker.core.reconcile.reconcile`), trusting only the records that pass
        ``trust``. Returns the ids of the changes in Kafka, which the outbox need not relay
        again."""
        emitted, rejected = read_back(((r.key, r.value, r.headers) for r in records), trust)
        for reason, n in rejected.items():
            self.metrics.readback_rejected.labels(reason).inc(n)
        if rejected:
            log.warning(
                "partition %d: skipped %d records on %s that this worker did not produce (%s)",
                claim.partition,
                rejected.total(),
                self.topics.changes,
                ", ".join(f"{reason}: {n}" for reason, n in sorted(rejected.items())),
            )
        in_kafka = frozenset(e.event_id for e in emitted)
        if not in_kafka:
            return in_kafka
        stored = await self.health.timed(
            "outbox", self.storage.store.outbox(claim.partition, 1_000_000)
        )
        lost = lost_window(emitted, map(OutRecord.decode, stored), self.topics.changes)
        if not lost.changes:
            return in_kafka
        state = self.partitions.get(claim.partition)
        if lost.ahead_of(claim.offsets) and state is not None:
            state.recovering = lost.until
            log.warning(
                "partition %d: Redis lost writes whose changes Kafka holds; re-reading "
                "input from %s up to %s without classifying",
                claim.partition,
                claim.offsets,
                lost.until,
            )
        states = await self.storage.load(claim.partition, lost.customers())
        outcome = reconcile(lost.changes, states, self.topics.classes)
        if outcome.states and await self.storage.commit(claim, outcome):
            moved = sum(1 for delta in outcome.population.values() if delta > 0)
            self.metrics.reconciled.inc(moved)
            log.warning(
                "partition %d: classes of %d customers taken from changes Redis had lost",
                claim.partition,
                len(outcome.states),
            )
        return in_kafka


def _belongs(partitions: int, partition: int, customer_id: str) -> bool:
    return partition_of(customer_id, partitions) == partition


class Listener(ConsumerRebalanceListener):  # type: ignore[misc]
    """Takes assigned partitions and releases revoked ones, each under the partitions' lock
    (which waits for the batch in flight); knows since when a rebalance has been running."""

    def __init__(self, ownership: Ownership) -> None:
        self.ownership = ownership
        self.rebalancing_since: float | None = None  # a join began and no assignment came yet
        self._reported = False

    def overdue(self, limit_s: float) -> float | None:
        """How long the rebalance has run, once (per rebalance) it has run past ``limit_s``."""
        since = self.rebalancing_since
        if since is None or self._reported or time.monotonic() - since < limit_s:
            return None
        self._reported = True
        return time.monotonic() - since

    async def on_partitions_revoked(self, revoked: list[TopicPartition]) -> None:
        if self.rebalancing_since is None:  # aiokafka calls this as every (re)join begins
            self.rebalancing_since, self._reported = time.monotonic(), False
        async with self.ownership.partitions.lock:
            await self.ownership.release(list(revoked))

    async def on_partitions_assigned(self, assigned: list[TopicPartition]) -> None:
        self.rebalancing_since = None
        async with self.ownership.partitions.lock:
            try:
                await self.ownership.take(list(assigned))
            except PartitionCountChanged:
                return  # nothing taken; the loop stops the worker (Ownership.refusal)
            except Exception as exc:
                # aiokafka would log this and go on consuming partitions never taken: stop
                # them instead, to be taken again every SEGMENT_WORKER_STUCK_RETRY_MS.
                for partition in sorted({tp.partition for tp in assigned}):
                    self.ownership.stop(partition, exc)
                return
            log.info("assigned partitions %s", self.ownership.partitions.owned())
