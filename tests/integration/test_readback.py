"""Forged and garbage records on the change topic, met when a partition is taken over: the
new owner skips and counts them, Redis keeps replay's classes, and the partition goes on."""

import asyncio
import re
from collections import Counter
from collections.abc import Callable
from dataclasses import replace

import orjson
import pytest
from aiohttp import ClientError, ClientSession
from aiokafka import TopicPartition

from tests.integration.live_support import (
    NOW,
    PARTITIONS,
    RULES,
    all_committed,
    assert_matches_replay,
    assert_state_matches,
    change_ids,
    documents,
    one_day_of_traffic,
    produce,
    read_all,
    replay,
    stored_states,
    wait_until,
    worker_log,
    worker_process,
)
from worker import kafka
from worker.core.changes import Cause, change_id
from worker.core.reconcile import INPUT_HEADER, MAC_HEADER, sign
from worker.core.timeutil import DAY_MS, format_ms
from worker.kafka import partition_of
from worker.keys import RELAYED, Layout
from worker.redis.client import connect
from worker.settings import Settings
from worker.tools.servers import KafkaServer

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]

Headers = list[tuple[str, bytes]]


def forged_change(cid: str, old: str | None, new: str, rules_version: str) -> bytes:
    """A change document as convincing as a forger can make it: its id follows from its
    cause and transition, as the worker computes it."""
    cause = Cause("order", "ev-forged", NOW)
    return orjson.dumps(
        {
            "event_id": change_id(cid, "value_tier", cause, old, new),
            "customer_id": cid,
            "dimension": "value_tier",
            "from": old,
            "to": new,
            "occurred_at": format_ms(NOW),
            "emitted_at": format_ms(NOW),
            "cause": {"type": "order", "event_id": "ev-forged"},
            "state": {},
            "rules_version": rules_version,
        }
    )


async def forge(
    settings: Settings, partition: int, cid: str, old: str | None, signed: bool
) -> tuple[list[bytes], Counter[str]]:
    """Produce forged and garbage records to the change topic's ``partition``; the values
    produced and the rejections the next owner must count."""
    far = orjson.dumps({settings.topic_orders: 10**15})
    near = orjson.dumps({settings.topic_orders: 1})
    high = forged_change(cid, old, "high", RULES.version)
    records: list[tuple[bytes, Headers]] = [
        (high, [(INPUT_HEADER, far)]),  # what the probe produced
        (b"\xff not json {", [(INPUT_HEADER, near)]),
        (b"[1, 2, 3]", [(INPUT_HEADER, near)]),
        (forged_change(cid, old, "high", "sha256:" + "e" * 16), [(INPUT_HEADER, near)]),
    ]
    if signed:
        # Well formed, offsets in range, the current rules: only the signature tells.
        wrong_key = sign(b"x" * 32, partition, cid.encode(), high, near)
        records += [
            (high, [(INPUT_HEADER, near)]),
            (high, [(INPUT_HEADER, near), (MAC_HEADER, wrong_key)]),
        ]
        expected = Counter({"not_signed": 5, "bad_signature": 1})
    else:
        expected = Counter(
            {"offsets_ahead": 1, "not_json": 1, "bad_document": 1, "unknown_rules": 1}
        )
    producer = kafka.producer(settings)
    await producer.start()
    try:
        for value, headers in records:
            await producer.send_and_wait(
                settings.topic_changes,
                value,
                key=cid.encode(),
                partition=partition,
                headers=headers,
            )
    finally:
        await producer.stop()
    return [value for value, _ in records], expected


async def rejections(settings: Settings) -> Counter[str]:
    async with (
        ClientSession() as http,
        http.get(f"http://127.0.0.1:{settings.http_port}/metrics") as resp,
    ):
        text = await resp.text()
    pattern = r'segment_worker_readback_rejected_total\{reason="([a-z_]+)"\} (\S+)'
    return Counter({m[1]: int(float(m[2])) for m in re.finditer(pattern, text)})


