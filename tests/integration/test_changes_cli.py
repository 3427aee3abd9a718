"""`segment-worker changes` reads the change topic of the embedded broker (Tansu, which
librdkafka tools such as kcat cannot talk to), filtered by headers, key and follow mode."""

import asyncio
import os
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import orjson
import pytest
from aiokafka import AIOKafkaProducer

from worker.tools.embedded import Broker

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]


def change(customer: str, dimension: str, to: str) -> dict[str, object]:
    return {
        "event_id": f"{customer}-{dimension}-{to}",
        "customer_id": customer,
        "dimension": dimension,
        "from": None,
        "to": to,
        "occurred_at": "2026-01-02T00:00:00.000Z",
        "cause": {"type": "order", "event_id": "o1"},
    }


CHANGES = [
    change("cus_a", "value_tier", "high"),
    change("cus_a", "lifecycle", "new"),
    change("cus_b", "value_tier", "low"),
    change("cus_c", "value_tier", "high"),
]


async def produce(
    broker: Broker, topic: str, records: list[tuple[str, bytes | None, dict[str, str]]]
) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=broker.bootstrap)
    await producer.start()
    try:
        for key, value, headers in records:
            await producer.send_and_wait(
                topic,
                value,
                key=key.encode(),
                headers=[(k, v.encode()) for k, v in headers.items()],
            )
    finally:
        await producer.stop()


def as_records(changes: list[dict[str, object]]) -> list[tuple[str, bytes | None, dict[str, str]]]:
    return [
        (
            str(c["customer_id"]),
            orjson.dumps(c),
            {"dimension": str(c["dimension"]), "to": str(c["to"])},
        )
        for c in changes
    ]


@pytest.fixture
def changes_topic(broker: Broker, topics: Callable[..., dict[str, str]]) -> str:
    topic = topics(changes=4)["changes"]
    asyncio.run(produce(broker, topic, as_records(CHANGES)))
    return topic


def cli(broker: Broker, topic: str, *args: str, **popen: object) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SEGMENT_WORKER_")}
    env["SEGMENT_WORKER_TOPIC_CHANGES"] = topic
    return subprocess.Popen(
        [sys.executable, "-m", "worker", "changes", "--kafka", broker.bootstrap, *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **popen,  # type: ignore[call-overload]
    )


def run(broker: Broker, topic: str, *args: str) -> list[str]:
    proc = cli(broker, topic, *args)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    return out.splitlines()


def ids(lines: list[str]) -> list[str]:
    return sorted(orjson.loads(line)["event_id"] for line in lines)


def test_prints_every_change_the_topic_holds_then_exits(broker: Broker, changes_topic: str) -> None:
    assert ids(run(broker, changes_topic)) == sorted(str(c["event_id"]) for c in CHANGES)


def test_filters_by_header_and_customer(broker: Broker, changes_topic: str) -> None:
    high = run(broker, changes_topic, "--dimension", "value_tier", "--to", "high")
    assert ids(high) == ["cus_a-value_tier-high", "cus_c-value_tier-high"]
    assert ids(run(broker, changes_topic, "--customer", "cus_a")) == [
        "cus_a-lifecycle-new",
        "cus_a-value_tier-high",
    ]


def test_skipped_changes_are_not_parsed_and_the_table_is_readable(
    broker: Broker, changes_topic: str
) -> None:
    junk = [
        ("cus_z", b"not json", {"dimension": "rfm", "to": "x"}),
        ("cus_a", None, {"erased": "true"}),
    ]
    asyncio.run(produce(broker, changes_topic, junk))
    lines = run(broker, changes_topic, "--format", "table", "--dimension", "lifecycle")
    assert lines[0].split() == ["occurred_at", "customer", "dimension", "from", "->", "to", "cause"]
    assert [line.split() for line in lines[1:]] == [
        ["2026-01-02T00:00:00.000Z", "cus_a", "lifecycle", "-", "->", "new", "order"]
    ]
    erased = run(broker, changes_topic, "--customer", "cus_a")
    assert orjson.loads(erased[-1]) == {"customer_id": "cus_a", "erased": True}


def test_follow_prints_new_changes_until_ctrl_c(broker: Broker, changes_topic: str) -> None:
    proc = cli(broker, changes_topic, "--follow")
    assert proc.stdout is not None and proc.stderr is not None
    fresh = [change("cus_d", "value_tier", "medium"), change("cus_d", "rfm", "new")]
    try:
        assert proc.stderr.readline().startswith("changes: following ")
        asyncio.run(produce(broker, changes_topic, as_records(fresh)))
        # It started at the end: only the new ones (one customer, one partition: in order).
        assert [orjson.loads(proc.stdout.readline()) for _ in fresh] == fresh
    finally:
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert out == ""


def test_a_broker_it_cannot_reach_gives_status_2_and_says_which() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "worker", "changes", "--kafka", "127.0.0.1:1"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 2
    [line] = proc.stderr.splitlines()  # aiokafka's own log lines said in it, not before it
    assert line.startswith("segment-worker: cannot reach Kafka at 127.0.0.1:1 (--kafka): ")
    assert 'Unable connect to "127.0.0.1:1": [Errno 111]' in line


def test_a_dimension_the_rules_do_not_have_is_a_usage_error() -> None:
    """Else a typo prints nothing and exits 0, as if no customer had changed."""
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "worker",
            "changes",
            "--kafka",
            "127.0.0.1:1",
            "--dimension",
            "tier",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 2
    assert "segment-worker: unknown dimension 'tier'; the rules have: lifecycle" in proc.stderr


CHANGES_CMD = [sys.executable, "-m", "worker", "changes"]


def test_a_refused_rules_file_does_not_stop_the_watch(tmp_path: Path) -> None:
    """During a rules incident (the worker refused the file and runs its old rules) the
    change topic is what an operator watches: --dimension is then taken unchecked."""
    broken = tmp_path / "rules.toml"
    broken.write_text("[orders\n")
    proc = subprocess.run(
        [*CHANGES_CMD, "--kafka", "127.0.0.1:1", "--dimension", "value_tier"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={**os.environ, "SEGMENT_WORKER_RULES": str(broken)},
    )
    assert "--dimension not checked, the rules file is refused" in proc.stderr
    assert "cannot reach Kafka" in proc.stderr  # it went on to watch
