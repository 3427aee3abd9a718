"""Waiting for Redis and Kafka at start: a worker started before its servers (or with a
typo in a host name) backs off and reports not ready instead of crashing, and every attempt
logs one line that says which server it is waiting for."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

from aiokafka.errors import KafkaError
from redis.exceptions import AuthenticationError, AuthorizationError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from worker.settings import Settings, redact_url

log = logging.getLogger("segment_worker")
FIRST_DELAY = 0.2  # seconds; doubled after every failed attempt
MAX_DELAY = 5.0

Step = tuple[str, Callable[[], Awaitable[object]], tuple[type[BaseException], ...]]
# What an unreachable server raises; anything else (a refused ACL, a bad TLS file) is a
# configuration error that waiting will not fix, and is left to stop the start.
REDIS_DOWN: tuple[type[BaseException], ...] = (RedisConnectionError, RedisTimeoutError, OSError)
# Raised as connection errors by redis-py, but a refused password or ACL user is not a
# server that is down: waiting cannot fix it.
REFUSED: tuple[type[BaseException], ...] = (AuthenticationError, AuthorizationError)
KAFKA_DOWN: tuple[type[BaseException], ...] = (KafkaError, OSError)


def start_steps(
    settings: Settings,
    load_library: Callable[[], Awaitable[None]],
    *kafka_steps: Callable[[], Awaitable[object]],
    then: Callable[[], Awaitable[object]] | None = None,
) -> list[Step]:
    """Redis first (its Functions library), then each Kafka step (a client's checked start,
    a question about topics), then ``then``, a Redis step on what Kafka told (the partition
    count against the state's), named for the log; a SettingsError they raise (a refusal
    that settings cause, see start_checked) stops the start."""
    redis = f"Redis at {redact_url(settings.redis_url)}"
    kafka = f"Kafka at {settings.kafka_bootstrap}"
    last = [] if then is None else [(redis, then, REDIS_DOWN)]
    return [
        (redis, load_library, REDIS_DOWN),
        *((kafka, s, KAFKA_DOWN) for s in kafka_steps),
        *last,
    ]


async def wait_for_servers(
    steps: list[Step], stopping: asyncio.Event, not_ready: Callable[[], None]
) -> None:
    """Run each step once it succeeds, in order, retrying with capped exponential backoff;
    return early when ``stopping`` is set."""
    for what, step, down in steps:
        delay, attempt = FIRST_DELAY, 1
        while not stopping.is_set():
            try:
                await step()
                break
            except down as exc:
                if isinstance(exc, REFUSED):
                    raise
                not_ready()
                log.warning(
                    "waiting for %s: unreachable (%s); attempt %d, next in %.1f s",
                    what,
                    str(exc) or type(exc).__name__,
                    attempt,
                    delay,
                )
            with contextlib.suppress(TimeoutError):  # a stop ends the wait at once
                await asyncio.wait_for(stopping.wait(), delay)
            delay, attempt = min(delay * 2, MAX_DELAY), attempt + 1
