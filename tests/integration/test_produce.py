"""`segment-worker produce` puts an events file where the worker reads it: each valid line, as
it is, on the topic of its type, keyed and partitioned by its customer id, in file order per
partition; bad lines stay out and are reported; missing topics, or topics of different partition
counts (or a count other than the one the state in Redis is built with, see
test_partition_count.py), stop it before anything is sent."""

import asyncio
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import replace
from itertools import islice
from pathlib import Path

import orjson
import pytest
from aiokafka import ConsumerRecord

from tests.integration.live_support import DAY0, PARTITIONS, env_of, make_settings, read_all
from worker.core.events import ParseLimits, Rejection, parse_event
from worker.kafka import partition_of
from worker.settings import Settings
from worker.tools.embedded import RedisServer
from worker.tools.servers import KafkaServer, free_port
from worker.tools.simulate import FeedFaults, Simulator

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

UNUSED_REDIS = "redis://127.0.0.1:1/0"  # a Redis that does not answer
BAD = [
    b'{"type":"order","event_id":"x1","customer_id":"cus_bad"}',  # no amount, currency, ...
    b"not json",
    b'{"type":"click","event_id":"x2","customer_id":"cus_bad","occurred_at":"2026-03-02T00:00:00Z"}',
    # Valid against the contract, but the default rules have no rate for EUR: the worker
    # would dead-letter it (unsupported_currency), so it is not sent.
    b'{"type":"order","event_id":"x3","customer_id":"cus_bad","occurred_at":"2026-03-02T00:00:00Z",'
    b'"amount":"10.00","currency":"EUR","status":"paid","order_id":"x3"}',
]
VISIT = (
    b'{"type":"visit","event_id":"v1","customer_id":"c1",'
    b'"occurred_at":"2026-03-02T00:00:00Z","action":"login"}\n'
)


def run_produce(settings: Settings, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "worker", "produce", *args],
        check=False,
        env=env_of(settings),
        capture_output=True,
        text=True,
        timeout=120,
    )


def topics_of(settings: Settings) -> dict[str, list[ConsumerRecord[bytes, bytes]]]:
    async def read() -> dict[str, list[ConsumerRecord[bytes, bytes]]]:
        names = (settings.topic_orders, settings.topic_visits, settings.topic_profiles)
        return {name: await read_all(settings, name) for name in names}

    return asyncio.run(read())


def test_a_file_lands_on_the_partitions_the_worker_reads(
    broker: KafkaServer, redis_server: RedisServer, tmp_path: Path
) -> None:
    # Redis is asked which partition count the state is built with: none yet (empty).
    settings = asyncio.run(make_settings(broker, redis_server.url))
    sim = Simulator(3, 300, DAY0, faults=FeedFaults.realistic())
    lines = [e.jsonl() for e in islice(sim, 3000)]
    lines[10:10] = BAD
    path = tmp_path / "history.jsonl"
    path.write_bytes(b"\n".join(lines[:50]) + b"\n\n" + b"\n".join(lines[50:]) + b"\n")
    rejects = tmp_path / "rejects.jsonl"

    done = run_produce(settings, str(path), "--rejects", str(rejects))

    assert done.returncode == 0, done.stderr
    # The expectation, line by line, from the parser the worker uses.
    expected: dict[tuple[str, int], list[bytes]] = defaultdict(list)
    refused = []
    topic_of = {
        "Order": settings.topic_orders,
        "Visit": settings.topic_visits,
        "Profile": settings.topic_profiles,
    }
    limits = ParseLimits(settings.max_event_bytes, settings.future_skew_ms)
    for number, raw in enumerate([*lines[:50], b"", *lines[50:]], 1):
        if not raw:
            continue
        event = parse_event(raw, None, now_ms=int(time.time() * 1000), limits=limits)
        if isinstance(event, Rejection) or getattr(event, "currency", "USD") != "USD":
            refused.append(number)
            continue
        topic = topic_of[type(event).__name__]
        expected[(topic, partition_of(event.customer_id, PARTITIONS))].append(raw)
    assert len(refused) >= len(BAD)
    got: dict[tuple[str, int], list[bytes]] = defaultdict(list)
    for topic, records in topics_of(settings).items():
        for record in sorted(records, key=lambda r: (r.partition, r.offset)):
            document = orjson.loads(record.value or b"")
            assert record.key == document["customer_id"].encode()
            got[(topic, record.partition)].append(record.value or b"")
    assert got == expected  # every valid line once, as it was, in file order per partition
    reported = [orjson.loads(line) for line in rejects.read_bytes().splitlines()]
    assert [r["source"]["line"] for r in reported] == refused
    assert [r["stage"] for r in reported if r["reason"] == "unsupported_currency"] == ["apply"]
    assert "not sent" in done.stderr and f"{len(refused)} not sent" in done.stderr

    strict = run_produce(settings, "--strict", "--quiet", str(path))
    assert strict.returncode == 1 and strict.stderr == ""


