"""Everything Kafka-specific that is not the hot path: how a customer maps to a partition, the
only place aiokafka clients are built (with the deployment's SASL/TLS) and started (a refusal
the settings cause named as such), and the few questions asked of them. The worker's topics
(creating them, their partition counts agreeing) are in :mod:`worker.kafka_topics`.

The worker keeps one customer's state under the input partition the record arrived on, so
every producer of input topics and every lookup must agree on :func:`partition_of`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from typing import Any, Final

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.conn import collect_hosts, create_conn
from aiokafka.errors import (
    AuthenticationFailedError,
    ClusterAuthorizationFailedError,
    GroupAuthorizationFailedError,
    KafkaConnectionError,
    KafkaError,
    KafkaTimeoutError,
    SaslAuthenticationFailed,
    TopicAuthorizationFailedError,
    UnknownError,
    UnsupportedVersionError,
)
from aiokafka.helpers import create_ssl_context

from worker.core import partitioner
from worker.settings import PREFIX, Settings, SettingsError

partition_of = partitioner.partition_of
"""Kafka's default partitioner; in the core, which refuses a record that came on another one."""

METADATA_TIMEOUT_MS: Final = 15_000  # one-off metadata questions of the CLI
PROBE_TIMEOUT_S: Final = 10.0  # one diagnostic connection
NOT_AUTHORIZED: Final = (
    ClusterAuthorizationFailedError,
    GroupAuthorizationFailedError,
    TopicAuthorizationFailedError,
)
# What InitProducerId raises at a producer's start on a broker without idempotent producers.
NO_PRODUCER_ID: Final = (UnknownError, UnsupportedVersionError)
# Failures of a client's start that our one-line messages explain (start_checked,
# start_producer), whatever aiokafka logged on the way.
EXPLAINED: Final = (KafkaConnectionError, *NOT_AUTHORIZED, *NO_PRODUCER_ID)


Connection = Settings | str
"""Where a client connects: the deployment's settings (bootstrap servers, SASL and TLS), or,
for tools and tests that talk to a local plain broker, its bootstrap string."""


def kafka_security(settings: Settings) -> dict[str, Any]:
    """Client arguments for SASL and TLS, shared by the consumer, producer and admin."""
    out: dict[str, Any] = {"security_protocol": settings.kafka_security_protocol}
    if settings.kafka_security_protocol in ("SSL", "SASL_SSL"):
        out["ssl_context"] = create_ssl_context(
            cafile=str(settings.kafka_ssl_cafile) if settings.kafka_ssl_cafile else None,
            certfile=str(settings.kafka_ssl_certfile) if settings.kafka_ssl_certfile else None,
            keyfile=str(settings.kafka_ssl_keyfile) if settings.kafka_ssl_keyfile else None,
        )
    if settings.kafka_security_protocol.startswith("SASL"):
        out["sasl_mechanism"] = settings.kafka_sasl_mechanism
        out["sasl_plain_username"] = settings.kafka_sasl_username
        out["sasl_plain_password"] = settings.kafka_sasl_password
    return out


def _connection(to: Connection) -> dict[str, Any]:
    if isinstance(to, str):
        return {"bootstrap_servers": to}
    return {"bootstrap_servers": to.kafka_bootstrap, **kafka_security(to)}


def consumer(to: Connection, *topics: str, **overrides: Any) -> AIOKafkaConsumer:
    """A consumer of ``topics`` (none: assign or subscribe later); ``overrides`` are aiokafka
    arguments."""
    return AIOKafkaConsumer(*topics, **_connection(to) | overrides)


def producer(to: Connection, **overrides: Any) -> AIOKafkaProducer:
    """A producer that waits for all in-sync replicas and, with settings, is idempotent unless
    SEGMENT_WORKER_KAFKA_IDEMPOTENCE is off (brokers without InitProducerId); ``overrides``
    are aiokafka arguments."""
    defaults: dict[str, Any] = {"acks": "all"}
    if isinstance(to, Settings):
        defaults["enable_idempotence"] = to.kafka_idempotence
    return AIOKafkaProducer(**_connection(to) | defaults | overrides)


