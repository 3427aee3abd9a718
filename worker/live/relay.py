"""From the outbox to Kafka: stamping change records, producing them to the input's partition
number, trimming what the broker acknowledged, and committing the input offsets to the group.

A crash anywhere re-relays outbox records with the same event ids, so nothing is lost and
subscribers dedupe the repeats."""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter, defaultdict
from collections.abc import Awaitable, Iterable, Mapping, Sequence
from typing import Final

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord
from aiokafka.errors import KafkaError, TopicAuthorizationFailedError
from aiokafka.producer.message_accumulator import BatchBuilder
from aiokafka.structs import RecordMetadata

from worker.core.batch import Outcome, Topics
from worker.core.outbox import OutRecord
from worker.core.partitioner import murmur2
from worker.core.reconcile import INPUT_HEADER, MAC_HEADER, change_id, sign
from worker.live.partitions import Partitions
from worker.live.retry import Health
from worker.live.storage import Storage
from worker.metrics import Metrics
from worker.redis.claims import Claim
from worker.settings import Settings

OFFSET_COMMIT_INTERVAL_S: Final = 1.0
log = logging.getLogger("segment_worker")


def topics_of(settings: Settings) -> Topics:
    """The topics a deployment's worker reads and writes, as the core names them."""
    return Topics(
        settings.topic_orders,
        settings.topic_visits,
        settings.topic_changes,
        settings.topic_dlq,
        settings.topic_classes,
        settings.topic_profiles,
    )


def observe_emits(
    metrics: Metrics, outcome: Outcome, messages: Sequence[ConsumerRecord[bytes, bytes]]
) -> None:
    """Count the class moves an outcome emitted or consent withheld, and the batch's
    event-to-change latency."""
    if outcome.changes and messages:
        # From the batch's oldest broker timestamp: one observation per batch, an upper bound.
        oldest = min(m.timestamp for m in messages)
        metrics.emit_seconds.observe(max(0.0, time.time() - oldest / 1000))
    moves = Counter(
        (c.dimension, c.from_class or "none", c.to_class or "none") for c in outcome.changes
    )
    for labels, n in moves.items():  # one labelled increment per kind, not per change
        metrics.transitions.labels(*labels).inc(n)
    for dimension, n in outcome.withheld.items():
        metrics.withheld.labels(dimension).inc(n)


