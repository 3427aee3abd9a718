"""Staying up through transient faults: capped exponential backoff, the health flag behind
/readyz, timed Redis calls, counted Kafka failures, and the crash points the kill tests use."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Awaitable, Callable
from typing import Final, TypeVar

from aiokafka.errors import KafkaError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from worker.metrics import Metrics
from worker.redis.claims import Fenced

log = logging.getLogger("segment_worker")
T = TypeVar("T")
TRANSIENT = (RedisConnectionError, RedisTimeoutError, ConnectionError, OSError, KafkaError)

# The ``op`` of segment_worker_kafka_errors_total: produce (the relay's sends and acks: changes,
# classes, dead letters), fetch (the loop's getmany; the change topic's read-back when a
# partition is taken), commit (input offsets to the group), metadata (partition counts), and
# other (a Kafka error in a retried step none of these counted: a call left unlabelled).
KAFKA_OPS: Final = ("produce", "fetch", "commit", "metadata", "other")
# Retried steps whose Kafka calls are counted by the retry, not where they are made.
RETRIED_KAFKA_OPS: Final = {"read back": "fetch", "partitions": "metadata"}
_COUNTED: Final = "_segment_worker_counted"  # set on a Kafka error once it is counted


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

    async def kafka(self, op: str, call: Awaitable[T]) -> T:
        """Await a Kafka call, counting its failure under ``op`` (one of KAFKA_OPS)."""
        try:
            return await call
        except Exception as exc:
            self.kafka_failed(op, exc)
            raise

    def kafka_failed(self, op: str, exc: BaseException) -> None:
        """Count a failed Kafka call under ``op``, once: the error (or one raised from it)
        passes further handlers, such as :meth:`retry`, which count only what is not counted."""
        if _counted(exc):
            return
        self.metrics.kafka_errors.labels(op).inc()
        with contextlib.suppress(AttributeError):  # one that takes no attributes: counted still
            setattr(exc, _COUNTED, True)

    async def retry(self, what: str, attempt: Callable[[], Awaitable[T]]) -> T:
        """Retry transient failures with capped exponential backoff, reporting not-ready."""
        delay = 0.1
        while True:
            try:
                result = await attempt()
            except TRANSIENT as exc:
                if isinstance(exc, RedisError | OSError):
                    self.suspect = True
                if isinstance(exc, KafkaError):  # unless counted where the call was made
                    self.kafka_failed(RETRIED_KAFKA_OPS.get(what, "other"), exc)
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


def _counted(exc: BaseException | None) -> bool:
    """Whether ``exc``, or an error it was raised from, was counted as a failed Kafka call."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        if getattr(exc, _COUNTED, False):
            return True
        seen.add(id(exc))
        exc = exc.__cause__
    return False
