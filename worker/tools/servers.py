"""What every local server of the tests, demo and benchmarks offers, whichever server it is."""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import os
import signal
import socket
import subprocess
import tempfile
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Coroutine, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import TracebackType
from typing import Any, Self, TypeVar

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
    """A server subprocess in its own process group, on ``host:port``, logging to a file.

    Each server runs in its own process group on a free loopback port; ``stop()`` (or leaving
    the ``with`` block) ends the group, and an ``atexit`` hook kills whatever is still running.
    SIGTERM and SIGHUP skip ``atexit``: where they would end the process (their handler is the
    default), a handler stops the servers first and then lets the signal end the process as
    before. So nothing outlives the interpreter unless it is killed with SIGKILL itself.
    """

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
    """A Kafka-compatible broker as its users see it, whichever it is (Tansu in
    worker/tools/embedded.py, Apache Kafka in worker/tools/apache_kafka.py): where to connect,
    whether idempotent producers work, and topic creation with the broker's own replication."""

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
