"""Apache Kafka for the integration tests, the chaos run and ``bench live``: the pinned broker
of ``deploy/kafka/pom.xml``, started from its jars in KRaft mode with the settings of
``deploy/kafka/server.properties`` (the file docker-compose.yml ships too).

* :func:`~worker.tools.kafka_jars.broker_jars` resolves the jars once with Maven into a cache
  folder (``$SW_KAFKA_CACHE``, else ``~/.cache/segment-worker``); later runs reuse it.
* :class:`ApacheKafka` starts one node, or a cluster of combined broker+controller nodes
  (three: replication factor 3, ``min.insync.replicas=2``), each a JVM with a bounded heap on
  free loopback ports, in a private directory holding its data and its ``server.log``. It is
  ready only once a record has really been produced (idempotent, ``acks=all``) and consumed
  back through a consumer group. ``stop()`` ends every node (SIGTERM, then SIGKILL). A node
  is a :class:`~worker.tools.kafka_node.KafkaNode`.
* ``ApacheKafka(security=KafkaSecurity(...))`` adds a SASL_SSL listener (SCRAM-SHA-512 users,
  TLS with the caller's certificate) with ACLs enforced (worker/tools/kafka_security.py).
* :func:`chosen_broker` reads ``SW_TEST_BROKER`` (``kafka``, the default, or ``tansu``): the one
  setting that picks the broker of the tests, the chaos run and ``bench live``.

``python -m worker.tools.apache_kafka [--nodes 3]`` runs one by hand until Ctrl-C.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import os
import shutil
import signal
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Final, Self

from aiokafka.errors import KafkaError

from worker import kafka
from worker.tools.embedded import Broker
from worker.tools.kafka_jars import BrokerUnavailable, broker_jars
from worker.tools.kafka_node import KafkaNode
from worker.tools.kafka_security import KafkaSecurity
from worker.tools.servers import KafkaServer, run_blocking

HEAP: Final = "512m"
READINESS_TOPIC: Final = "segment-worker-readiness"
BROKERS: Final = ("kafka", "tansu")


def cluster_replication(nodes: int) -> dict[str, str]:
    """What a cluster of ``nodes`` overrides in server.properties: replication factor 3 (or
    fewer nodes), and acks=all must reach 2 replicas once there are that many."""
    factor, min_isr = str(min(3, nodes)), str(min(2, nodes))
    return {
        "default.replication.factor": factor,
        "min.insync.replicas": min_isr,
        "offsets.topic.replication.factor": factor,
        "transaction.state.log.replication.factor": factor,
        "transaction.state.log.min.isr": min_isr,
        "share.coordinator.state.topic.replication.factor": factor,
        "share.coordinator.state.topic.min.isr": min_isr,
    }


# -- the cluster --------------------------------------------------------------------------------


def _cluster_id() -> str:
    """A random KRaft cluster id: 16 random bytes, URL-safe base64 without padding (Kafka's
    ``Uuid`` form; one starting with '-' would read as an option, as Kafka avoids too)."""
    while True:
        text = base64.urlsafe_b64encode(uuid.uuid4().bytes).rstrip(b"=").decode()
        if not text.startswith("-"):
            return text


class ApacheKafka(KafkaServer):
    """``nodes`` combined broker+controller nodes (1 or 3); see the module docstring.

    A :class:`~worker.tools.servers.KafkaServer` like Tansu's ``Broker``: ``with ApacheKafka()
    as kafka:``, ``kafka.bootstrap``, ``create_topics``; plus ``pause``/``resume``, and
    :attr:`nodes` (each with its ``pid``, ``kill()``, ``start()``, ``pause()``) for faults on a
    single node.
    """

    idempotent = True  # InitProducerId works: clients keep idempotence on (the default)

    def __init__(
        self,
        nodes: int = 1,
        *,
        heap: str = HEAP,
        directory: Path | None = None,
        jars: Path | None = None,
        security: KafkaSecurity | None = None,
    ) -> None:
        if nodes < 1:
            raise ValueError("nodes must be >= 1")
        self._owns_directory = directory is None
        self.directory = directory or Path(tempfile.gettempdir()) / f"sw-kafka-{uuid.uuid4().hex}"
        self._jars = jars
        self._heap = heap
        self.size = nodes
        self.replication = min(3, nodes)
        self.security = security
        self.nodes: list[KafkaNode] = []

    @property
    def bootstrap(self) -> str:
        """Every node's ``host:port``, comma-separated, for ``bootstrap_servers``."""
        return ",".join(node.address for node in self.nodes)

    @property
    def secure_bootstrap(self) -> str:
        """Every node's SASL_SSL ``host:port`` (with ``security``), comma-separated."""
        return ",".join(n.secure_address for n in self.nodes if n.secure_address)

    @property
    def pids(self) -> list[int | None]:
        return [node.pid for node in self.nodes]

    @property
    def running(self) -> bool:
        return bool(self.nodes) and all(node.running for node in self.nodes)

    def start(self, timeout: float = 180.0) -> Self:
        """Fetch the jars if needed, format every node's storage, start the nodes together
        (a quorum needs a majority up), and wait until a record makes the round trip."""
        if self.nodes:
            return self
        jars = self._jars or broker_jars()
        self.directory.mkdir(parents=True, exist_ok=True)
        self.nodes = [
            KafkaNode(
                n, self.directory / f"node-{n}", jars, heap=self._heap, security=self.security
            )
            for n in range(1, self.size + 1)
        ]
        voters = ",".join(f"{n.node_id}@{n.host}:{n.controller_port}" for n in self.nodes)
        overrides = cluster_replication(self.size) if self.size > 1 else {}
        cluster_id = _cluster_id()
        deadline = time.monotonic() + timeout
        try:
            with ThreadPoolExecutor(self.size, thread_name_prefix="kafka-node") as pool:
                for node in self.nodes:
                    node.write_config(voters, overrides)
                list(pool.map(lambda node: node.format_storage(cluster_id), self.nodes))
                list(pool.map(lambda node: node.start(timeout), self.nodes))
            self.wait_ready(max(10.0, deadline - time.monotonic()))
        except BaseException:
            self.stop()
            raise
        return self

    def wait_ready(self, timeout: float = 60.0) -> None:
        """Block until an idempotent ``acks=all`` record is produced and read back by a
        consumer group (the group coordinator and its offsets topic up too); raise
        :class:`BrokerUnavailable` with the nodes' logs if that does not happen in time."""
        deadline = time.monotonic() + timeout
        last: Exception | None = None
        while time.monotonic() < deadline:
            for node in self.nodes:
                if not node.running:
                    raise BrokerUnavailable(f"node {node.node_id} exited:\n{node.log_tail()}")
            try:
                run_blocking(lambda: asyncio.wait_for(self._round_trip(), 30))
                return
            except (KafkaError, OSError, TimeoutError) as exc:
                last = exc
                time.sleep(0.5)
        raise BrokerUnavailable(f"Apache Kafka not ready ({last!r}):\n{self.log_tail()}")

    async def _round_trip(self) -> None:
        await self.create_topics({READINESS_TOPIC: 1})
        token = uuid.uuid4().bytes
        producer = kafka.producer(self.bootstrap, enable_idempotence=True)  # and acks=all
        await producer.start()
        try:
            await producer.send_and_wait(READINESS_TOPIC, token)
        finally:
            await producer.stop()
        consumer = kafka.consumer(
            self.bootstrap,
            READINESS_TOPIC,
            group_id=READINESS_TOPIC,
            auto_offset_reset="earliest",
            enable_auto_commit=False,
        )
        await consumer.start()
        try:
            while True:  # bounded by the caller's wait_for
                batch = await consumer.getmany(timeout_ms=1000)
                if any(r.value == token for records in batch.values() for r in records):
                    await consumer.commit()
                    return
        finally:
            await consumer.stop()

    def pause(self) -> None:
        """SIGSTOP every node: the whole cluster hangs with its sockets open."""
        for node in self.nodes:
            node.pause()

    def resume(self) -> None:
        for node in self.nodes:
            node.resume()

    def log_tail(self, chars: int = 4000) -> str:
        """The end of every node's log, node by node."""
        return "\n".join(f"--- node {n.node_id} ---\n{n.log_tail(chars)}" for n in self.nodes)

    def stop(self, grace: float = 10.0) -> None:
        """SIGTERM every node at once (a controlled shutdown), SIGKILL what is left after
        ``grace`` seconds; delete the directory if this object made it."""
        if self.nodes:
            with ThreadPoolExecutor(len(self.nodes), thread_name_prefix="kafka-stop") as pool:
                list(pool.map(lambda node: node.stop(grace), self.nodes))
        self.nodes = []
        if self._owns_directory:
            shutil.rmtree(self.directory, ignore_errors=True)

    def __repr__(self) -> str:
        return f"<ApacheKafka {self.bootstrap or 'stopped'} pids={self.pids}>"


