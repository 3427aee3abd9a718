"""Kafka SASL and TLS settings reach every client the worker makes, verified and secret.

The local broker (Tansu 0.6.0) cannot take part: its SCRAM users can only be created over an
already authenticated connection, and its TLS flags are mutually exclusive (`--cert` with
`--key` is refused), so the handshake itself is left to a real Kafka (docker-compose.yml)."""

import ssl
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient

from tests.pki import make_pki
from worker.service import kafka_security
from worker.settings import Settings, SettingsError

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
    security = kafka_security(sasl_ssl_settings(tmp_path))
    context = security["ssl_context"]
    assert isinstance(context, ssl.SSLContext)
    assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname
    assert security["sasl_mechanism"] == "SCRAM-SHA-512"
    assert security["sasl_plain_username"] == "segment-worker"
    assert security["sasl_plain_password"] == PASSWORD

    producer = AIOKafkaProducer(bootstrap_servers="localhost:9092", **security)
    consumer = AIOKafkaConsumer(bootstrap_servers="localhost:9092", **security)
    admin = AIOKafkaAdminClient(bootstrap_servers="localhost:9092", **security)
    for client in (producer.client, consumer._client, admin._client):
        assert client._security_protocol == "SASL_SSL"
        assert client._ssl_context is context
        assert client._sasl_mechanism == "SCRAM-SHA-512"
        assert client._sasl_plain_password == PASSWORD
    await producer.stop()
    await consumer.stop()
    await admin.close()


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
