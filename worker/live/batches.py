"""What the loop does with one partition's batch, apart from the loop: apply, erase, relay."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from functools import partial

from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition

from worker.clock import Clock
from worker.core.batch import (
    InRecord,
    Outcome,
    Topics,
    accept_erasures,
    apply_batch,
    customers_of,
    parse_batch,
)
from worker.core.erasure import erasure, suppress_erased
from worker.core.events import ParseLimits
from worker.core.packing import CorruptRecord
from worker.core.rules import Rules
from worker.core.state import CustomerState
from worker.core.timeutil import DAY_MS
from worker.live.ownership import Ownership
from worker.live.partitions import Partitions
from worker.live.relay import Relay, observe_emits
from worker.live.retry import Health, crash_point
from worker.live.storage import Storage
from worker.metrics import Metrics
from worker.redis.claims import Claim
from worker.settings import Settings

log = logging.getLogger("segment_worker")
Messages = Sequence[ConsumerRecord[bytes, bytes]]


class Batches:
    """One partition's batch at a time, as the loop hands it over: parse, read, apply and
    commit (erasure requests after the events), then the relay of its outcome and the commit
    of its input offsets, while the loop goes on."""

    def __init__(
        self,
        settings: Settings,
        *,
        consumer: AIOKafkaConsumer,
        storage: Storage,
        relay: Relay,
        ownership: Ownership,
        partitions: Partitions,
        health: Health,
        metrics: Metrics,
        clock: Clock,
        topics: Topics,
        rules: Callable[[], Rules],
        input_partitions: Callable[[], int | None],  # raises on a count other than the state's
    ) -> None:
        self._settings, self._consumer = settings, consumer
        self._storage, self._relay, self._ownership = storage, relay, ownership
        self._partitions, self._health = partitions, health
        self._metrics, self._clock, self._topics = metrics, clock, topics
        self._rules, self._input_partitions = rules, input_partitions
        self._limits = ParseLimits(settings.max_event_bytes, settings.future_skew_ms)

    async def process(self, claim: Claim, messages: Messages) -> None:
        """Apply and commit one partition's records, then relay the outcome in the background."""
        started = time.perf_counter()
        # The consumer may hand back records Redis already holds (a fetch that raced the seek
        # of a take): they were applied, dead-lettered and relayed once; never again.
        records = [
            InRecord(m.topic, m.partition, m.offset, m.key, m.value, tuple(m.headers))
            for m in messages
            if m.offset >= claim.offsets.get(m.topic, 0)
        ]
        if len(records) < len(messages):
            self._metrics.redelivered.inc(len(messages) - len(records))
        if not records:
            return
        try:
            outcome = await self._health.retry("apply", partial(self._apply, claim, records))
        except CorruptRecord as exc:
            self._ownership.stop(claim.partition, exc)
            return
        state = self._partitions.get(claim.partition)
        if outcome is None or state is None:
            return
        crash_point("after_commit")
        # The relay waits on the broker's acks (tens of ms); the next batch's fetch, parse and
        # classification go on meanwhile. Its Redis commit waits for this relay (see
        # Storage.commit), so outbox, relay and offset commits stay in batch order.
        state.relaying = asyncio.create_task(
            self._finish(claim, outcome, messages, len(records), started)
        )

    async def _finish(
        self, claim: Claim, outcome: Outcome, messages: Messages, count: int, started: float
    ) -> None:
        """Relay a committed batch's output, then commit its input offsets to the group."""
        await self._health.retry("relay", partial(self._relay.relay, claim, outcome.out))
        crash_point("after_relay")
        if outcome.dead_lettered:
            crash_point("after_dead_letter")  # a dead letter is out, its skip not committed
        await self._relay.offsets_relayed(claim.partition, outcome.offsets)
        m = self._metrics
        for topic, n in outcome.applied.items():
            m.events.labels(topic, "applied").inc(n)
        for reason, n in outcome.rejected.items():
            m.dead_letters.labels(reason).inc(n)
        for topic, n in outcome.dead_lettered.items():
            m.events.labels(topic, "dead_lettered").inc(n)
        m.batch_size.observe(count)
        m.batch_seconds.observe(time.perf_counter() - started)
        observe_emits(m, outcome, messages)
        for topic, offset in outcome.offsets.items():
            tp = TopicPartition(topic, claim.partition)
            highwater = self._consumer.highwater(tp)
            if highwater is not None:
                m.lag.labels(tp.topic, str(tp.partition)).set(max(0, highwater - offset))

    async def _apply(self, claim: Claim, records: Sequence[InRecord]) -> Outcome | None:
        """Parse, load, apply and commit; None if the partition was taken over meanwhile.
        Erasure requests in the batch are carried out after its events."""
        # The topics' partition count; one other than the state's raises, before any write.
        partitions = self._input_partitions()
        await self._storage.guard()
        now = self._clock.now_ms()
        erasures = [r for r in records if r.topic == self._settings.topic_erasures]
        events = [r for r in records if r.topic != self._settings.topic_erasures]
        parsed = parse_batch(events, self._topics, now, self._limits, partitions)
        states, erased = await self._storage.read(claim.partition, customers_of(parsed))
        offsets: dict[str, int] = {}
        if erased:  # an erased customer's late or replayed events must not resurrect them
            kept = suppress_erased(events, parsed, erased)
            for topic, n in kept.suppressed.items():
                self._metrics.events.labels(topic, "suppressed").inc(n)
            events, parsed, offsets = kept.records, kept.parsed, kept.offsets
        state = self._partitions.get(claim.partition)
        outcome = apply_batch(
            events,
            parsed,
            states,
            rules=self._rules(),
            topics=self._topics,
            now_ms=now,
            quiet=state is not None and state.recovering is not None,
        )
        for topic, offset in offsets.items():
            outcome.offsets[topic] = max(outcome.offsets.get(topic, 0), offset)
        self._relay.stamp(outcome, claim)
        if erasures:
            outcome.withhold(
                (self._topics.changes, self._topics.classes), {r.key for r in erasures if r.key}
            )
        if not await self._storage.commit(claim, outcome):
            return None
        until = state.recovering if state is not None else None
        if state and until and all(claim.offsets.get(t, 0) >= o for t, o in until.items()):
            state.recovering = None  # the timer now classifies what was absorbed
            log.warning("partition %d: re-read of the lost window done", claim.partition)
        if erasures:
            return await self._erase(claim, erasures, outcome, partitions)
        return outcome

    async def _erase(
        self,
        claim: Claim,
        erasures: Sequence[InRecord],
        outcome: Outcome,
        partitions: int | None,
    ) -> Outcome | None:
        """Delete each customer's state and due entry, leave a marker, and put a tombstone
        (null value) for them on the change and classes topics; idempotent, so a retry is
        harmless. A request that names no possible customer of this partition is
        dead-lettered."""
        ttl = self._settings.erasure_marker_days * DAY_MS
        erased: list[tuple[bytes, CustomerState | None]] = []
        refused = Outcome()
        for key, customer_id in accept_erasures(
            erasures, refused, self._topics, self._limits, partitions
        ):
            previous = (await self._storage.load(claim.partition, [customer_id]))[customer_id]
            if not await self._storage.erase(claim, customer_id, ttl):
                return None
            erased.append((key, previous))
            self._metrics.erasures.inc()
        tombstones = erasure(
            erased,
            changes_topic=self._topics.changes,
            classes_topic=self._topics.classes,
            erasures_topic=self._settings.topic_erasures,
            next_offset=erasures[-1].offset + 1,
            into=refused,
        )
        if not await self._storage.commit(claim, tombstones):
            return None
        outcome.out.extend(tombstones.out)
        outcome.offsets.update(tombstones.offsets)
        return outcome
