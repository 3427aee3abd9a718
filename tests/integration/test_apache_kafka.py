"""The Apache Kafka helper (worker/tools/apache_kafka.py): a node starts from the pinned jars,
is ready only once a record makes the round trip, and leaves nothing running when stopped; a
3-node cluster replicates every partition three times, needs two in sync for ``acks=all``,
and keeps serving when the leader of a partition is killed -9.
"""

import asyncio
from pathlib import Path

import psutil
import pytest
import yaml

from tests.integration.live_support import topic_configs
from worker import kafka as clients
from worker.tools.apache_kafka import ApacheKafka, chosen_broker
from worker.tools.embedded import Broker
from worker.tools.kafka_jars import BrokerUnavailable, broker_jars, kafka_version
from worker.tools.kafka_node import SERVER_PROPERTIES

ROOT = Path(__file__).resolve().parents[2]

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]


def gone(pids: list[int | None]) -> bool:
    """None of ``pids`` is a live process (a zombie would count as live)."""
    return not any(pid is not None and psutil.pid_exists(pid) for pid in pids)


async def produce(kafka: ApacheKafka, topic: str, values: list[bytes]) -> None:
    """Idempotent, ``acks=all``: what the worker's producer does on Apache Kafka."""
    producer = clients.producer(kafka.bootstrap, enable_idempotence=True)  # and acks=all
    await producer.start()
    try:
        for value in values:
            await producer.send_and_wait(topic, value, key=value)
    finally:
        await producer.stop()


async def read_values(kafka: ApacheKafka, topic: str, count: int) -> list[bytes]:
    consumer = clients.consumer(kafka.bootstrap, topic, auto_offset_reset="earliest")
    await consumer.start()
    got: list[bytes] = []
    try:
        async with asyncio.timeout(60):
            while len(got) < count:
                batch = await consumer.getmany(timeout_ms=1000)
                got += [r.value for records in batch.values() for r in records if r.value]
    finally:
        await consumer.stop()
    return got


async def test_one_node_serves_and_stops_clean() -> None:
    kafka = ApacheKafka()
    await asyncio.to_thread(kafka.start)
    pids, directory = kafka.pids, kafka.directory
    try:
        assert kafka.running and len(pids) == 1 and not gone(pids)
        # The node runs the shipped settings file, plus only its own lines after it.
        config = kafka.nodes[0].config_path.read_text()
        assert config.startswith(SERVER_PROPERTIES.read_text())
        await kafka.create_topics({"smoke": 2})
        values = [f"v{n}".encode() for n in range(30)]
        await produce(kafka, "smoke", values)
        assert sorted(await read_values(kafka, "smoke", 30)) == sorted(values)
        assert "Kafka Server started" in kafka.log_tail(10**6)
    finally:
        await asyncio.to_thread(kafka.stop)
    assert gone(pids)
    assert not directory.exists()
    assert kafka.nodes == [] and not kafka.running


async def test_three_nodes_replicate_and_survive_a_killed_leader() -> None:
    kafka = ApacheKafka(3)
    await asyncio.to_thread(kafka.start)
    pids = kafka.pids
    admin = clients.admin(kafka.bootstrap)
    try:
        assert len(set(pids)) == 3 and not gone(pids)
        await kafka.create_topics({"replicated": 3})
        await admin.start()
        described = await admin.describe_topics(["replicated"])
        partitions = described[0]["partitions"]
        assert [len(p["replicas"]) for p in partitions] == [3, 3, 3]
        configs = await topic_configs(admin, ["replicated"], ["min.insync.replicas"])
        assert configs["replicated"]["min.insync.replicas"] == "2"

        before = [f"a{n}".encode() for n in range(30)]
        await produce(kafka, "replicated", before)
        leader = next(p["leader"] for p in partitions if p["partition"] == 0)
        victim = next(node for node in kafka.nodes if node.node_id == leader)
        victim.kill()  # kill -9: no controlled shutdown
        assert gone([pids[kafka.nodes.index(victim)]])
        after = [f"b{n}".encode() for n in range(30)]
        await produce(kafka, "replicated", after)  # two replicas left: acks=all still holds
        assert sorted(await read_values(kafka, "replicated", 60)) == sorted(before + after)

        await asyncio.to_thread(victim.start, 120)  # same ports, same data directory
        await asyncio.to_thread(kafka.wait_ready)
        cluster = await admin.describe_cluster()
        assert sorted(b["node_id"] for b in cluster["brokers"]) == [1, 2, 3]
    finally:
        await admin.close()
        everything = [*pids, *kafka.pids]
        await asyncio.to_thread(kafka.stop)
    assert gone(everything)


def test_missing_java_is_named(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("JAVA_HOME", str(tmp_path))  # no bin/java there
    kafka = ApacheKafka(jars=broker_jars())
    with pytest.raises(BrokerUnavailable, match="java"):
        kafka.start()
    assert not kafka.running and not kafka.directory.exists()


def test_the_setting_picks_the_broker(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SW_TEST_BROKER", "tansu")
    assert isinstance(chosen_broker(), Broker)
    monkeypatch.delenv("SW_TEST_BROKER")
    assert isinstance(chosen_broker(), ApacheKafka)  # the default
    with pytest.raises(ValueError, match="SW_TEST_BROKER='zookeeper'"):
        chosen_broker("zookeeper")


def test_compose_ships_what_the_tests_run() -> None:
    """docker-compose.yml runs the pinned version with the settings file the tests use."""
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    kafka = compose["services"]["kafka"]
    assert kafka["image"] == f"apache/kafka:{kafka_version()}"
    assert compose["services"]["kafka-init"]["image"] == kafka["image"]
    mounted = f"./{SERVER_PROPERTIES.relative_to(ROOT)}:/mnt/shared/config/server.properties:ro"
    assert mounted in kafka["volumes"]
    # The environment names the node and its listeners; every other setting is the file's.
    settings = {
        line.split("=", 1)[0]
        for line in SERVER_PROPERTIES.read_text().splitlines()
        if line and not line.startswith("#")
    }
    env = {k.removeprefix("KAFKA_").lower().replace("_", ".") for k in kafka["environment"]}
    assert settings & env <= {
        "process.roles",
        "controller.listener.names",
        "inter.broker.listener.name",
        "listener.security.protocol.map",
    }
