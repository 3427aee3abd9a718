"""Staying up through transient faults: capped exponential backoff, the health flag behind
/readyz, timed Redis calls, and the crash points the kill tests use."""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

from aiokafka.errors import KafkaError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from worker.metrics import Metrics
from worker.redis.claims import Fenced

log = logging.getLogger("segment_worker")
T = TypeVar("T")
TRANSIENT = (RedisConnectionError, RedisTimeoutError, ConnectionError, OSError, KafkaError)


def crash_point(name: str) -> None:
    """Fault injection for the kill tests: ``SW_TEST_CRASH=<point>:<n>`` exits
    the process abruptly the n-th time it passes ``point``. Unset in production."""
    spec = os.environ.get("SW_TEST_CRASH")
    if not spec or not spec.startswith(name + ":"):
        return
    remaining = int(spec.rsplit(":", 1)[1]) - 1
    os.environ["SW_TEST_CRASH"] = f"{name}:{remaining}"
    if remaining <= 0:
        os._exit(137)


class Health:
    """Whether Kafka and Redis answer (the readiness gauge), and whether a Redis call failed
    since the server was last checked (``suspect``: it may have restarted)."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics
        self.healthy = False
        self.suspect = False

    async def timed(self, op: str, call: Awaitable[T]) -> T:
        """Await a Redis call, counting its time and its errors (a fence is no error)."""
        started = time.perf_counter()
        try:
            return await call
        except Fenced:
            raise
        except Exception:
            self.metrics.redis_errors.labels(op).inc()
            raise
        finally:
            self.metrics.redis_seconds.labels(op).observe(time.perf_counter() - started)

    async def retry(self, what: str, attempt: Callable[[], Awaitable[T]]) -> T:
        """Retry transient failures with capped exponential backoff, reporting not-ready."""
        delay = 0.1
        while True:
            try:
                result = await attempt()
            except TRANSIENT as exc:
                if isinstance(exc, RedisError | OSError):
                    self.suspect = True
                await self.trouble("redis/kafka", what, exc, delay)
                delay = min(delay * 2, 5.0)
                continue
            if not self.healthy:
                self.healthy = True
                self.metrics.ready.set(1)
                log.info("%s: connected", what)
            return result

    async def trouble(self, system: str, what: str, exc: BaseException, delay: float = 1) -> None:
        """Report not-ready (logging the first failure of a run) and back off."""
        if self.healthy:
            log.warning("%s failed (%s: %s); retrying", what, system, exc)
        self.healthy = False
        self.metrics.ready.set(0)
        await asyncio.sleep(delay)
