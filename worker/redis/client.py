"""The worker's Redis client, built in one place so that every command, the worker's and the
operator's, connects alike: timeouts, TLS, cluster discovery, and no resends by redis-py."""

from __future__ import annotations

from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from worker.settings import Settings

Client = aioredis.Redis | RedisCluster


def text(value: bytes | str) -> str:
    """A reply's text: this client does not decode responses (states are bytes)."""
    return value.decode() if isinstance(value, bytes) else value


def connect(settings: Settings) -> Client:
    """The worker's Redis client: the URL's credentials, TLS (verified against
    SEGMENT_WORKER_REDIS_TLS_CAFILE, with a client certificate if given) for rediss://, and a
    cluster client that discovers the other masters when SEGMENT_WORKER_REDIS_CLUSTER is on.

    redis-py's own retries are off: after a connection error it would send the call again,
    and a call Redis had already run (an outbox trim by count) must not run twice. The worker
    retries at its level, where a failed trim is never re-sent (the outbox is drained)."""
    options: dict[str, Any] = {
        "socket_timeout": 10,
        "socket_connect_timeout": 5,
        "retry": Retry(NoBackoff(), 0),
    }
    if settings.redis_cluster:
        return RedisCluster.from_url(settings.redis_url, **options, **tls_options(settings))
    return aioredis.from_url(settings.redis_url, **options, **tls_options(settings))


def tls_options(settings: Settings) -> dict[str, Any]:
    """redis-py's TLS arguments (empty for plain redis://); shared by every client we make."""
    if not settings.redis_url.startswith("rediss://"):
        return {}
    paths = {
        "ssl_ca_certs": settings.redis_tls_cafile,
        "ssl_certfile": settings.redis_tls_certfile,
        "ssl_keyfile": settings.redis_tls_keyfile,
    }
    return {"ssl_cert_reqs": "required"} | {k: str(v) for k, v in paths.items() if v}
