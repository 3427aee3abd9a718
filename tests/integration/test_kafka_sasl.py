"""The worker on Apache Kafka's SASL_SSL listener (SCRAM-SHA-512, TLS with a CA generated per
run, ACLs enforced by the StandardAuthorizer) as the least-privilege principal that
docs/security.md documents: it works; a wrong password, an untrusted CA and plaintext stop the
start with a message naming the setting, and so does a principal without ACLs; a missing WRITE on the dead-letter topic holds the
partition (named in the log, counted in segment_worker_kafka_errors_total, nothing
committed past it) until the ACL is back, then nothing is lost."""

import asyncio
import os
import subprocess
from collections.abc import Iterator
from dataclasses import replace

import pytest
from aiokafka import TopicPartition

from tests.integration.kafka_acls import Acl, grant
from tests.integration.live_support import (
    NOW,
    PARTITIONS,
    Produced,
    all_committed,
    assert_matches_replay,
    assert_state_matches,
    change_ids,
    committed,
    documents,
    kafka_errors,
    make_settings,
    one_day_of_traffic,
    produce,
    read_all,
    replay,
    start_worker,
    wait_until,
    worker_log,
    worker_process,
)
from tests.pki import Pki, make_pki
from worker import kafka
from worker.core.timeutil import DAY_MS
from worker.kafka import partition_of
from worker.settings import Settings
from worker.tools.apache_kafka import ApacheKafka
from worker.tools.kafka_security import KafkaSecurity

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

USER, PASSWORD = "segment-worker", "scram-secret-1"
STRANGER = "no-acls"  # a user the broker knows, without a single ACL


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def secure_kafka(pki: Pki) -> Iterator[ApacheKafka]:
    """Apache Kafka with a SASL_SSL listener and ACLs; its own, beside the session broker."""
    if (os.environ.get("SW_TEST_BROKER") or "kafka").strip().lower() == "tansu":
        pytest.skip("SASL_SSL and ACLs are tested on Apache Kafka (Tansu has neither)")
    security = KafkaSecurity(pki.server_cert, pki.server_key, {USER: PASSWORD, STRANGER: PASSWORD})
    with ApacheKafka(security=security) as started:
        yield started


def least_privilege(settings: Settings) -> list[Acl]:
    """The worker principal's ACLs, exactly docs/security.md's table (topics pre-created;
    READ and WRITE imply DESCRIBE; WRITE on a topic lets the idempotent producer get its
    producer id, so no IDEMPOTENT_WRITE on the cluster)."""
    principal = f"User:{USER}"
    read = (
        settings.topic_orders,
        settings.topic_visits,
        settings.topic_profiles,
        settings.topic_erasures,
    )
    return [
        *(Acl(principal, "topic", name, "READ") for name in read),
        Acl(principal, "topic", settings.topic_changes, "READ"),  # read back on a take
        Acl(principal, "topic", settings.topic_changes, "WRITE"),
        Acl(principal, "topic", settings.topic_dlq, "WRITE"),
        Acl(principal, "topic", settings.topic_classes, "WRITE"),
        Acl(principal, "group", settings.group_id, "READ"),
    ]


async def both_settings(broker: ApacheKafka, redis_url: str, pki: Pki) -> tuple[Settings, Settings]:
    """(the harness's plain super-user settings, the worker's SASL_SSL settings), topics made."""
    plain = await make_settings(broker, redis_url)
    secure = replace(
        plain,
        kafka_bootstrap=broker.secure_bootstrap,
        kafka_security_protocol="SASL_SSL",
        kafka_sasl_mechanism="SCRAM-SHA-512",
        kafka_sasl_username=USER,
        kafka_sasl_password=PASSWORD,
        kafka_ssl_cafile=pki.ca,
    )
    return plain, secure


async def test_the_worker_runs_as_the_least_privilege_principal(
    secure_kafka: ApacheKafka, redis_url: str, pki: Pki
) -> None:
    plain, secure = await both_settings(secure_kafka, redis_url, pki)
    await grant(secure_kafka.bootstrap, least_privilege(secure))
    events = one_day_of_traffic(60, orders_only=True)
    produced = await produce(plain, events)
    async with worker_process(secure, NOW) as proc:
        await wait_until(lambda: all_committed(plain, produced), 120, "offsets committed")
        assert proc.poll() is None, worker_log(proc)
    rejects = await assert_matches_replay(plain, events)
    assert len(await read_all(plain, plain.topic_dlq, timeout=1.0)) == rejects