class Relay:
    """Produces committed outbox records and keeps the group's offsets behind them."""

    def __init__(
        self,
        *,
        consumer: AIOKafkaConsumer,
        producer: AIOKafkaProducer,
        storage: Storage,
        partitions: Partitions,
        health: Health,
        metrics: Metrics,
        topics: Topics,
        signing_key: bytes | None = None,
    ) -> None:
        self.consumer, self.producer = consumer, producer
        self.signing_key = signing_key  # signs change records (sw.mac) when set
        self.storage, self.partitions, self.health = storage, partitions, health
        self.metrics, self.topics = metrics, topics
        self._change_partitions: set[int] | None = None
        self._offset_lock = asyncio.Lock()
        self._next_offset_commit = 0.0

    def stamp(self, outcome: Outcome, claim: Claim) -> None:
        """Put the input offsets the partition will have reached on each change record, so
        that after Redis loses writes the changes in Kafka tell how far the lost window went;
        with a signing key, sign each (``sw.mac``): read-back trusts only signed records."""
        reached = dict(claim.offsets)
        for topic, offset in outcome.offsets.items():
            reached[topic] = max(reached.get(topic, 0), offset)
        stamp = orjson.dumps(reached)
        outcome.out = [
            OutRecord(r.topic, r.key, r.value, (*r.headers, *self._stamps(claim, r, stamp)))
            if r.topic == self.topics.changes and r.value is not None
            else r
            for r in outcome.out
        ]

    def _stamps(self, claim: Claim, r: OutRecord, stamp: bytes) -> tuple[tuple[str, bytes], ...]:
        if self.signing_key is None or r.value is None:
            return ((INPUT_HEADER, stamp),)
        mac = sign(self.signing_key, claim.partition, r.key, r.value, stamp)
        return (INPUT_HEADER, stamp), (MAC_HEADER, mac)

    async def relay(self, claim: Claim, records: Sequence[OutRecord]) -> None:
        """Produce outbox records, wait for the broker's acks, then trim them from Redis. If an
        earlier relay of this partition failed, drain the stored outbox first, in order."""
        await self.storage.guard()
        state = self.partitions.get(claim.partition)
        if state is None:
            return  # revoked: the next owner relays from the outbox
        if state.backlog:
            await self.drain(claim)
            return
        if records:
            state.backlog = True  # until acked: a retry drains from Redis
            relayed = await self._produce(claim.partition, records)
            # Trimmed by the partition's next commit, in the same call (or when idle).
            state.acked += len(records)
            if relayed is not None:
                state.relayed = max(relayed, state.relayed or 0)
            state.backlog = False

    async def drain(self, claim: Claim, in_kafka: frozenset[str] = frozenset()) -> None:
        """Relay what the outbox holds, except changes already in Kafka (``in_kafka``: ids)."""
        store = self.storage.store
        await self.storage.trim([claim.partition])  # what was relayed is not read again
        while True:
            stored = await self.health.timed("outbox", store.outbox(claim.partition, 500))
            if not stored:
                break
            records = [OutRecord.decode(b) for b in stored]
            fresh = [r for r in records if change_id(r, self.topics.changes) not in in_kafka]
            relayed = await self._produce(claim.partition, fresh)
            if not await self.storage.ack(claim, len(stored), relayed):
                # Fenced: the trim did not happen, and reading on would relay the same records
                # again and again (a chaos run spun here for minutes, stalling the rebalance
                # the take runs in). The new owner drains the outbox.
                return
        state = self.partitions.get(claim.partition)
        if state is not None:
            state.backlog = False

    async def commit_offsets(self, partitions: Iterable[int] | None = None) -> None:
        """Commit the relayed input offsets to the group, in one request for all partitions.
        Redis holds the offsets a new owner resumes from; the group's are for lag and tools,
        so they go at most once per OFFSET_COMMIT_INTERVAL_S while busy, at once when idle."""
        async with self._offset_lock:  # one commit at a time, so offsets never go back
            offsets = self.partitions.pop_committable(partitions)
            self._next_offset_commit = time.monotonic() + OFFSET_COMMIT_INTERVAL_S
            if not offsets:
                return
            try:
                await self.health.kafka("commit", self.consumer.commit(offsets))
            except KafkaError as exc:  # e.g. rebalancing: the next owner resumes from Redis
                log.warning("offset commit refused: %s", exc)

    async def offsets_relayed(self, partition: int, offsets: Mapping[str, int]) -> None:
        """A batch's output is out: its input offsets may go to the group (now, if it is time)."""
        state = self.partitions.get(partition)
        if state is not None:
            state.committable.update(offsets)
        if time.monotonic() >= self._next_offset_commit:
            await self.commit_offsets()

    async def changes_partitions(self) -> set[int]:
        """The change topic's partitions (asked once). Fewer than the inputs' is a deployment
        error the worker survives: changes then go by key, without the read-back."""
        if self._change_partitions is None:
            kafka = self.health.kafka
            changes = await kafka("metadata", self.producer.partitions_for(self.topics.changes))
            self._change_partitions = set(changes)
            inputs = await kafka("metadata", self.producer.partitions_for(self.topics.orders))
            if not inputs <= self._change_partitions:
                log.error(
                    "%s has fewer partitions than %s: changes go by key instead, and a Redis "
                    "that loses writes can break change chains",
                    self.topics.changes,
                    self.topics.orders,
                )
        return self._change_partitions

    async def _produce(self, partition: int, records: Sequence[OutRecord]) -> int | None:
        """:meth:`_send`; a refused write names the ACL to grant. It is retried like any Kafka
        fault: nothing past it is committed, and the records go out once the ACL is back."""
        try:
            return await self._send(partition, records)
        except TopicAuthorizationFailedError as exc:
            raise TopicAuthorizationFailedError(
                f"{exc.args[0] if exc.args else exc}: the worker's principal needs WRITE (and "
                "DESCRIBE) on this topic (docs/security.md)"
            ) from exc

    async def _send(self, partition: int, records: Sequence[OutRecord]) -> int | None:
        """Send and wait for the acks; the change topic's offset after the last change sent.
        Changes go to the input's partition number, so that the change topic's partition N
        is the history of input partition N (read back when a partition is taken); other
        keyed records (classes, dead letters) to the partition Kafka's default partitioner
        picks for their key, as a keyed send would. Everything goes as whole record batches,
        closed at once (one future each, not one per record): the producer sends all the
        batches queued meanwhile in one request, where records sent one by one wait out its
        linger (5 ms) and take a request of their own. Records without a key go by send.
        A failed call is counted (segment_worker_kafka_errors_total) as ``metadata`` or
        ``produce``, and raised to the retry."""
        kafka = self.health.kafka
        mine = partition if partition in await self.changes_partitions() else None
        sorted_partitions: dict[str, list[int]] = {}
        open_batches: dict[tuple[str, int], BatchBuilder] = {}
        sent: list[tuple[str, Awaitable[RecordMetadata], int]] = []
        others: list[Awaitable[RecordMetadata]] = []
        for r in records:
            if r.topic == self.topics.changes and mine is not None:
                target = mine
            elif r.key is not None:
                if r.topic not in sorted_partitions:
                    known = await kafka("metadata", self.producer.partitions_for(r.topic))
                    sorted_partitions[r.topic] = sorted(known)
                candidates = sorted_partitions[r.topic]
                target = candidates[(murmur2(r.key) & 0x7FFFFFFF) % len(candidates)]
            else:
                sending = self.producer.send(r.topic, r.value, headers=list(r.headers))
                others.append(await kafka("produce", sending))
                continue
            headers = list(r.headers)
            batch = open_batches.get((r.topic, target))
            while (
                batch is None
                or batch.append(timestamp=None, key=r.key, value=r.value, headers=headers) is None
            ):
                if batch is not None:  # full: send it; an empty batch takes any record
                    sent.append(await self._send_batch(batch, r.topic, target))
                batch = open_batches[(r.topic, target)] = self.producer.create_batch()
        for (topic, target), batch in open_batches.items():
            sent.append(await self._send_batch(batch, topic, target))
        relayed = None
        for topic, future, count in sent:
            meta = await kafka("produce", future)
            if topic == self.topics.changes:
                relayed = max(relayed or 0, meta.offset + count)
        if others:
            for meta in await kafka("produce", asyncio.gather(*others)):
                if meta.topic == self.topics.changes:
                    relayed = max(relayed or 0, meta.offset + 1)
        counts: dict[str, int] = defaultdict(int)
        for r in records:
            counts[r.topic] += 1
        for topic, n in counts.items():
            self.metrics.relayed.labels(topic).inc(n)
        return relayed

    async def _send_batch(
        self, batch: BatchBuilder, topic: str, partition: int
    ) -> tuple[str, Awaitable[RecordMetadata], int]:
        # Closed, it goes out at once: an open batch waits out the producer's linger (5 ms)
        # in case more records come, and the relay knows none will.
        batch.close()
        future = await self.health.kafka(
            "produce", self.producer.send_batch(batch, topic, partition=partition)
        )
        return topic, future, batch.record_count()
