"""Kafka SASL and TLS settings reach every client the worker makes, verified and secret;
a refused connection is told apart from an unreachable broker.

The handshakes with a real broker (SCRAM-SHA-512 over TLS, ACLs) are in
tests/integration/test_kafka_sasl.py, on Apache Kafka."""

import ssl
from dataclasses import replace
from pathlib import Path

import pytest

from tests.pki import make_pki
from worker import kafka
from worker.kafka import kafka_security, refusal
from worker.settings import Settings, SettingsError
from worker.tools.servers import free_port

PASSWORD = "kafka-test-password"


def sasl_ssl_settings(tmp_path: Path) -> Settings:
    pki = make_pki(tmp_path)
    return Settings(
        kafka_security_protocol="SASL_SSL",
        kafka_sasl_mechanism="SCRAM-SHA-512",
        kafka_sasl_username="segment-worker",
        kafka_sasl_password=PASSWORD,
        kafka_ssl_cafile=pki.ca,
        kafka_ssl_certfile=pki.client_cert,
        kafka_ssl_keyfile=pki.client_key,
    )


async def test_sasl_ssl_reaches_producer_consumer_and_admin_with_a_verifying_context(
    tmp_path: Path,
) -> None:
    settings = sasl_ssl_settings(tmp_path)
    security = kafka_security(settings)
    context = security["ssl_context"]
    assert isinstance(context, ssl.SSLContext)
    assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname
    assert security["sasl_mechanism"] == "SCRAM-SHA-512"
    assert security["sasl_plain_username"] == "segment-worker"
    assert security["sasl_plain_password"] == PASSWORD

    producer = kafka.producer(settings)
    consumer = kafka.consumer(settings)
    admin = kafka.admin(settings)
    for client in (producer.client, consumer._client, admin._client):
        assert client._bootstrap_servers == settings.kafka_bootstrap
        assert client._security_protocol == "SASL_SSL"
        assert client._sasl_mechanism == "SCRAM-SHA-512"
        assert client._sasl_plain_password == PASSWORD
        assert isinstance(client._ssl_context, ssl.SSLContext)
        assert client._ssl_context.verify_mode == ssl.CERT_REQUIRED
    await producer.stop()
    await consumer.stop()
    await admin.close()


async def test_producers_wait_for_all_replicas_and_are_idempotent_as_set() -> None:
    settings = Settings(kafka_bootstrap="broker-1:9092,broker-2:9092")
    made = {
        "settings": kafka.producer(settings),
        "settings, idempotence off": kafka.producer(replace(settings, kafka_idempotence=False)),
        "a plain bootstrap": kafka.producer("localhost:9092"),
        "overridden": kafka.producer("localhost:9092", acks=1, linger_ms=20),
    }
    shown = {what: (p._sender._acks, p._txn_manager is not None) for what, p in made.items()}
    assert shown == {
        "settings": (-1, True),
        "settings, idempotence off": (-1, False),
        "a plain bootstrap": (-1, False),
        "overridden": (1, False),
    }
    assert made["settings"].client._bootstrap_servers == settings.kafka_bootstrap
    assert made["a plain bootstrap"].client._security_protocol == "PLAINTEXT"
    for producer in made.values():
        await producer.stop()


async def test_a_consumer_subscribes_to_the_topics_given() -> None:
    consumer = kafka.consumer("localhost:9092", "orders", "visits", auto_offset_reset="earliest")
    assert consumer.subscription() == {"orders", "visits"}
    assert consumer._auto_offset_reset == "earliest"
    await consumer.stop()


def test_plaintext_adds_only_the_protocol() -> None:
    assert kafka_security(Settings()) == {"security_protocol": "PLAINTEXT"}


def test_the_password_never_shows(tmp_path: Path) -> None:
    settings = sasl_ssl_settings(tmp_path)
    shown = repr(settings) + str(settings.describe())
    assert PASSWORD not in shown


@pytest.mark.parametrize(
    "name", ["kafka_ssl_cafile", "kafka_ssl_certfile", "redis_tls_cafile", "redis_tls_keyfile"]
)
def test_a_missing_certificate_file_fails_at_start_naming_the_setting(
    tmp_path: Path, name: str
) -> None:
    with pytest.raises(SettingsError, match=name.upper()):
        Settings.from_env(
            {
                "SEGMENT_WORKER_REDIS_URL": "rediss://localhost:6379/0",
                f"SEGMENT_WORKER_{name.upper()}": str(tmp_path / "missing.pem"),
            }
        )


async def test_an_unreachable_broker_is_no_refusal_so_the_start_waits_for_it(
    tmp_path: Path,
) -> None:
    secure = replace(sasl_ssl_settings(tmp_path), kafka_bootstrap=f"127.0.0.1:{free_port()}")
    assert await refusal(secure) is None
    assert await refusal(replace(secure, kafka_security_protocol="PLAINTEXT")) is None