# -- which broker -------------------------------------------------------------------------------


def chosen_broker(kind: str | None = None, *, nodes: int = 1) -> ApacheKafka | Broker:
    """A not yet started broker of ``kind``, else ``$SW_TEST_BROKER``, else Apache Kafka
    (with ``nodes`` nodes; Tansu is always one)."""
    kind = (kind or os.environ.get("SW_TEST_BROKER") or "kafka").strip().lower()
    if kind == "kafka":
        return ApacheKafka(nodes)
    if kind == "tansu":
        return Broker()
    raise ValueError(f"SW_TEST_BROKER={kind!r}: expected one of {', '.join(BROKERS)}")


def main() -> None:
    parser = argparse.ArgumentParser(
        prog="python -m worker.tools.apache_kafka",
        description="Run the pinned Apache Kafka (deploy/kafka) on free ports until Ctrl-C.",
    )
    parser.add_argument("--nodes", type=int, default=1, help="combined nodes (1 or 3)")
    parser.add_argument("--fetch", action="store_true", help="only fetch the jars, print where")
    args = parser.parse_args()
    if args.fetch:
        print(broker_jars())
        return
    with ApacheKafka(args.nodes) as kafka:
        print(f"bootstrap {kafka.bootstrap}  pids {kafka.pids}  dir {kafka.directory}", flush=True)
        signal.signal(signal.SIGTERM, lambda *_: signal.raise_signal(signal.SIGINT))
        with contextlib.suppress(KeyboardInterrupt):
            signal.pause()


if __name__ == "__main__":
    main()
