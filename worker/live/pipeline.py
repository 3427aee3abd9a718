"""The live worker's hot path: Kafka batches in, one atomic Redis commit per partition batch,
segment changes and dead letters out through the outbox, offsets committed last.

Per partition batch: parse (pure), read the touched states (one Redis round trip), apply
(pure, the same step replay runs), commit states + due index + outbox + input offsets in one
fenced Redis Function call, then hand the outbox records to the relay. A crash at any point
re-reads input that the state already holds (a no-op: the state is a set of events) or
re-relays outbox records (same event ids), so nothing is lost or counted twice.

The loop, its wiring and its public face are here; what one partition's batch goes through is
:mod:`worker.live.batches`.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import Callable

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition
from aiokafka.abc import ConsumerRebalanceListener
from aiokafka.errors import KafkaError

from worker.clock import Clock
from worker.core.rules import Rules
from worker.kafka_topics import known_count
from worker.live.batches import Batches
from worker.live.fetch import Batch, Pacing
from worker.live.ownership import Listener, Ownership
from worker.live.partitions import Partitions
from worker.live.relay import Relay, topics_of
from worker.live.retry import Health
from worker.live.storage import RedisReset, Storage
from worker.live.timers import Timers
from worker.metrics import Metrics
from worker.partition_count import Guard
from worker.settings import Settings
from worker.store import Store


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
        self._topics = topics_of(settings)
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
        self._guard = Guard(store)
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
            guard=self._guard,
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
        self._batches = Batches(
            settings,
            consumer=consumer,
            storage=self._storage,
            relay=self._relay,
            ownership=self._ownership,
            partitions=self._partitions,
            health=self._health,
            metrics=metrics,
            clock=clock,
            topics=self._topics,
            rules=lambda: self.rules,
            input_partitions=self._checked_partitions,
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

    async def check_partition_count(self, count: int) -> None:
        """At start: the topics' partition count against the one the state is built with
        (recorded now if none is); :class:`PartitionCountChanged` if they differ."""
        await self._guard.check(count)

    def _checked_partitions(self) -> int | None:
        """:meth:`input_partitions` for a batch about to be applied: one that grew since the
        partitions were taken (partitions added while the worker runs, seen at the consumer's
        next metadata refresh) raises :class:`PartitionCountChanged` before it is applied."""
        count = self.input_partitions()
        self._guard.check_known(count)
        return count

    def _check_topic_counts(self) -> None:
        """The input topics' partition counts in the consumer's metadata (refreshed every
        METADATA_MAX_AGE_MS) against the state's: partitions added while the worker runs stop
        it here, before anything of theirs is applied, whether or not a rebalance follows
        (the group's leader may have assigned on the old metadata) and whether or not their
        records reach a batch."""
        self._guard.check_known(known_count(self._consumer, self._settings))

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
                fetching = self._pacing.fetch(self._consumer, self._listener, self._settings, most)
                batch = await self._health.kafka("fetch", fetching)
            except KafkaError as exc:
                await self._health.trouble("kafka", "getmany", exc)
                continue
            if self._ownership.refusal is not None:  # met while taking partitions
                raise self._ownership.refusal
            self._check_topic_counts()
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
                self._batches.process(running[partition], messages)
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
