"""Real servers for integration tests: a broker per session (Apache Kafka, or Tansu with
``SW_TEST_BROKER=tansu``; see docs/apache-kafka.md), Redis servers per test, and the settings
of a worker on both."""

import contextlib
import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple, Self

import pytest
import redis.asyncio as aioredis

from tests.integration.live_support import make_settings
from worker.settings import Settings
from worker.store import Store
from worker.tools.apache_kafka import ApacheKafka, chosen_broker
from worker.tools.embedded import Broker, RedisServer


@pytest.fixture(scope="session")
def broker() -> Iterator[ApacheKafka | Broker]:
    """The broker ``SW_TEST_BROKER`` names (default: Apache Kafka, fetched on first use)."""
    with chosen_broker() as started:
        yield started


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    """A failed test that used the broker shows the end of the broker's log."""
    report: pytest.TestReport = yield
    started = getattr(item, "funcargs", {}).get("broker")
    if report.failed and started is not None:
        report.sections.append(("broker log", started.log_tail()))
    return report


@pytest.fixture
def redis_factory() -> Iterator[Callable[..., RedisServer]]:
    """Start Redis servers (AOF, ACLs, ... via keyword arguments); all stopped at the end."""
    started: list[RedisServer] = []

    def start(**options: object) -> RedisServer:
        server = RedisServer(**options).start()  # type: ignore[arg-type]
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


@pytest.fixture
def redis_server(redis_factory: Callable[..., RedisServer]) -> RedisServer:
    return redis_factory()


@pytest.fixture
async def settings(broker: ApacheKafka | Broker, redis_server: RedisServer) -> Settings:
    """A worker's settings on the session broker and this test's Redis, with topics and a
    consumer group of its own (live_support.make_settings)."""
    return await make_settings(broker, redis_server.url)


@pytest.fixture
def topics(broker: ApacheKafka | Broker) -> Callable[..., dict[str, str]]:
    """Create uniquely named topics: ``topics(orders=4, visits=4)`` -> ``{"orders": "orders-1a2b3c4d", ...}``.

    The broker lives for the whole session, so every test gets fresh names.
    """

    def create(**partitions: int) -> dict[str, str]:
        suffix = uuid.uuid4().hex[:8]
        names = {base: f"{base}-{suffix}" for base in partitions}
        broker.create_topics_blocking({names[base]: n for base, n in partitions.items()})
        return names

    return create


# A bare redis-server process per test (used by test_store.py): started from the command line,
# with nothing of the worker in between.


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class RedisProcess:
    """One ``redis-server`` on its own port and directory, both kept across :meth:`restart`."""

    directory: Path
    options: tuple[str, ...] = ()
    port: int = field(default_factory=_free_port)
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def command(self) -> list[str]:
        return [
            "redis-server",
            *("--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.directory)),
            *("--save", "", "--appendonly", "no", "--daemonize", "no"),
            *self.options,  # later arguments win: ("--appendonly", "yes", ...)
        ]

    def start(self, timeout: float = 20.0) -> Self:
        with (self.directory / "redis.log").open("ab") as log:
            self.process = subprocess.Popen(
                self.command(), stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                break
            if self._pong():
                return self
            time.sleep(0.02)
        self.kill()
        log_tail = (self.directory / "redis.log").read_text(errors="replace")[-2000:]
        raise RuntimeError(f"redis-server on port {self.port} did not come up:\n{log_tail}")

    def _pong(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(64).startswith(b"+PONG")  # not -LOADING: AOF still replaying
        except OSError:
            return False

    def kill(self) -> None:
        """SIGKILL: no shutdown save, no AOF flush beyond what fsync already did."""
        if self.process is not None:
            with contextlib.suppress(ProcessLookupError):
                self.process.kill()
            self.process.wait()
            self.process = None

    def restart(self) -> Self:
        """kill -9, then start again on the same port and directory (the AOF replays, if on)."""
        self.kill()
        return self.start()

    def copy_aof(self) -> None:
        """Keep a copy of the AOF as it is now, for :meth:`roll_back`."""
        shutil.copytree(self.directory / "appendonlydir", self.directory / "aof-copy")

    def roll_back(self) -> Self:
        """kill -9, then start from the AOF copy: Redis loses what was written since the copy."""
        self.kill()
        shutil.rmtree(self.directory / "appendonlydir")
        shutil.copytree(self.directory / "aof-copy", self.directory / "appendonlydir")
        return self.start()


@pytest.fixture
def redis_proc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[..., RedisProcess]]:
    """Start bare redis-servers: ``redis_proc()`` (no persistence) or
    ``redis_proc("--appendonly", "yes", "--appendfsync", "always")``; all killed at the end."""
    started: list[RedisProcess] = []

    def start(*options: str) -> RedisProcess:
        for attempt in range(3):  # the free port may be taken before redis-server binds it
            server = RedisProcess(tmp_path_factory.mktemp("redis"), tuple(options))
            started.append(server)
            try:
                return server.start()
            except RuntimeError:
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    yield start
    for server in started:
        server.kill()


class AofStore(NamedTuple):
    """A Store on a redis-server that fsyncs every write to its AOF: a kill -9 loses nothing
    it acknowledged, so a test can tell what a restart or a rollback loses."""

    server: RedisProcess
    client: aioredis.Redis
    store: Store


@pytest.fixture
async def aof_store(redis_proc: Callable[..., RedisProcess]) -> AsyncIterator[AofStore]:
    """``server, client, store = aof_store``: the library loaded; the client closed at the end."""
    server = redis_proc("--appendonly", "yes", "--appendfsync", "always")
    client = aioredis.from_url(server.url)
    try:
        store = Store(client)
        await store.library.load()
        yield AofStore(server, client, store)
    finally:
        await client.aclose()


@pytest.fixture
def redis_url(redis_proc: Callable[..., RedisProcess]) -> str:
    """URL of a fresh, non-persistent redis-server, killed when the test ends."""
    return redis_proc().url