@pytest.mark.parametrize(
    ("case", "named"),
    [
        ("wrong password", ["SEGMENT_WORKER_KAFKA_SASL_PASSWORD", f"user '{USER}'"]),
        ("untrusted CA", ["SEGMENT_WORKER_KAFKA_SSL_CAFILE", "does not trust"]),
        ("plaintext", ["SEGMENT_WORKER_KAFKA_SECURITY_PROTOCOL=PLAINTEXT", "expects TLS"]),
        ("no ACLs", [f"refused SCRAM-SHA-512 user '{STRANGER}'", "docs/security.md"]),
    ],
)
async def test_a_refused_connection_stops_the_start_naming_the_setting(
    secure_kafka: ApacheKafka, redis_url: str, pki: Pki, case: str, named: list[str]
) -> None:
    _, secure = await both_settings(secure_kafka, redis_url, pki)
    await grant(secure_kafka.bootstrap, least_privilege(secure))
    wrong = {
        "wrong password": replace(secure, kafka_sasl_password="not-the-password"),
        "untrusted CA": replace(secure, kafka_ssl_cafile=pki.stranger_ca),
        "plaintext": replace(secure, kafka_security_protocol="PLAINTEXT"),
        "no ACLs": replace(secure, kafka_sasl_username=STRANGER),
    }[case]
    proc = start_worker(wrong, NOW)
    try:
        code = await asyncio.to_thread(proc.wait, 90)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise AssertionError(f"{case}: still running\n{worker_log(proc)}") from None
    log = worker_log(proc)
    assert code == 2, log
    assert "segment-worker: bad setting:" in log
    for words in named:
        assert words in log, log


async def test_a_missing_dlq_write_holds_the_partition_until_the_acl_is_back(
    secure_kafka: ApacheKafka, redis_url: str, pki: Pki
) -> None:
    plain, secure = await both_settings(secure_kafka, redis_url, pki)
    acls = least_privilege(secure)
    dlq_write = Acl(f"User:{USER}", "topic", secure.topic_dlq, "WRITE")
    await grant(secure_kafka.bootstrap, [acl for acl in acls if acl != dlq_write])
    events = one_day_of_traffic(60, orders_only=True)
    produced = await produce(plain, events)
    # One more record that can only be dead-lettered, at a known place.
    producer = kafka.producer(plain)
    await producer.start()
    try:
        bad = await producer.send_and_wait(
            plain.topic_orders,
            b"{not json",
            key=b"c-bad",
            partition=partition_of("c-bad", PARTITIONS),
        )
    finally:
        await producer.stop()
    held = TopicPartition(bad.topic, bad.partition)
    produced = Produced(produced.ends | {held: max(produced.ends.get(held, 0), bad.offset + 1)})

    async with worker_process(secure, NOW) as proc:
        refused = f"{secure.topic_dlq}: the worker's principal needs WRITE"
        await wait_until(lambda: refused in worker_log(proc), 90, "the refused write logged")
        await asyncio.sleep(3)  # retrying, not exiting, not committing past the dead letter
        assert proc.poll() is None, worker_log(proc)
        assert (await committed(plain, [held]))[held] <= bad.offset
        assert await read_all(plain, plain.topic_dlq, timeout=1.0) == []
        # Counted as the call refused: the relay asks for the topic's partitions before it
        # sends (segment_worker_kafka_errors_total{op="metadata"}, what the alert reads).
        assert (await kafka_errors(secure.http_port)).get("metadata", 0) >= 1

        await grant(secure_kafka.bootstrap, [dlq_write])
        await wait_until(lambda: all_committed(plain, produced), 120, "offsets committed")
    expected_replay, expected, rejects = replay(events, NOW)
    dead = await read_all(plain, plain.topic_dlq, timeout=1.0)
    assert b"{not json" in {record.value for record in dead}
    assert len(dead) == rejects + 1
    assert change_ids(await read_all(plain, plain.topic_changes)) == documents(expected)
    await assert_state_matches(plain, expected_replay, NOW // DAY_MS)