@pytest.mark.parametrize("signed", [True, False], ids=["signing-key", "no-key"])
async def test_forged_and_garbage_change_records_are_skipped_on_taking_a_partition(
    settings: Settings, signed: bool
) -> None:
    if signed:
        settings = replace(settings, change_signing_key="k" * 32)
    events = one_day_of_traffic(150, seed=37, orders_only=True)
    half = len(events) // 2
    produced = await produce(settings, events[:half])
    async with worker_process(settings, NOW):
        await wait_until(lambda: all_committed(settings, produced), 90, "the first half")
    cid = Counter(e.key for e in events[:half]).most_common(1)[0][0].decode()
    partition = partition_of(cid, PARTITIONS)
    held = (await stored_states(settings, [cid]))[cid]
    assert held is not None and held.classes.get("value_tier") != "high"
    forged, expected = await forge(settings, partition, cid, held.classes.get("value_tier"), signed)
    # Redis forgets how far its changes were relayed: the next owner reads them all back,
    # the forged ones and the worker's own.
    client = connect(settings)
    await client.hset(Layout(settings.redis_prefix).meta(partition), RELAYED, 0)
    await client.aclose()
    produced = await produce(settings, events[half:], produced)
    async with worker_process(settings, NOW):
        await wait_until(lambda: all_committed(settings, produced), 90, "the second half")
        assert await rejections(settings) == expected  # the worker's own records all pass
    expected_replay, expected_changes, _ = replay(events, NOW)
    await assert_state_matches(settings, expected_replay, NOW // DAY_MS)
    records = await read_all(settings, settings.topic_changes)
    assert sum(1 for r in records if r.value in forged) == len(forged)
    got = change_ids([r for r in records if r.value not in forged])
    assert got == documents(expected_changes)


async def test_a_take_that_fails_stops_its_partitions_until_it_succeeds(settings: Settings) -> None:
    """An error escaping a take (here a damaged relay mark) used to vanish into aiokafka's
    log, leaving partitions assigned but never taken: consumed, and nothing of them applied.
    Now they are stopped, taken again every STUCK_RETRY_MS, and go on once the take works."""
    settings = replace(settings, stuck_retry_ms=1000)
    events = one_day_of_traffic(100, seed=43, orders_only=True)
    half = len(events) // 2
    produced = await produce(settings, events[:half])
    async with worker_process(settings, NOW):
        await wait_until(lambda: all_committed(settings, produced), 90, "the first half")
    damaged = 1
    client = connect(settings)
    meta = Layout(settings.redis_prefix).meta(damaged)
    await client.hset(meta, RELAYED, "not a number")
    produced = await produce(settings, events[half:], produced)
    async with worker_process(settings, NOW) as worker:

        async def stopped() -> bool:
            try:
                async with (
                    ClientSession() as http,
                    http.get(f"http://127.0.0.1:{settings.http_port}/metrics") as resp,
                ):
                    text = await resp.text()
            except ClientError:  # not listening yet
                return False
            return re.search(r"^segment_worker_stuck_partitions [1-9]", text, re.M) is not None

        await wait_until(stopped, 60, "the partitions stopped")
        await asyncio.sleep(3)  # a few retries, each failing again
        assert worker.poll() is None
        assert not await all_committed(settings, produced)
        assert "partition 1 stopped: invalid literal for int()" in worker_log(worker)
        await client.hset(meta, RELAYED, 0)
        await client.aclose()
        await wait_until(lambda: all_committed(settings, produced), 90, "the repaired take")
    await assert_matches_replay(settings, events)


async def test_stamps_are_checked_against_exact_input_ends(
    broker: KafkaServer, topics: Callable[..., dict[str, str]]
) -> None:
    """A change read back is trusted only if its ``sw.input`` stamp lies within the input's
    end offsets. ListOffsets may under-report them (Tansu answers the base offset of the last
    record batch + 1): genuine changes stamped past that were skipped as ``offsets_ahead``,
    and the lost window of a Redis that lost writes went unseen (the Tansu chaos run's
    conflicting duplicates and broken chains). The ends come from a fetch's high watermark."""
    orders = topics(orders=2)["orders"]
    full, empty = TopicPartition(orders, 0), TopicPartition(orders, 1)
    producer = kafka.producer(broker.bootstrap, enable_idempotence=False)
    await producer.start()
    try:  # one record batch of 100
        sent = [await producer.send(orders, b"{}", partition=0) for _ in range(100)]
        await asyncio.gather(*sent)
    finally:
        await producer.stop()
    reader = kafka.consumer(broker.bootstrap, enable_auto_commit=False)
    await reader.start()
    try:
        assert await kafka.end_offsets(reader, [full, empty], 30) == {full: 100, empty: 0}
    finally:
        await reader.stop()