def admin(to: Connection, **overrides: Any) -> AIOKafkaAdminClient:
    """An admin client; ``overrides`` are aiokafka arguments."""
    return AIOKafkaAdminClient(**_connection(to) | overrides)


async def start_checked(settings: Settings, start: Callable[[], Awaitable[None]]) -> None:
    """Start a client; a refusal that is the deployment's doing (TLS trust, SASL credentials,
    plain requests to a TLS listener, a missing ACL) becomes a SettingsError that names it,
    since waiting will not fix it. aiokafka reports them all as "Unable to bootstrap", so a
    failed bootstrap is followed by one diagnostic connection; an unreachable broker stays a
    KafkaError to wait out. aiokafka's log records of a start that fails are the caller's
    message to say (see :func:`_held_logs`)."""
    try:
        with _held_logs() as said:
            await start()
    except KafkaConnectionError as exc:
        problem = await refusal(settings)
        if problem is not None:
            raise SettingsError(problem) from None
        if said:  # what each bootstrap server said (refused, no such host), not only "Unable"
            raise KafkaConnectionError("; ".join(said)) from exc
        raise
    except NOT_AUTHORIZED as exc:
        raise SettingsError(
            f"Kafka at {settings.kafka_bootstrap} refused {_principal(settings)}: {exc}; "
            "grant the ACLs docs/security.md lists"
        ) from None


