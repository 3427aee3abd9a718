"""The live worker's hot path: Kafka batches in, one atomic Redis commit per partition batch,
segment changes and dead letters out through the outbox, offsets committed last.

Per partition batch: parse (pure), read the touched states (one Redis round trip), apply
(pure, the same step replay runs), commit states + due index + outbox + input offsets in one
fenced Redis Function call, then hand the outbox records to the relay. A crash at any point
re-reads input that the state already holds (a no-op: the state is a set of events) or
re-relays outbox records (same event ids), so nothing is lost or counted twice.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from functools import partial

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition
from aiokafka.abc import ConsumerRebalanceListener
from aiokafka.errors import KafkaError

from worker.clock import Clock
from worker.core.batch import (
    InRecord,
    Outcome,
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
from worker.live.fetch import Batch, Pacing
from worker.live.ownership import Listener, Ownership
from worker.live.partitions import Partitions
from worker.live.relay import Relay, observe_emits, topics_of
from worker.live.retry import Health, crash_point
from worker.live.storage import RedisReset, Storage
from worker.live.timers import Timers
from worker.metrics import Metrics
from worker.redis.claims import Claim
from worker.settings import Settings
from worker.store import Store

log = logging.getLogger("segment_worker")
Messages = Sequence[ConsumerRecord[bytes, bytes]]


class Pipeline:
    """Owns the consumer loop; one per worker process. Its public face: :meth:`run`,
    :meth:`stop`, :meth:`shut_down`, :meth:`listener`, :meth:`request_reload`, and what
    /readyz and the tests ask (:attr:`ready`, :meth:`owned_partitions`, ...)."""

    def __init__(
        self,
        settings: Settings,
        rules: Rules,
        store: Store,
        *,
        consumer: AIOKafkaConsumer,
        producer: AIOKafkaProducer,
        reader: Callable[[], AIOKafkaConsumer],
        metrics: Metrics,
        clock: Clock,
    ) -> None:
        self._settings, self._consumer = settings, consumer
        self._metrics, self._clock = metrics, clock
        self._topics = topics_of(settings)
        self._limits = ParseLimits(settings.max_event_bytes, settings.future_skew_ms)
        self._partitions = Partitions()
        self._health = Health(metrics)
        self._storage = Storage(
            store, self._partitions, self._health, metrics, lambda: self.rules.calendar
        )
        self._relay = Relay(
            consumer=consumer,
            producer=producer,
            storage=self._storage,
            partitions=self._partitions,
            health=self._health,
            metrics=metrics,
            topics=self._topics,
            signing_key=next(iter(settings.signing_keys()), None),
        )
        self._ownership = Ownership(
            settings,
            consumer=consumer,
            reader=reader,
            storage=self._storage,
            relay=self._relay,
            partitions=self._partitions,
            health=self._health,
            metrics=metrics,
            topics=self._topics,
            rules_version=lambda: self.rules.version,
        )
        self._timers = Timers(
            settings,
            rules,
            storage=self._storage,
            relay=self._relay,
            ownership=self._ownership,
            partitions=self._partitions,
            health=self._health,
            metrics=metrics,
            clock=clock,
            topics=self._topics,
        )
        self._listener = Listener(self._ownership)
        self._stopping = asyncio.Event()
        self._pacing = Pacing(settings.batch_linger_ms, settings.batch_size)

    @property
    def rules(self) -> Rules:
        """The rules in force (a reload replaces them)."""
        return self._timers.rules

    @property
    def healthy(self) -> bool:
        """Kafka and Redis answered the last call."""
        return self._health.healthy

    @property
    def ready(self) -> bool:
        return self._health.healthy and bool(self._partitions.owned())

    @property
    def stopping(self) -> bool:
        return self._stopping.is_set()

    @property
    def stop_requested(self) -> asyncio.Event:
        """Set once a stop is asked for: start-up waits on it between attempts."""
        return self._stopping

    def owned_partitions(self) -> list[int]:
        """The partitions this worker runs (taken, neither stopped nor fenced)."""
        return self._partitions.owned()

    def stopped_partitions(self) -> list[int]:
        """Partitions stopped on a stored state this worker cannot read."""
        return self._partitions.stopped()

    def recovering_partitions(self) -> list[int]:
        """Partitions re-reading the input of a window Redis lost, without classifying."""
        return self._partitions.recovering()

    def reevaluating_partitions(self) -> list[int]:
        """Partitions whose customers are not all re-evaluated under the current rules yet."""
        return self._partitions.reevaluating()

    def input_partitions(self) -> int | None:
        """The orders topic's partition count from the consumer's metadata, if known yet."""
        partitions = self._consumer.partitions_for_topic(self._topics.orders)
        return len(partitions) if partitions else None

    def listener(self) -> ConsumerRebalanceListener:
        return self._listener

    def stop(self) -> None:
        self._stopping.set()

    def request_reload(self) -> None:
        """SIGHUP: re-read the rules file at the next timer tick."""
        self._timers.request_reload()

    async def run(self) -> None:
        """Consume until :meth:`stop`; transient Redis/Kafka failures back off and retry."""
        while not self._stopping.is_set():
            most = self._settings.batch_size * max(1, len(self.owned_partitions()))
            takes = self._partitions.takes
            try:
                batch = await self._pacing.fetch(
                    self._consumer, self._listener, self._settings, most
                )
            except KafkaError as exc:
                await self._health.trouble("kafka", "getmany", exc)
                continue
            if batch is None:
                continue  # the group is rebalancing
            if not batch and self._partitions.any_committable():
                await self._relay.commit_offsets()  # idle: the group catches up at once
            if self._partitions.stopped():
                await self._ownership.take_stopped()
            async with self._partitions.lock:
                try:
                    await self._process(batch, takes)
                    if not batch and self._partitions.any_acked():
                        await self._health.retry("ack", self._storage.trim)  # idle: trim now
                    if self._timers.due():
                        await self._timers.tick()
                except RedisReset:
                    await self._ownership.take_all_again()

    async def shut_down(self) -> None:
        """After the loop: let the batch in flight finish, relay its output, commit offsets."""
        async with self._partitions.lock:
            await self._partitions.settled(handing_over=True)
            await self._ownership.trim_quietly()
            await self._relay.commit_offsets()

    async def _process(self, batch: Batch, takes: int) -> None:
        """``takes``: :attr:`Partitions.takes` when the fetch began."""
        if taken := self._partitions.taken_since(takes):
            await self._refetch([tp for tp in batch if tp.partition in taken])
        by_partition: dict[int, list[ConsumerRecord[bytes, bytes]]] = defaultdict(list)
        for tp, messages in batch.items():
            if tp.partition not in taken:
                by_partition[tp.partition].extend(messages)
        running = self._partitions.running()
        # Partitions are independent (own keys, own claim, own outbox): overlap their Redis
        # and Kafka round trips instead of waiting for each in turn.
        results = await asyncio.gather(
            *(
                self._partition_batch(running[partition], messages)
                for partition, messages in sorted(by_partition.items())
                if partition in running
            ),
            return_exceptions=True,
        )
        for result in results:
            if isinstance(result, BaseException):
                raise result

    async def _refetch(self, tps: list[TopicPartition]) -> None:
        """Drop the records of partitions taken while the fetch ran: aiokafka fetches a newly
        assigned partition from the group's committed offset while the take still runs, and
        the group's offset may be ahead of Redis's (Redis lost writes). Applied, such records
        would skip the input between; instead the consumer goes back to Redis's offsets (the
        take's seek may have come before the records were handed over, and they were)."""
        running = self._partitions.running()
        for partition in sorted({tp.partition for tp in tps} & running.keys()):
            await self._ownership.rewind(
                running[partition], [tp for tp in tps if tp.partition == partition]
            )

    async def _partition_batch(self, claim: Claim, messages: Messages) -> None:
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
        await self._storage.guard()
        now = self._clock.now_ms()
        erasures = [r for r in records if r.topic == self._settings.topic_erasures]
        events = [r for r in records if r.topic != self._settings.topic_erasures]
        parsed = parse_batch(events, self._topics, now, self._limits, self.input_partitions())
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
            rules=self.rules,
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
            return await self._erase(claim, erasures, outcome)
        return outcome

    async def _erase(
        self, claim: Claim, erasures: Sequence[InRecord], outcome: Outcome
    ) -> Outcome | None:
        """Delete each customer's state and due entry, leave a marker, and put a tombstone
        (null value) for them on the change and classes topics; idempotent, so a retry is
        harmless. A request that names no possible customer of this partition is
        dead-lettered."""
        ttl = self._settings.erasure_marker_days * DAY_MS
        erased: list[tuple[bytes, CustomerState | None]] = []
        refused = Outcome()
        partitions = self.input_partitions()
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
