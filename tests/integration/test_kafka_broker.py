"""What the worker relies on from Kafka, proven against the embedded Tansu broker.

Plain aiokafka, no worker code: keyed produce with headers (no idempotence), group consumers
with the range assignor and manual commits, resume from committed offsets, co-partitioned
assignment of two topics, takeover when a member leaves, and how long a group join takes.

Tansu facts found here (v0.6.0-510f3e2): a JoinGroup round waits about half the session
timeout (at least 1 s) for members to (re)join, so ``session_timeout_ms=6000`` makes a join
take ~3 s and a second member ~4 s; with the usual 30-60 s session timeouts a join takes
15-30 s. Tansu numbers a group's first generation 0 and aiokafka only sends LeaveGroup when
``generation > 0``, so the first member of a new group never leaves cleanly: the next join
waits for its session to expire (~11 s with a 6 s session; later generations leave fine).
``end_offsets()`` (ListOffsets) under-reports for multi-record batches, while the high
watermark a fetch returns (``highwater()``) is exact.
"""

import asyncio
import time
from collections import defaultdict
from collections.abc import Callable, Iterable
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.coordinator.assignors.range import RangePartitionAssignor

from worker.tools.embedded import Broker

pytestmark = [pytest.mark.integration, pytest.mark.broker_only, pytest.mark.timeout(120)]

# Lowered group timings: a join takes ~3 s on Tansu (half the session timeout).
GROUP_TIMINGS: dict[str, int] = {
    "session_timeout_ms": 6000,
    "heartbeat_interval_ms": 500,
    "rebalance_timeout_ms": 6000,
    "max_poll_interval_ms": 10000,
}

Topics = Callable[..., dict[str, str]]


def producer(broker: Broker) -> AIOKafkaProducer:
    # Tansu has no InitProducerId: idempotence (the aiokafka default for acks="all") must be off.
    return AIOKafkaProducer(
        bootstrap_servers=broker.bootstrap, enable_idempotence=False, acks="all", linger_ms=5
    )


def consumer(broker: Broker, group: str, *topics: str, **extra: Any) -> AIOKafkaConsumer:
    return AIOKafkaConsumer(
        *topics,
        bootstrap_servers=broker.bootstrap,
        group_id=group,
        partition_assignment_strategy=(RangePartitionAssignor,),
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        **{**GROUP_TIMINGS, **extra},
    )


async def produce(broker: Broker, topic: str, count: int, keys: int = 10) -> dict[int, list[int]]:
    """``count`` keyed records with headers, sent in batches; returns partition -> offsets."""
    placed: dict[int, list[int]] = defaultdict(list)
    prod = producer(broker)
    await prod.start()
    try:
        sent = [
            await prod.send(
                topic,
                value=f"v{i}".encode(),
                key=f"k{i % keys}".encode(),
                headers=[("seq", str(i).encode()), ("source", b"test"), ("empty", b"")],
            )
            for i in range(count)
        ]
        for meta in await asyncio.gather(*sent):
            placed[meta.partition].append(meta.offset)
    finally:
        await prod.stop()
    return dict(placed)


async def drain(
    cons: AIOKafkaConsumer, want: int, max_records: int = 7, timeout: float = 30.0
) -> list[ConsumerRecord[bytes, bytes]]:
    """getmany() batches until ``want`` records arrived; checks every batch's size bound."""
    got: list[ConsumerRecord[bytes, bytes]] = []
    deadline = time.monotonic() + timeout
    while len(got) < want:
        assert time.monotonic() < deadline, f"only {len(got)} of {want} records"
        batch = await cons.getmany(timeout_ms=200, max_records=max_records)
        assert sum(len(records) for records in batch.values()) <= max_records
        for records in batch.values():
            got.extend(records)
    return got


def partitions_of(assigned: Iterable[TopicPartition], topic: str) -> set[int]:
    return {tp.partition for tp in assigned if tp.topic == topic}


async def test_topics_are_created_with_four_partitions(broker: Broker, topics: Topics) -> None:
    names = topics(orders=4, visits=4)
    admin = AIOKafkaAdminClient(bootstrap_servers=broker.bootstrap)
    await admin.start()
    try:
        described = await admin.describe_topics(list(names.values()))
    finally:
        await admin.close()
    assert {t["topic"] for t in described} == set(names.values())
    for topic in described:
        assert topic["error_code"] == 0
        assert sorted(p["partition"] for p in topic["partitions"]) == [0, 1, 2, 3]
        assert all(p["leader"] >= 0 for p in topic["partitions"])


async def test_keyed_records_with_headers_round_trip_in_bounded_batches(
    broker: Broker, topics: Topics
) -> None:
    orders = topics(orders=4)["orders"]
    placed = await produce(broker, orders, 60)
    assert len(placed) > 1  # keys spread over partitions
    cons = consumer(broker, f"g-{orders}", orders)
    await cons.start()
    try:
        records = await drain(cons, 60)
    finally:
        await cons.stop()
    assert sorted(int(dict(r.headers)["seq"]) for r in records) == list(range(60))
    partition_of_key: dict[bytes | None, set[int]] = defaultdict(set)
    for r in records:
        seq = int(dict(r.headers)["seq"])
        assert r.value == f"v{seq}".encode()
        assert r.key == f"k{seq % 10}".encode()
        assert r.headers == (("seq", str(seq).encode()), ("source", b"test"), ("empty", b""))
        partition_of_key[r.key].add(r.partition)
    assert all(len(ps) == 1 for ps in partition_of_key.values())  # a key stays on one partition
    # offsets within a partition arrive in order
    by_partition: dict[int, list[int]] = defaultdict(list)
    for r in records:
        by_partition[r.partition].append(r.offset)
    assert {p: sorted(offs) for p, offs in placed.items()} == dict(by_partition)