class _Held(logging.Handler):
    """Keeps the records it is given."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@contextlib.contextmanager
def _held_logs() -> Iterator[list[str]]:
    """Hold aiokafka's warnings and errors for the block when nothing is configured to handle
    them (a CLI command; `run`, and `demo` once its topics exist, log them as they come):
    Python's last-resort handler would print them raw before the one line that explains a
    failed start. A failure that line explains (EXPLAINED) drops them, giving their messages
    to the block to say; otherwise they are passed on when the block ends."""
    library = logging.getLogger("aiokafka")
    said: list[str] = []
    if library.hasHandlers():
        yield said
        return
    held = _Held()
    library.addHandler(held)
    try:
        yield said
    except EXPLAINED:
        said.extend(record.getMessage() for record in held.records)
        held.records.clear()
        raise
    finally:
        library.removeHandler(held)
        for record in held.records:
            logging.getLogger(record.name).handle(record)


async def start_producer(settings: Settings, client: AIOKafkaProducer) -> None:
    """Start a producer built by :func:`producer` with ``settings``, checked as
    :func:`start_checked` does; a broker that refuses an idempotent producer outright is a
    SettingsError naming SEGMENT_WORKER_KAFKA_IDEMPOTENCE, since aiokafka's error (UnknownError)
    does not say what to change and retrying cannot fix it."""
    try:
        await start_checked(settings, client.start)
    except NO_PRODUCER_ID as exc:
        if not settings.kafka_idempotence:
            raise
        raise SettingsError(
            f"{PREFIX}KAFKA_IDEMPOTENCE: the broker at {settings.kafka_bootstrap} refused an "
            f"idempotent producer (InitProducerId: {type(exc).__name__}); for a broker "
            f"without idempotent producers (Tansu), set {PREFIX}KAFKA_IDEMPOTENCE=false"
        ) from None


@contextlib.asynccontextmanager
async def started_producer(settings: Settings, **overrides: Any) -> AsyncIterator[AIOKafkaProducer]:
    """A producer of ``settings`` started by :func:`start_producer`, for the block; stopped on
    leaving, also when its start failed (aiokafka warns of an unclosed producer otherwise)."""
    client = producer(settings, **overrides)
    try:
        await start_producer(settings, client)
        yield client
    finally:
        await client.stop()


async def refusal(settings: Settings) -> str | None:
    """Why the brokers refuse this client's connection, when it is a matter of settings; None
    when they are merely unreachable."""
    security = kafka_security(settings)
    protocol = settings.kafka_security_protocol
    for host, port, _ in collect_hosts(settings.kafka_bootstrap, randomize=False):
        where = f"the broker at {host}:{port}"
        try:
            async with asyncio.timeout(PROBE_TIMEOUT_S):
                conn = await create_conn(host, port, **security)
        except ssl.SSLCertVerificationError as exc:
            return (
                f"{PREFIX}KAFKA_SSL_CAFILE: {where} presented a certificate this CA file does "
                f"not trust ({exc.verify_message}; CA file: {settings.kafka_ssl_cafile})"
            )
        except (AuthenticationFailedError, SaslAuthenticationFailed) as exc:
            return (
                f"{PREFIX}KAFKA_SASL_USERNAME/{PREFIX}KAFKA_SASL_PASSWORD: {where} refused "
                f"{_principal(settings)} ({exc})"
            )
        except (OSError, KafkaError, TimeoutError):
            if "SSL" not in protocol and await _speaks_tls(host, port):
                return (
                    f"{PREFIX}KAFKA_SECURITY_PROTOCOL={protocol}: {where} expects TLS "
                    "(set SSL or SASL_SSL, with the SASL and TLS settings its listener needs)"
                )
            continue
        conn.close()
    return None


def _principal(settings: Settings) -> str:
    if settings.kafka_security_protocol.startswith("SASL"):
        return f"{settings.kafka_sasl_mechanism} user {settings.kafka_sasl_username!r}"
    return "this client"


async def _speaks_tls(host: str, port: int) -> bool:
    """Whether a TLS handshake (trusting anything: only the protocol is in question) succeeds."""
    anything = ssl.create_default_context()
    anything.check_hostname, anything.verify_mode = False, ssl.CERT_NONE
    try:
        async with asyncio.timeout(PROBE_TIMEOUT_S):
            _, writer = await asyncio.open_connection(host, port, ssl=anything)
    except (OSError, TimeoutError):
        return False
    writer.close()
    return True


async def send_erasures(
    settings: Settings,
    customer_ids: Sequence[str],
    *,
    before: Callable[[AIOKafkaProducer], Awaitable[None]] | None = None,
) -> None:
    """Erasure requests, keyed by customer id so they reach the partition owning the customer;
    ``before`` runs on the started producer first (a check that may refuse to send any)."""
    async with started_producer(settings) as client:
        if before is not None:
            await before(client)
        for customer_id in customer_ids:
            value = orjson.dumps({"customer_id": customer_id})
            await client.send_and_wait(settings.topic_erasures, value, key=customer_id.encode())


async def end_offsets(
    consumer: AIOKafkaConsumer, tps: Sequence[TopicPartition], timeout_s: float
) -> dict[TopicPartition, int]:
    """The end offsets of ``tps``, exact: the high watermark a fetch of each partition's last
    record returns. ListOffsets alone may under-report (Tansu answers the base offset of the
    last record batch + 1). Assigns ``tps`` to the group-less ``consumer``."""
    listed = await consumer.end_offsets(list(tps))
    consumer.assign(list(tps))
    for tp in tps:
        consumer.seek(tp, max(0, listed[tp] - 1))
    deadline = time.monotonic() + timeout_s
    while True:
        await consumer.getmany(*tps, timeout_ms=200)
        marks = {tp: consumer.highwater(tp) for tp in tps}
        if all(mark is not None for mark in marks.values()):
            return {tp: max(listed[tp], marks[tp] or 0) for tp in tps}
        if time.monotonic() > deadline:
            raise KafkaTimeoutError(
                f"asking the end offsets of {sorted({t.topic for t in tps})} took too long"
            )


async def input_partitions(settings: Settings) -> int:
    """The orders topic's partition count, which places a customer; KafkaError if Kafka
    cannot tell."""
    return await partition_count(settings, settings.topic_orders)


async def partition_count(settings: Settings, topic: str) -> int:
    """How many partitions ``topic`` has, waiting for its metadata (a topic created a moment
    ago may have no leaders yet); KafkaError if Kafka cannot tell."""
    # A metadata question: nothing is sent, so no producer id is needed.
    client = producer(settings, request_timeout_ms=METADATA_TIMEOUT_MS, enable_idempotence=False)
    try:
        await client.start()
        return len(await client.partitions_for(topic))
    finally:
        await client.stop()
