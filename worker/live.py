"""The live worker's hot path: Kafka batches in, one atomic Redis commit per partition batch,
segment changes and dead letters out through the outbox, offsets committed last.

Per partition batch: parse (pure), read the touched states (one Redis round trip), apply
(pure, the same step replay runs), commit states + due index + outbox + input offsets in one
fenced Redis Function call, produce the outbox records, trim them, commit the Kafka offsets.
A crash at any point re-reads input that the state already holds (a no-op: the state is a
set of events) or re-relays outbox records (same event ids), so nothing is lost or counted
twice. Ownership is fenced: on assignment the worker bumps the partition's epoch in Redis, and
a commit carrying an older epoch is refused, so a paused ex-owner cannot write late.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections import Counter, defaultdict
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from functools import partial
from pathlib import Path
from typing import Final, TypeVar

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition
from aiokafka.abc import ConsumerRebalanceListener
from aiokafka.errors import KafkaError, KafkaTimeoutError
from aiokafka.producer.message_accumulator import BatchBuilder
from aiokafka.structs import RecordMetadata
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from worker.clock import Clock
from worker.core.batch import (
    InRecord,
    Outcome,
    Topics,
    accept_erasures,
    apply_batch,
    customers_of,
    parse_batch,
    reevaluate_batch,
)
from worker.core.batch import sweep as sweep_due
from worker.core.codec import CorruptRecord, OutRecord, decode_state, encode_state
from worker.core.events import ParseLimits, Rejection
from worker.core.rules import Rules, RulesError, load_rules
from worker.core.state import CustomerState
from worker.core.timeutil import DAY_MS, parse_rfc3339
from worker.metrics import Metrics
from worker.settings import Settings
from worker.store import Claim, Fenced, Store

READ_BACK_SECONDS: Final = 60.0
INPUT_HEADER: Final = "sw.input"  # on change records: input offsets reached, as JSON
OFFSET_COMMIT_INTERVAL_S: Final = 1.0
log = logging.getLogger("segment_worker")
T = TypeVar("T")
TRANSIENT = (RedisConnectionError, RedisTimeoutError, ConnectionError, OSError, KafkaError)


def _mtime(path: Path | None) -> float | None:
    try:
        return None if path is None else path.stat().st_mtime
    except OSError:
        return None


def _crash_point(name: str) -> None:
    """Fault injection for the kill tests: ``SW_TEST_CRASH=<point>:<n>`` exits
    the process abruptly the n-th time it passes ``point``. Unset in production."""
    spec = os.environ.get("SW_TEST_CRASH")
    if not spec or not spec.startswith(name + ":"):
        return
    remaining = int(spec.rsplit(":", 1)[1]) - 1
    os.environ["SW_TEST_CRASH"] = f"{name}:{remaining}"
    if remaining <= 0:
        os._exit(137)


class RedisReset(Exception):
    """Redis answers as a different server than the one our partitions were claimed on."""


class Pipeline:
    """Owns the consumer loop and the timer; one per worker process."""

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
        self.settings, self.rules, self.store = settings, rules, store
        self.consumer, self.producer = consumer, producer
        self.reader = reader  # a group-less consumer, to read back the change topic
        self._change_partitions: set[int] | None = None
        self.metrics, self.clock = metrics, clock
        self.topics = Topics(
            settings.topic_orders, settings.topic_visits, settings.topic_changes, settings.topic_dlq
        )
        self.limits = ParseLimits(settings.max_event_bytes, settings.future_skew_ms)
        self.claims: dict[int, Claim] = {}
        self.backlog: set[int] = set()  # partitions whose outbox may hold unrelayed records
        self.relaying: dict[int, asyncio.Task[None]] = {}  # partition -> its last batch's relay
        self.committable: dict[TopicPartition, int] = {}  # relayed, not yet committed to the group
        self._offset_lock = asyncio.Lock()
        self._next_offset_commit = 0.0
        self.lock = asyncio.Lock()
        self.stopping = asyncio.Event()
        self.healthy = False
        self._next_sweep = 0.0
        self._reload_requested = False
        self._rules_mtime = _mtime(settings.rules)
        self.reevaluating: dict[int, int] = {}  # partition -> SCAN cursor of the re-evaluation
        # partition -> when to try again: stopped on a stored state it cannot read (``_stick``)
        self.stuck: dict[int, float] = {}
        # partition -> input offsets (per topic) that changes already in Kafka had reached when
        # Redis lost the writes behind them: input is absorbed, unclassified, until there
        self.recovering: dict[int, dict[str, int]] = {}
        self.redis_ids: dict[int, str] = {}  # partition -> run id of the server it was claimed on
        self._suspect = False  # a Redis call failed: check the server before writing again
        metrics.rules_info.labels(rules.version).set(1)

    @property
    def ready(self) -> bool:
        return self.healthy and bool(self.claims)

    def listener(self) -> ConsumerRebalanceListener:
        return _Listener(self)

    async def run(self) -> None:
        """Consume until :meth:`stop`; transient Redis/Kafka failures back off and retry."""
        while not self.stopping.is_set():
            try:
                batch = await self.consumer.getmany(
                    timeout_ms=self.settings.batch_wait_ms,
                    max_records=self.settings.batch_size * max(1, len(self.claims)),
                )
            except KafkaError as exc:
                await self._trouble("kafka", "getmany", exc)
                continue
            if not batch and self.committable:
                await self.commit_offsets()  # idle: the group catches up at once
            if self.stuck:
                await self._retake_stuck()
            async with self.lock:
                try:
                    await self._process(batch)
                except RedisReset:
                    await self._retake_all()
                    continue
                if time.monotonic() >= self._next_sweep:
                    self._next_sweep = time.monotonic() + self.settings.timer_interval_ms / 1000
                    self._check_rules_file()
                    try:
                        await self._retry("sweep", self._sweep_all)
                        await self._retry("reevaluate", self._reevaluate_step)
                    except RedisReset:
                        await self._retake_all()

    def stop(self) -> None:
        self.stopping.set()

    def request_reload(self) -> None:
        """SIGHUP: re-read the rules file at the next timer tick."""
        self._reload_requested = True

    def _check_rules_file(self) -> None:
        path = self.settings.rules
        mtime = _mtime(path)
        if not self._reload_requested and mtime == self._rules_mtime:
            return
        self._reload_requested, self._rules_mtime = False, mtime
        if path is None:
            return
        try:
            rules = load_rules(path)
        except RulesError as exc:
            self.metrics.rules_reloads.labels("rejected").inc()
            log.error("rules reload refused, the current rules keep running: %s", exc)
            return
        if rules.version == self.rules.version:
            return
        log.info("rules %s -> %s: re-evaluating every customer", self.rules.version, rules.version)
        self.metrics.rules_reloads.labels("applied").inc()
        self.metrics.rules_info.clear()
        self.metrics.rules_info.labels(rules.version).set(1)
        self.rules = rules
        self.reevaluating = dict.fromkeys(self.claims, 0)
        self.metrics.reevaluation_pending.set(len(self.reevaluating))

    async def _reevaluate_step(self) -> None:
        """Re-classify customers under new rules at a bounded rate (a share of
        SEGMENT_WORKER_RULES_REEVALUATION_RATE per timer tick), partition by partition."""
        await self._guard()
        budget = max(
            1, int(self.settings.rules_reevaluation_rate * self.settings.timer_interval_ms / 1000)
        )
        now = self.clock.now_ms()
        for partition, start in sorted(self.reevaluating.items()):
            cursor = start
            claim = self.claims.get(partition)
            if claim is None:
                del self.reevaluating[partition]
                continue
            if partition in self.recovering:
                continue
            while budget > 0:
                cursor, ids = await self._timed(
                    "scan", self.store.scan_customers(partition, cursor, min(budget, 1000))
                )
                budget -= max(1, len(ids))
                try:
                    states = await self._load(partition, ids)
                except CorruptRecord as exc:
                    self._stick(partition, exc)
                    break
                outcome = reevaluate_batch(states, self.rules, self.topics, now)
                self._stamp(outcome, claim.offsets)
                if outcome.states and await self._commit(claim, outcome):
                    await self._retry("relay", partial(self._relay, claim, outcome.out))
                    self._observe_emits(outcome, [])
                self.metrics.reevaluated.inc(len(outcome.states))
                if cursor == 0:
                    try:
                        await self._timed("mark", self.store.mark_rules(claim, self.rules.version))
                    except Fenced:  # the newer owner re-evaluates and marks the partition
                        self.metrics.fenced.inc()
                        self.claims.pop(partition, None)
                    del self.reevaluating[partition]
                    break
                self.reevaluating[partition] = cursor
            if budget <= 0:
                break
        self.metrics.reevaluation_pending.set(len(self.reevaluating))

    async def _process(
        self, batch: dict[TopicPartition, list[ConsumerRecord[bytes, bytes]]]
    ) -> None:
        by_partition: dict[int, list[ConsumerRecord[bytes, bytes]]] = defaultdict(list)
        for tp, messages in batch.items():
            by_partition[tp.partition].extend(messages)
        # Partitions are independent (own keys, own claim, own outbox): overlap their Redis
        # and Kafka round trips instead of waiting for each in turn.
        results = await asyncio.gather(
            *(
                self._partition_batch(partition, messages)
                for partition, messages in sorted(by_partition.items())
                if partition in self.claims
            ),
            return_exceptions=True,
        )
        for result in results:
            if isinstance(result, BaseException):
                raise result

    async def _partition_batch(
        self, partition: int, messages: Sequence[ConsumerRecord[bytes, bytes]]
    ) -> None:
        started = time.perf_counter()
        claim = self.claims.get(partition)
        if claim is None:
            return
        # The consumer may hand back records Redis already holds (a fetch that raced the seek
        # of a take): they were applied, dead-lettered and relayed once; never again.
        records = [
            InRecord(m.topic, m.partition, m.offset, m.key, m.value, tuple(m.headers))
            for m in messages
            if m.offset >= claim.offsets.get(m.topic, 0)
        ]
        if len(records) < len(messages):
            self.metrics.redelivered.inc(len(messages) - len(records))
        if not records:
            return
        try:
            outcome = await self._retry("apply", partial(self._apply, claim, records))
        except CorruptRecord as exc:
            self._stick(partition, exc)
            return
        if outcome is None:
            return
        _crash_point("after_commit")
        # The relay waits on the broker's acks (tens of ms); the next batch's fetch, parse and
        # classification go on meanwhile. Its Redis commit waits for this relay (``_commit``),
        # so outbox, relay and offset commits stay in batch order.
        self.relaying[partition] = asyncio.create_task(
            self._finish(claim, outcome, messages, len(records), started)
        )

    async def _finish(
        self,
        claim: Claim,
        outcome: Outcome,
        messages: Sequence[ConsumerRecord[bytes, bytes]],
        count: int,
        started: float,
    ) -> None:
        """Relay a committed batch's output, then commit its input offsets to the group."""
        await self._retry("relay", partial(self._relay, claim, outcome.out))
        _crash_point("after_relay")
        if outcome.dead_lettered:
            _crash_point("after_dead_letter")  # a dead letter is out, its skip not committed
        offsets = {TopicPartition(t, claim.partition): o for t, o in outcome.offsets.items()}
        self.committable.update(offsets)
        if time.monotonic() >= self._next_offset_commit:
            await self.commit_offsets()
        m = self.metrics
        for topic, n in outcome.applied.items():
            m.events.labels(topic, "applied").inc(n)
        for reason, n in outcome.rejected.items():
            m.dead_letters.labels(reason).inc(n)
        for topic, n in outcome.dead_lettered.items():
            m.events.labels(topic, "dead_lettered").inc(n)
        m.batch_size.observe(count)
        m.batch_seconds.observe(time.perf_counter() - started)
        self._observe_emits(outcome, messages)
        for tp, offset in offsets.items():
            highwater = self.consumer.highwater(tp)
            if highwater is not None:
                m.lag.labels(tp.topic, str(tp.partition)).set(max(0, highwater - offset))

    async def commit_offsets(self, partitions: Iterable[int] | None = None) -> None:
        """Commit the relayed input offsets to the group, in one request for all partitions.
        Redis holds the offsets a new owner resumes from; the group's are for lag and tools,
        so they go at most once per OFFSET_COMMIT_INTERVAL_S while busy, at once when idle."""
        async with self._offset_lock:  # one commit at a time, so offsets never go back
            wanted = None if partitions is None else set(partitions)
            offsets = {
                tp: o
                for tp, o in self.committable.items()
                if wanted is None or tp.partition in wanted
            }
            for tp in offsets:
                del self.committable[tp]
            self._next_offset_commit = time.monotonic() + OFFSET_COMMIT_INTERVAL_S
            if not offsets:
                return
            try:
                await self.consumer.commit(offsets)
            except KafkaError as exc:  # e.g. rebalancing: the next owner resumes from Redis
                log.warning("offset commit refused: %s", exc)

    async def settled(
        self, partitions: Iterable[int] | None = None, *, handing_over: bool = False
    ) -> None:
        """Wait for the relays in flight (of ``partitions``, else all). A relay's error is
        raised here once, to the first caller that waits for it; ``handing_over``: only
        logged, because whoever takes the partition next relays from the outbox in Redis."""
        for partition in sorted(self.relaying if partitions is None else set(partitions)):
            task = self.relaying.get(partition)
            if task is None:
                continue
            try:
                await task
            except Exception as exc:
                if not handing_over:
                    raise
                log.warning("partition %d: relay left to the outbox: %r", partition, exc)
            finally:
                if self.relaying.get(partition) is task:
                    del self.relaying[partition]

    async def _apply(self, claim: Claim, records: Sequence[InRecord]) -> Outcome | None:
        """Parse, load, apply and commit; None if the partition was taken over meanwhile.
        Erasure requests in the batch are carried out after its events."""
        await self._guard()
        now = self.clock.now_ms()
        erasures = [r for r in records if r.topic == self.settings.topic_erasures]
        events = [r for r in records if r.topic != self.settings.topic_erasures]
        parsed = parse_batch(events, self.topics, now, self.limits, self._input_partitions())
        states, erased = await self._read(claim.partition, customers_of(parsed))
        if erased:  # an erased customer's late or replayed events must not resurrect them
            keep = [
                i
                for i, p in enumerate(parsed)
                if isinstance(p, Rejection) or p.customer_id not in erased
            ]
            kept = set(keep)
            dropped = Counter(r.topic for i, r in enumerate(events) if i not in kept)
            for topic, n in dropped.items():
                self.metrics.events.labels(topic, "suppressed").inc(n)
            offsets = {r.topic: r.offset + 1 for r in events}
            events = [events[i] for i in keep]
            parsed = [parsed[i] for i in keep]
        else:
            offsets = {}
        outcome = apply_batch(
            events,
            parsed,
            states,
            rules=self.rules,
            topics=self.topics,
            now_ms=now,
            quiet=claim.partition in self.recovering,
        )
        for topic, offset in offsets.items():
            outcome.offsets[topic] = max(outcome.offsets.get(topic, 0), offset)
        self._stamp(outcome, claim.offsets)
        if erasures:
            outcome.withhold(self.topics.changes, {r.key for r in erasures if r.key})
        if not await self._commit(claim, outcome):
            return None
        until = self.recovering.get(claim.partition)
        if until and all(claim.offsets.get(t, 0) >= o for t, o in until.items()):
            del self.recovering[claim.partition]  # the timer now classifies what was absorbed
            log.warning("partition %d: re-read of the lost window done", claim.partition)
        if erasures:
            return await self._erase(claim, erasures, outcome)
        return outcome

    async def _erase(
        self, claim: Claim, erasures: Sequence[InRecord], outcome: Outcome
    ) -> Outcome | None:
        """Delete each customer's state and due entry, leave a marker, and put a tombstone
        (null value) for them on the change topic; idempotent, so a retry is harmless. A
        request that names no possible customer of this partition is dead-lettered."""
        ttl = self.settings.erasure_marker_days * DAY_MS
        tombstones = Outcome()
        partitions = self._input_partitions()
        accepted = accept_erasures(erasures, tombstones, self.topics, self.limits, partitions)
        for record, customer_id in accepted:
            previous = (await self._load(claim.partition, [customer_id]))[customer_id]
            try:
                await self._timed("erase", self.store.erase(claim, customer_id, ttl))
            except Fenced:
                self.metrics.fenced.inc()
                self.claims.pop(claim.partition, None)
                return None
            if previous is not None:
                for dim, cls in previous.classes.items():
                    if cls is not None:
                        tombstones.population[(dim, cls)] -= 1
            tombstones.out.append(
                OutRecord(self.topics.changes, record.key, None, (("erased", b"true"),))
            )
            self.metrics.erasures.inc()
        tombstones.offsets[self.settings.topic_erasures] = erasures[-1].offset + 1
        if not await self._commit(claim, tombstones):
            return None
        outcome.out.extend(tombstones.out)
        outcome.offsets.update(tombstones.offsets)
        return outcome

    def _input_partitions(self) -> int | None:
        """The input topics' partition count, as lookups count it (None until known)."""
        return len(self.consumer.partitions_for_topic(self.topics.orders) or ()) or None

    def _observe_emits(
        self, outcome: Outcome, messages: Sequence[ConsumerRecord[bytes, bytes]]
    ) -> None:
        if outcome.changes and messages:
            # From the batch's oldest broker timestamp: one observation per batch, an upper bound.
            oldest = min(m.timestamp for m in messages)
            self.metrics.emit_seconds.observe(max(0.0, time.time() - oldest / 1000))
        moves = Counter(
            (c.dimension, c.from_class or "none", c.to_class or "none") for c in outcome.changes
        )
        for labels, n in moves.items():  # one labelled increment per kind, not per change
            self.metrics.transitions.labels(*labels).inc(n)

    async def _load(
        self, partition: int, customer_ids: list[str]
    ) -> dict[str, CustomerState | None]:
        return (await self._read(partition, customer_ids))[0]

    async def _read(
        self, partition: int, customer_ids: list[str]
    ) -> tuple[dict[str, CustomerState | None], set[str]]:
        """The customers' states, and which of the unknown ones were erased."""
        if not customer_ids:
            return {}, set()
        seen = await self._timed("read", self.store.read_checked(partition, customer_ids))
        if seen.run_id != self.redis_ids.get(partition, seen.run_id):
            raise RedisReset(seen.run_id)  # restarted since our claims: re-take before writing
        states = {
            cid: None if blob is None else decode_state(cid, blob)
            for cid, blob in zip(customer_ids, seen.states, strict=True)
        }
        return states, seen.erased

    async def _commit(self, claim: Claim, outcome: Outcome) -> bool:
        """The one atomic write; False if another worker now owns the partition."""
        await self.settled([claim.partition])  # the outbox is relayed in commit order
        try:
            await self._timed(
                "commit",
                self.store.commit(
                    claim,
                    states={cid: encode_state(s) for cid, s in outcome.states.items()},
                    due=outcome.due_ms(),
                    outbox=[r.encode() for r in outcome.out],
                    offsets=outcome.offsets,
                    populations=outcome.population_deltas() + outcome.population,
                ),
            )
        except Fenced:
            self.metrics.fenced.inc()
            log.warning("partition %d: fenced by a newer owner; dropping it", claim.partition)
            self.claims.pop(claim.partition, None)
            return False
        for topic, offset in outcome.offsets.items():
            claim.offsets[topic] = max(claim.offsets.get(topic, 0), offset)
        return True

    async def _relay(self, claim: Claim, records: Sequence[OutRecord]) -> None:
        """Produce outbox records, wait for the broker's acks, then trim them from Redis. If an
        earlier relay of this partition failed, drain the stored outbox first, in order."""
        await self._guard()
        if claim.partition in self.backlog:
            await self._drain(claim)
            return
        if records:
            self.backlog.add(claim.partition)  # until acked: a retry drains from Redis
            relayed = await self._produce(claim.partition, records)
            await self._ack(claim, len(records), relayed)
            self.backlog.discard(claim.partition)

    async def _drain(self, claim: Claim, in_kafka: frozenset[str] = frozenset()) -> None:
        """Relay what the outbox holds, except changes already in Kafka (``in_kafka``: ids)."""
        while True:
            stored = await self._timed("outbox", self.store.outbox(claim.partition, 500))
            if not stored:
                break
            records = [OutRecord.decode(b) for b in stored]
            fresh = [r for r in records if self._change_id(r) not in in_kafka]
            relayed = await self._produce(claim.partition, fresh)
            await self._ack(claim, len(stored), relayed)
        self.backlog.discard(claim.partition)

    def _stamp(self, outcome: Outcome, before: Mapping[str, int]) -> None:
        """Put the input offsets the partition will have reached on each change record, so
        that after Redis loses writes the changes in Kafka tell how far the lost window went."""
        reached = dict(before)
        for topic, offset in outcome.offsets.items():
            reached[topic] = max(reached.get(topic, 0), offset)
        stamp = orjson.dumps(reached)
        outcome.out = [
            OutRecord(r.topic, r.key, r.value, (*r.headers, (INPUT_HEADER, stamp)))
            if r.topic == self.topics.changes and r.value is not None
            else r
            for r in outcome.out
        ]

    async def _changes_partitions(self) -> set[int]:
        """The change topic's partitions (asked once). Fewer than the inputs' is a deployment
        error the worker survives: changes then go by key, without the read-back."""
        if self._change_partitions is None:
            self._change_partitions = set(await self.producer.partitions_for(self.topics.changes))
            inputs = await self.producer.partitions_for(self.topics.orders)
            if not inputs <= self._change_partitions:
                log.error(
                    "%s has fewer partitions than %s: changes go by key instead, and a Redis "
                    "that loses writes can break change chains",
                    self.topics.changes,
                    self.topics.orders,
                )
        return self._change_partitions

    def _change_id(self, record: OutRecord) -> str | None:
        if record.topic != self.topics.changes or record.value is None:
            return None
        return str(orjson.loads(record.value)["event_id"])

    async def _ack(self, claim: Claim, count: int, relayed: int | None = None) -> None:
        try:
            await self._timed("ack", self.store.ack_outbox(claim, count, relayed))
        except Fenced:
            self.metrics.fenced.inc()
            self.claims.pop(claim.partition, None)

    async def _produce(self, partition: int, records: Sequence[OutRecord]) -> int | None:
        """Send and wait for the acks; the change topic's offset after the last change sent.
        Changes go to the input's partition number, so that the change topic's partition N
        is the history of input partition N (read back by :meth:`_reconcile`). They go as
        whole record batches (one future each, not one per change); other records by key."""
        mine = partition if partition in await self._changes_partitions() else None
        batches: list[tuple[Awaitable[RecordMetadata], int]] = []
        others: list[Awaitable[RecordMetadata]] = []
        batch = None
        for r in records:
            if r.topic != self.topics.changes or mine is None:
                others.append(
                    await self.producer.send(r.topic, r.value, key=r.key, headers=list(r.headers))
                )
                continue
            headers = list(r.headers)
            while (
                batch is None
                or batch.append(timestamp=None, key=r.key, value=r.value, headers=headers) is None
            ):
                if batch is not None:  # full: send it; an empty batch takes any record
                    batches.append(await self._send_batch(batch, mine))
                batch = self.producer.create_batch()
        if batch is not None and mine is not None:
            batches.append(await self._send_batch(batch, mine))
        relayed = None
        for future, count in batches:
            meta = await future
            relayed = meta.offset + count
        for meta in await asyncio.gather(*others):
            if meta.topic == self.topics.changes:
                relayed = max(relayed or 0, meta.offset + 1)
        counts: dict[str, int] = defaultdict(int)
        for r in records:
            counts[r.topic] += 1
        for topic, n in counts.items():
            self.metrics.relayed.labels(topic).inc(n)
        return relayed

    async def _send_batch(
        self, batch: BatchBuilder, partition: int
    ) -> tuple[Awaitable[RecordMetadata], int]:
        # Closed, it goes out at once: an open batch waits out the producer's linger (5 ms)
        # in case more records come, and the relay knows none will.
        batch.close()
        future = await self.producer.send_batch(batch, self.topics.changes, partition=partition)
        return future, batch.record_count()

    async def _sweep_all(self) -> None:
        """Fire the time-driven changes that fell due in every owned partition."""
        await self._guard()
        now = self.clock.now_ms()
        backlog = 0
        for partition, claim in sorted(self.claims.items()):
            if partition in self.recovering:
                continue  # classify the re-read customers once, after the re-read
            due = await self._timed(
                "due", self.store.due(partition, now, self.settings.timer_batch)
            )
            backlog += len(due)
            if not due:
                continue
            try:
                states = await self._load(partition, due)
            except CorruptRecord as exc:
                self._stick(partition, exc)
                continue
            for state in states.values():
                if state is not None and state.due_day is not None:
                    self.metrics.timer_delay.observe(max(0, now - state.due_day * DAY_MS) / 1000)
            outcome = sweep_due(states, self.rules, self.topics, now)
            self._stamp(outcome, claim.offsets)
            if not await self._commit(claim, outcome):
                continue
            await self._retry("relay", partial(self._relay, claim, outcome.out))
            self.metrics.timers.inc(outcome.timers)
            self._observe_emits(outcome, [])
        self.metrics.timer_backlog.set(backlog)
        totals: dict[tuple[str, str], int] = defaultdict(int)
        for partition in list(self.claims):
            counts = await self._timed("populations", self.store.populations(partition))
            for key, count in counts.items():
                totals[key] += count
        self.metrics.population.clear()
        for (dimension, class_name), count in totals.items():
            self.metrics.population.labels(dimension, class_name).set(count)

    async def acquire(self, assigned: Iterable[TopicPartition]) -> None:
        """Fence the previous owners, relay what they left in the outbox, resume from the
        offsets Redis holds (it may be ahead of the group's committed offsets)."""
        async with self.lock:
            assigned = list(assigned)
            await self._take(assigned)
            self.metrics.partitions.set(len(self.claims))
            log.info("assigned partitions %s", sorted(self.claims))

    async def _take(self, assigned: list[TopicPartition]) -> None:
        """Claim the partitions (fencing their previous owners), bring their states in line
        with the changes Kafka already holds, relay what the outbox still holds, and resume
        from the offsets Redis holds."""
        partitions = sorted({tp.partition for tp in assigned})
        await self.settled(partitions, handing_over=True)
        for tp in assigned:
            self.committable.pop(tp, None)  # superseded by the offsets Redis holds, below
        for partition in partitions:
            identity = await self._retry("identity", partial(self.store.server_id, partition))
            claim = await self._retry("claim", partial(self.store.claim, partition))
            self.redis_ids[partition] = identity
            self.claims[partition] = claim
            self.recovering.pop(partition, None)  # the read-back below decides afresh
            done = await self._retry("rules", partial(self.store.rules_version, partition))
            if done != self.rules.version:  # e.g. the previous owner died mid-way
                self.reevaluating.setdefault(partition, 0)
            self.backlog.add(partition)
        starts = {
            p: await self._retry("relayed", partial(self.store.relayed, p)) for p in partitions
        }
        emitted = await self._retry("read back", partial(self._emitted_since, starts))
        for partition in partitions:
            claim = self.claims[partition]
            try:
                in_kafka = await self._retry(
                    "reconcile", partial(self._reconcile, claim, emitted.get(partition, []))
                )
            except CorruptRecord as exc:
                self._stick(partition, exc)
                continue
            await self._retry("drain", partial(self._drain, claim, in_kafka))
            tps = [tp for tp in assigned if tp.partition == partition]
            resume = {tp: claim.offsets[tp.topic] for tp in tps if tp.topic in claim.offsets}
            for tp, offset in resume.items():
                self.consumer.seek(tp, offset)
            unseen = [tp for tp in tps if tp not in resume]
            if unseen:
                # Redis holds nothing applied from these (new, or lost with a Redis that went
                # back in time): start from the beginning, not from the group's committed offset.
                await self.consumer.seek_to_beginning(*unseen)
            self.committable.update(resume)
        # What Redis holds is durable: a crash between the Redis commit and the offset commit
        # must not leave the group's offsets behind forever.
        await self.commit_offsets(partitions)

    async def _emitted_since(
        self, starts: dict[int, int]
    ) -> dict[int, list[ConsumerRecord[bytes, bytes]]]:
        """The change topic's records from each partition's last acknowledged relay on: in
        steady state nothing or a batch relayed but not yet acknowledged; after Redis lost
        writes, also the changes of the lost window."""
        reader = self.reader()
        await reader.start()
        try:
            known = await self._changes_partitions()
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
                    return out
                if time.monotonic() > deadline:
                    raise KafkaTimeoutError(f"reading back {self.topics.changes} took too long")
        finally:
            await reader.stop()

    async def _reconcile(
        self, claim: Claim, emitted: Sequence[ConsumerRecord[bytes, bytes]]
    ) -> frozenset[str]:
        """Set each customer's classes to the last change Kafka holds for them that Redis does
        not know about (Redis lost the writes that emitted them), so that re-reading the input
        continues each chain from what subscribers saw. Returns the ids of the changes in
        Kafka, which the outbox need not relay again."""
        # (tombstones are skipped: re-reading the erasure request repeats the erasure)
        docs = [(r, orjson.loads(r.value)) for r in emitted if r.value is not None]
        in_kafka = frozenset(str(doc["event_id"]) for _, doc in docs)
        if not in_kafka:
            return in_kafka
        stored = await self._timed("outbox", self.store.outbox(claim.partition, 1_000_000))
        known = {self._change_id(OutRecord.decode(b)) for b in stored}
        lost = []
        until: dict[str, int] = {}
        for r, doc in docs:
            if doc["event_id"] in known:
                continue
            lost.append(doc)
            for name, value in r.headers:
                if name == INPUT_HEADER:
                    for topic, offset in orjson.loads(value).items():
                        until[topic] = max(until.get(topic, 0), offset)
        if not lost:
            return in_kafka
        if any(claim.offsets.get(t, 0) < o for t, o in until.items()):
            self.recovering[claim.partition] = until
            log.warning(
                "partition %d: Redis lost writes whose changes Kafka holds; re-reading "
                "input from %s up to %s without classifying",
                claim.partition,
                claim.offsets,
                until,
            )
        states = await self._load(claim.partition, sorted({d["customer_id"] for d in lost}))
        # Follow each chain from the class Redis holds: a change whose `from` is not the
        # current class (a zombie's late re-send of an older change) is no continuation.
        current: dict[tuple[str, str], tuple[str | None, int]] = {}
        for doc in lost:
            key = (doc["customer_id"], doc["dimension"])
            state = states.get(key[0])
            held = current.get(key, (state.classes.get(key[1]) if state else None, 0))[0]
            if doc["from"] == held:
                current[key] = (doc["to"], parse_rfc3339(doc["occurred_at"]))
        outcome = Outcome()
        for (cid, dim), (to, at) in current.items():
            state = outcome.states.get(cid) or states.get(cid) or CustomerState(cid)
            old = state.classes.get(dim)
            if old == to:
                continue
            if old is not None:
                outcome.population[(dim, old)] -= 1
            if to is not None:
                outcome.population[(dim, to)] += 1
                state.classes[dim] = to
                state.since_ms[dim] = at
            else:
                state.classes.pop(dim, None)
                state.since_ms.pop(dim, None)
            outcome.states[cid] = state
        if outcome.states and await self._commit(claim, outcome):
            moved = sum(1 for delta in outcome.population.values() if delta > 0)
            self.metrics.reconciled.inc(moved)
            log.warning(
                "partition %d: classes of %d customers taken from changes Redis had lost",
                claim.partition,
                len(outcome.states),
            )
        return in_kafka

    async def _guard(self) -> None:
        """After a Redis failure, before writing again: if Redis came back as a different
        server (restarted, possibly having lost its last second of writes, or restored from
        an older copy), re-take every partition so that input is re-read from the offsets
        Redis now holds. Re-reading is safe: applying an event twice changes nothing."""
        if not self._suspect:
            return
        current = {p: await self.store.server_id(p) for p in sorted(self.claims)}
        self._suspect = False
        for partition, run_id in current.items():
            if run_id != self.redis_ids.get(partition, run_id):
                raise RedisReset(run_id)

    async def _retake_all(self) -> None:
        log.warning(
            "Redis restarted: re-taking partitions %s from its offsets", sorted(self.claims)
        )
        self.metrics.redis_resets.inc()
        owned = set(self.claims)
        await self._take([tp for tp in self.consumer.assignment() if tp.partition in owned])

    async def release(self, revoked: Iterable[TopicPartition]) -> None:
        async with self.lock:  # waits for the batch in flight
            revoked = list(revoked)
            await self.settled({tp.partition for tp in revoked}, handing_over=True)
            await self.commit_offsets({tp.partition for tp in revoked})
            for tp in revoked:
                self.claims.pop(tp.partition, None)
                self.redis_ids.pop(tp.partition, None)
                self.recovering.pop(tp.partition, None)
                self.stuck.pop(tp.partition, None)  # the next owner meets the state afresh
            self.metrics.partitions.set(len(self.claims))
            self.metrics.stuck.set(len(self.stuck))

    def _stick(self, partition: int, exc: CorruptRecord) -> None:
        """Stop a partition on a stored state this worker cannot read (damaged, or written by
        a newer release during a rolling update) instead of the whole process, which would
        stop every worker that took the partition over in turn. Nothing of the batch was
        written. The partition is paused and, every STUCK_RETRY_MS, taken again as on an
        assignment (read from the offsets Redis holds), until the state reads: repaired, or
        a newer worker took the partition over. Its other customers wait too: input offsets
        are committed in order."""
        self.claims.pop(partition, None)  # nothing of it runs until it is taken again
        self.consumer.pause(*self._assigned(partition))
        retry_s = self.settings.stuck_retry_ms / 1000
        self.stuck[partition] = time.monotonic() + retry_s
        self.metrics.stuck.set(len(self.stuck))
        log.error("partition %d stopped: %s; trying again in %.0f s", partition, exc, retry_s)

    async def _retake_stuck(self) -> None:
        now = time.monotonic()
        due = [p for p, at in self.stuck.items() if at <= now]
        if not due:
            return
        async with self.lock:
            for partition in due:
                tps = self._assigned(partition)
                if self.stuck.pop(partition, None) is None or not tps:
                    continue  # revoked meanwhile
                await self._take(tps)  # sticks it again if the state still does not read
                if partition not in self.stuck:
                    self.consumer.resume(*tps)
        self.metrics.stuck.set(len(self.stuck))

    def _assigned(self, partition: int) -> list[TopicPartition]:
        return [tp for tp in self.consumer.assignment() if tp.partition == partition]

    async def _timed(self, op: str, call: Awaitable[T]) -> T:
        started = time.perf_counter()
        try:
            return await call
        except Fenced:
            raise
        except Exception:
            self.metrics.redis_errors.labels(op).inc()
            raise
        finally:
            self.metrics.redis_seconds.labels(op).observe(time.perf_counter() - started)

    async def _retry(self, what: str, attempt: Callable[[], Awaitable[T]]) -> T:
        """Retry transient failures with capped exponential backoff, reporting not-ready."""
        delay = 0.1
        while True:
            try:
                result = await attempt()
            except TRANSIENT as exc:
                if isinstance(exc, RedisError | OSError):
                    self._suspect = True
                await self._trouble("redis/kafka", what, exc, delay)
                delay = min(delay * 2, 5.0)
                continue
            if not self.healthy:
                self.healthy = True
                self.metrics.ready.set(1)
                log.info("%s: connected", what)
            return result

    async def _trouble(self, system: str, what: str, exc: BaseException, delay: float = 1) -> None:
        if self.healthy:
            log.warning("%s failed (%s: %s); retrying", what, system, exc)
        self.healthy = False
        self.metrics.ready.set(0)
        await asyncio.sleep(delay)


class _Listener(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, pipeline: Pipeline) -> None:
        self.pipeline = pipeline

    async def on_partitions_revoked(self, revoked: list[TopicPartition]) -> None:
        await self.pipeline.release(revoked)

    async def on_partitions_assigned(self, assigned: list[TopicPartition]) -> None:
        await self.pipeline.acquire(assigned)