async def test_second_consumer_resumes_from_explicitly_committed_offsets(
    broker: Broker, topics: Topics
) -> None:
    orders = topics(orders=4)["orders"]
    placed = await produce(broker, orders, 80)
    group = f"g-{orders}"
    first = consumer(broker, group, orders)
    await first.start()
    try:
        seen = await drain(first, 80)
        # commit "half way" per partition: the next offset to read, as the worker does
        commit = {
            TopicPartition(orders, p): offsets[len(offsets) // 2] for p, offsets in placed.items()
        }
        await first.commit(commit)
        for tp, offset in commit.items():
            assert await first.committed(tp) == offset
    finally:
        await first.stop()
    assert len(seen) == 80

    second = consumer(broker, group, orders)
    t0 = time.monotonic()
    await second.start()  # ~11 s: the first member (generation 0) did not send LeaveGroup
    print(f"resume join {time.monotonic() - t0:.1f}s")
    try:
        expected = {(p, o) for p, offsets in placed.items() for o in offsets[len(offsets) // 2 :]}
        rest = await drain(second, len(expected))
        assert {(r.partition, r.offset) for r in rest} == expected
        # Nothing else was there: an end marker sent to each partition now is the next
        # record of every partition (a partition is read in order).
        prod = producer(broker)
        await prod.start()
        try:
            for p in range(4):
                await prod.send_and_wait(orders, value=b"end", key=b"end", partition=p)
        finally:
            await prod.stop()
        after = await drain(second, 4)
        assert sorted((r.partition, r.value) for r in after) == [(p, b"end") for p in range(4)]
        for tp, offset in commit.items():
            assert await second.committed(tp) == offset
    finally:
        await second.stop()


async def test_high_watermark_is_exact_but_end_offsets_may_under_report(
    broker: Broker, topics: Topics
) -> None:
    """Lag must come from the fetch's high watermark, not ListOffsets."""
    orders = topics(orders=1)["orders"]
    placed = await produce(broker, orders, 50)
    tp = TopicPartition(orders, 0)
    cons = AIOKafkaConsumer(bootstrap_servers=broker.bootstrap, enable_auto_commit=False)
    await cons.start()
    try:
        cons.assign([tp])
        await cons.seek_to_beginning(tp)
        await drain(cons, 50)
        assert cons.highwater(tp) == max(placed[0]) + 1 == 50
        assert (await cons.end_offsets([tp]))[tp] <= 50  # Tansu: batches counted, not records
    finally:
        await cons.stop()


async def test_copartitioned_assignment_takeover_and_join_times(
    broker: Broker, topics: Topics
) -> None:
    names = topics(orders=4, visits=4)
    orders, visits = names["orders"], names["visits"]
    group = f"g-{orders}"
    all_partitions = {TopicPartition(t, p) for t in (orders, visits) for p in range(4)}
    a = consumer(broker, group, orders, visits)
    b = consumer(broker, group, orders, visits)
    polling: list[asyncio.Task[None]] = []

    async def poll_forever(cons: AIOKafkaConsumer) -> None:
        while True:
            await cons.getmany(timeout_ms=100)

    async def settled(*members: AIOKafkaConsumer, timeout: float = 20.0) -> float:
        """Seconds until the members' assignments are disjoint and cover all 8 partitions."""
        start = time.monotonic()
        while time.monotonic() - start < timeout:
            parts = [m.assignment() for m in members]
            covered = set().union(*parts) == all_partitions
            if all(parts) and covered and sum(map(len, parts)) == len(all_partitions):
                return time.monotonic() - start
            await asyncio.sleep(0.05)
        raise AssertionError(f"no settled assignment: {[m.assignment() for m in members]}")

    try:
        t0 = time.monotonic()
        await a.start()
        polling.append(asyncio.create_task(poll_forever(a)))
        first_join = time.monotonic() - t0 + await settled(a)

        t0 = time.monotonic()
        await b.start()
        polling.append(asyncio.create_task(poll_forever(b)))
        second_join = time.monotonic() - t0 + await settled(a, b)
        for member in (a, b):
            mine = member.assignment()
            # same partition numbers of both topics (range assignor, co-partitioned topics)
            assert partitions_of(mine, orders) == partitions_of(mine, visits)
            assert len(partitions_of(mine, orders)) == 2

        polling.pop().cancel()
        t0 = time.monotonic()
        await b.stop()  # LeaveGroup: the survivor takes everything
        takeover = time.monotonic() - t0 + await settled(a)
        assert a.assignment() == all_partitions
    finally:
        for task in polling:
            task.cancel()
        await asyncio.gather(*polling, return_exceptions=True)
        await a.stop()
        await b.stop()

    timings = f"join {first_join:.1f}s, second member {second_join:.1f}s, takeover {takeover:.1f}s"
    print(timings)  # measured, not asserted: ~3 s, ~4 s, ~3 s on an idle machine
