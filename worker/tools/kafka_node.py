"""One combined broker+controller node of Apache Kafka: its configuration, storage and JVM."""

from __future__ import annotations

import contextlib
import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import Final

from worker.tools.kafka_jars import KAFKA_DIR, BrokerUnavailable, java_binary
from worker.tools.kafka_security import KafkaSecurity
from worker.tools.servers import HOST, ServerProcess, free_port

SERVER_PROPERTIES: Final = KAFKA_DIR / "server.properties"
LOG4J: Final = KAFKA_DIR / "log4j2.properties"


class KafkaNode(ServerProcess):
    """One combined broker+controller JVM. Ready (for :meth:`start`) when its client port
    accepts connections, which in KRaft happens once it has joined the controller quorum;
    :class:`~worker.tools.apache_kafka.ApacheKafka` checks the cluster as a whole."""

    def __init__(
        self,
        node_id: int,
        directory: Path,
        jars: Path,
        *,
        heap: str,
        host: str = HOST,
        security: KafkaSecurity | None = None,
    ) -> None:
        super().__init__(host=host)
        self.node_id = node_id
        self.controller_port = free_port(host)
        self.directory = directory
        self.jars = jars
        self.heap = heap
        self.security = security
        self.secure_port = free_port(host) if security else None

    @property
    def secure_address(self) -> str | None:
        """``host:port`` of the SASL_SSL listener, if the node has one."""
        return f"{self.host}:{self.secure_port}" if self.secure_port else None

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def config_path(self) -> Path:
        return self.directory / "server.properties"

    @property
    def server_log(self) -> Path:
        return self.directory / "logs" / "server.log"

    def write_config(self, voters: str, overrides: Mapping[str, str]) -> None:
        """server.properties as shipped, then this node's lines (later lines win)."""
        advertised = f"PLAINTEXT://{self.address}"
        secure: dict[str, str] = {}
        self.directory.mkdir(parents=True, exist_ok=True)
        if self.security is not None:
            advertised += f",SASL_SSL://{self.secure_address}"
            keystore = self.directory / "keystore.pem"  # Kafka's PEM keystore: key, then chain
            keystore.write_text(
                self.security.keyfile.read_text() + self.security.certfile.read_text()
            )
            secure = self.security.overrides(keystore)
        own = {
            "node.id": str(self.node_id),
            "controller.quorum.voters": voters,
            "listeners": f"{advertised},CONTROLLER://{self.host}:{self.controller_port}",
            "advertised.listeners": advertised,
            "log.dirs": str(self.directory / "data"),
            **secure,
            **overrides,
        }
        lines = [f"{key}={value}" for key, value in own.items()]
        self.config_path.write_text(
            SERVER_PROPERTIES.read_text()
            + "\n# -- this node (worker/tools/kafka_node.py) --\n"
            + "\n".join(lines)
            + "\n"
        )

    def java(self, main: str, *args: str) -> list[str]:
        """argv of a JVM running ``main`` of the broker's jars, heap bounded, logging to file."""
        return [
            java_binary(),
            f"-Xmx{self.heap}",
            "-Xms64m",
            "-XX:+UseG1GC",
            "-XX:MaxGCPauseMillis=20",
            "-XX:+ExitOnOutOfMemoryError",
            "-Djava.awt.headless=true",
            f"-Dlog4j2.configurationFile={LOG4J}",
            f"-Dkafka.logs.dir={self.directory / 'logs'}",
            "-cp",
            str(self.jars / "*"),
            main,
            *args,
        ]

    def format_storage(self, cluster_id: str) -> None:
        """``kafka-storage format``: the data directory with its cluster id and node id."""
        scram = self.security.scram_arguments() if self.security else []
        argv = self.java(
            "kafka.tools.StorageTool",
            "format",
            "-t",
            cluster_id,
            "-c",
            str(self.config_path),
            *scram,
        )
        result = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=180)
        if result.returncode != 0:
            raise BrokerUnavailable(
                f"node {self.node_id}: storage format failed:\n{result.stdout}{result.stderr}"
            )

    def command(self) -> list[str]:
        return self.java("kafka.Kafka", str(self.config_path))

    def environment(self) -> dict[str, str]:
        env = super().environment()
        for name in ("KAFKA_HEAP_OPTS", "KAFKA_OPTS", "JAVA_TOOL_OPTIONS", "CLASSPATH"):
            env.pop(name, None)  # the argv says everything
        return env

    def log_tail(self, chars: int = 4000) -> str:
        """The JVM's own output, then the end of the node's server.log."""
        out = super().log_tail(chars)
        with contextlib.suppress(OSError):
            out += self.server_log.read_text(errors="replace")[-chars:]
        return out