def test_a_redis_that_does_not_answer_is_said_and_the_file_still_sent(
    broker: KafkaServer, tmp_path: Path
) -> None:
    """Redis is asked only to compare partition counts (a worker refuses topics of another
    count than its state's anyway): a producer that cannot reach it still sends."""
    settings = asyncio.run(make_settings(broker, UNUSED_REDIS))
    path = tmp_path / "one.jsonl"
    path.write_bytes(VISIT)

    done = run_produce(settings, "--quiet", str(path))

    assert done.returncode == 0, done.stderr
    assert done.stderr.startswith(
        f"segment-worker: the partition count ({PARTITIONS}) not checked against the state in "
        f"Redis at {UNUSED_REDIS}, which could not be asked (Error 111 connecting to 127.0.0.1:1."
    )
    assert done.stderr.endswith(
        "; a worker refuses to run on topics of another count than its state's\n"
    )
    assert len(topics_of(settings)[settings.topic_visits]) == 1


def test_missing_topics_stop_it_before_anything_is_sent(
    broker: KafkaServer, tmp_path: Path
) -> None:
    settings = asyncio.run(make_settings(broker, UNUSED_REDIS))
    path = tmp_path / "one.jsonl"
    path.write_bytes(VISIT)
    missing = replace(settings, topic_profiles=settings.topic_profiles + "-nope")

    done = run_produce(missing, str(path))

    assert done.returncode == 2
    assert f"topic '{missing.topic_profiles}' does not exist" in done.stderr
    assert "Traceback" not in done.stderr
    assert all(not records for records in topics_of(settings).values())


def test_topics_of_different_partition_counts_stop_it_before_anything_is_sent(
    broker: KafkaServer, topics: Callable[..., dict[str, str]], tmp_path: Path
) -> None:
    """The worker would dead-letter every visit as wrong_partition: they must be co-partitioned."""
    settings = asyncio.run(make_settings(broker, UNUSED_REDIS))
    odd = replace(settings, topic_visits=topics(visits=2)["visits"])
    n = PARTITIONS
    path = tmp_path / "one.jsonl"
    path.write_bytes(VISIT)

    done = run_produce(odd, str(path))

    assert done.returncode == 2, done.stderr
    assert done.stderr.splitlines() == [
        "segment-worker: bad setting: SEGMENT_WORKER_TOPIC_*: the input and erasure topics must "
        "have the same partition count (co-partitioned, docs/contracts.md), but "
        f"'{odd.topic_orders}' has {n}, '{odd.topic_visits}' has 2, '{odd.topic_profiles}' has {n}, "
        f"'{odd.topic_erasures}' has {n}; create them with one count"
    ]
    assert all(not records for records in topics_of(odd).values())


def test_a_kafka_it_cannot_reach_is_named_in_one_line(tmp_path: Path) -> None:
    nowhere = f"127.0.0.1:{free_port()}"
    path = tmp_path / "one.jsonl"
    path.write_bytes(VISIT)

    done = run_produce(Settings(kafka_bootstrap=nowhere), str(path))

    assert done.returncode == 2, done.stderr
    [line] = done.stderr.splitlines()  # aiokafka's own log lines said in it, not before it
    assert line.startswith(
        f"segment-worker: cannot reach Kafka at {nowhere} (SEGMENT_WORKER_KAFKA_BOOTSTRAP): "
        f'KafkaConnectionError: Unable connect to "{nowhere}": [Errno 111]'
    )
