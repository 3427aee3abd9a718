"""The operator commands against a real Redis: `segment-worker customer` (a stored state as the
HTTP lookup shows it) and `segment-worker forget` (a damaged state deleted, anything else
left alone), with clear exit statuses for unknown customers, damaged states and servers that
cannot be reached. (Asking Kafka for the partition count is covered in test_live.py.)"""

from __future__ import annotations

import asyncio
from pathlib import Path

import orjson
import pytest
import redis
import redis.asyncio as aioredis

from worker.cli import main
from worker.core.codec import encode_state
from worker.core.engine import process_event
from worker.core.events import Order
from worker.core.rules import load_rules
from worker.core.state import CustomerState
from worker.core.timeutil import DAY_MS, format_ms, parse_rfc3339
from worker.core.views import describe, stored
from worker.kafka import partition_of
from worker.keys import Layout
from worker.store import Store
from worker.tools.embedded import RedisServer
from worker.tools.servers import free_port

pytestmark = pytest.mark.integration

PARTITIONS = 4
LAYOUT = Layout()  # the default prefix, as the commands under test use
ORDERED = parse_rfc3339("2026-03-01T10:00:00Z")


def _state(customer_id: str) -> CustomerState:
    state = CustomerState(customer_id)
    order = Order("e1", customer_id, ORDERED, 12_550, "USD", "paid", "o1", "North")
    process_event(state, order, load_rules(), ORDERED, ORDERED)
    return state


def _store(server: RedisServer, customer_id: str, blob: bytes) -> None:
    client = redis.Redis.from_url(server.url)
    try:
        client.set(LAYOUT.customer(partition_of(customer_id, PARTITIONS), customer_id), blob)
    finally:
        client.close()


def _held(server: RedisServer, customer_id: str) -> bytes | None:
    client = redis.Redis.from_url(server.url)
    try:
        return client.get(LAYOUT.customer(partition_of(customer_id, PARTITIONS), customer_id))
    finally:
        client.close()


def _env(monkeypatch: pytest.MonkeyPatch, redis_url: str, bootstrap: str = "") -> None:
    for name in (
        "SEGMENT_WORKER_RULES",
        "SEGMENT_WORKER_REDIS_PREFIX",
        "SEGMENT_WORKER_PSEUDONYM_KEY",
    ):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("SEGMENT_WORKER_REDIS_URL", redis_url)
    if bootstrap:
        monkeypatch.setenv("SEGMENT_WORKER_KAFKA_BOOTSTRAP", bootstrap)


def test_prints_the_stored_state_and_names_the_unknown(
    redis_server: RedisServer,
    monkeypatch: pytest.MonkeyPatch,
    capsysbinary: pytest.CaptureFixture[bytes],
) -> None:
    state = _state("cus_a")
    _store(redis_server, "cus_a", encode_state(state))
    _env(monkeypatch, redis_server.url)
    at = ORDERED + 40 * DAY_MS

    code = main(["customer", "cus_a", "nobody", "--partitions", "4", "--at", format_ms(at)])

    out, err = capsysbinary.readouterr()
    assert code == 1  # one of the two is unknown
    assert b"unknown customer 'nobody'" in err
    (line,) = out.splitlines()
    want = describe(state, load_rules(), at // DAY_MS) | {"partition": partition_of("cus_a", 4)}
    assert orjson.loads(line) == orjson.loads(orjson.dumps(want))
    assert orjson.loads(line)["classes"]["lifecycle"] == "new"


def test_a_refused_rules_file_still_shows_what_the_state_stores(
    redis_server: RedisServer,
    monkeypatch: pytest.MonkeyPatch,
    capsysbinary: pytest.CaptureFixture[bytes],
    tmp_path: Path,
) -> None:
    """During a rules incident the worker runs on its old rules: its stored classes are what
    an operator needs to see; only what the rules compute is left out."""
    state = _state("cus_a")
    _store(redis_server, "cus_a", encode_state(state))
    _env(monkeypatch, redis_server.url)
    broken = tmp_path / "rules.yaml"
    broken.write_text("orders: [\n")
    monkeypatch.setenv("SEGMENT_WORKER_RULES", str(broken))

    assert main(["customer", "cus_a", "--partitions", "4"]) == 0

    out, err = capsysbinary.readouterr()
    assert err.decode().startswith(
        "segment-worker: order figures, windows, scores and next_change_at not shown, the rules "
        f"file is refused: {broken}: "
    )
    assert len(err.splitlines()) == 1
    want = stored(state) | {"partition": partition_of("cus_a", 4)}
    assert orjson.loads(out) == orjson.loads(orjson.dumps(want))
    assert orjson.loads(out)["classes"]["lifecycle"] == "new"

    assert main(["customer", "cus_a", "--partitions", "4", "--at", format_ms(ORDERED)]) == 2
    out, err = capsysbinary.readouterr()
    assert out == b""
    assert err.decode().startswith("segment-worker: --at needs the rules, and the rules file")


def test_a_damaged_state_is_reported_and_the_others_still_printed(
    redis_server: RedisServer,
    monkeypatch: pytest.MonkeyPatch,
    capsysbinary: pytest.CaptureFixture[bytes],
) -> None:
    _store(redis_server, "cus_a", encode_state(_state("cus_a")))
    _store(redis_server, "cus_b", b"\x04not a state")
    _env(monkeypatch, redis_server.url)

    code = main(["customer", "cus_b", "cus_a", "--partitions", "4"])

    out, err = capsysbinary.readouterr()
    assert code == 1
    assert b"cus_b" in err
    assert [orjson.loads(line)["customer_id"] for line in out.splitlines()] == ["cus_a"]


def test_servers_it_cannot_reach_give_status_2_and_say_which(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    nowhere = f"127.0.0.1:{free_port()}"
    _env(monkeypatch, f"redis://{nowhere}/0", bootstrap=nowhere)

    assert main(["customer", "cus_a", "--partitions", "4"]) == 2
    assert "cannot reach Redis" in capsys.readouterr().err

    assert main(["customer", "cus_a"]) == 2  # the partition count must come from Kafka
    err = capsys.readouterr().err
    assert "--partitions" in err and nowhere in err


def test_a_bad_instant_is_refused_by_the_parser(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["customer", "cus_a", "--at", "yesterday"])
    assert exit_.value.code == 2
    assert "RFC 3339" in capsys.readouterr().err


def test_forget_deletes_a_damaged_state_and_leaves_every_other_alone(
    redis_server: RedisServer,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    readable = encode_state(_state("cus_ok"))
    _store(redis_server, "cus_ok", readable)
    _store(redis_server, "cus_damaged", b"\x78 not zlib")
    _store(redis_server, "cus_newer", b"[99]")  # what a later release might write
    _env(monkeypatch, redis_server.url)

    code = main(["forget", "cus_damaged", "cus_ok", "cus_newer", "nobody", "--partitions", "4"])

    out, err = capsys.readouterr()
    assert code == 1
    assert "forgot 'cus_damaged'" in out
    assert _held(redis_server, "cus_damaged") is None  # its due entry: dropped when due
    assert "'cus_ok': its state reads fine; `segment-worker erase`" in err
    assert _held(redis_server, "cus_ok") == readable
    assert "'cus_newer': its state is in format 99, which a newer release writes" in err
    assert _held(redis_server, "cus_newer") == b"[99]"
    assert "'nobody': unknown customer" in err

    assert main(["forget", "cus_damaged", "--partitions", "4"]) == 1  # nothing left to forget


def test_forget_deletes_nothing_if_the_state_changed_since_it_was_read(
    redis_server: RedisServer,
) -> None:
    _store(redis_server, "cus_a", b"damaged")

    async def attempt() -> bool:
        client = aioredis.from_url(redis_server.url)
        try:
            store = Store(client)
            await store.library.load()
            return await store.forget(partition_of("cus_a", 4), "cus_a", b"read earlier")
        finally:
            await client.aclose()

    assert asyncio.run(attempt()) is False
    assert _held(redis_server, "cus_a") == b"damaged"


def test_forget_under_a_pseudonym_key(
    redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Keys are HMACs of the ids there: the command finds them from the id, and a value
    damaged before its state even starts (the id prefix) counts as damaged."""
    secret = "k" * 32
    store = Store(redis.Redis(), pseudonym_key=secret.encode())  # only to name keys
    partition = partition_of("cus_p", PARTITIONS)
    key = store.customer_key(partition, "cus_p")
    client = redis.Redis.from_url(redis_server.url)
    client.set(key, b"\x00")
    _env(monkeypatch, redis_server.url)
    monkeypatch.setenv("SEGMENT_WORKER_PSEUDONYM_KEY", secret)

    assert main(["forget", "cus_p", "--partitions", "4"]) == 0
    assert "forgot 'cus_p'" in capsys.readouterr().out
    assert client.get(key) is None
    client.close()


def test_erase_refuses_an_id_no_event_can_carry(capsys: pytest.CaptureFixture[str]) -> None:
    # Refused before Kafka is asked (none runs here): such a customer has no state to erase.
    assert main(["erase", "cus_ok", "x" * 201]) == 2
    assert "not a customer id (1 to 200 characters" in capsys.readouterr().err
    assert main(["erase", ""]) == 2


def test_erase_names_a_kafka_it_cannot_reach(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    nowhere = f"127.0.0.1:{free_port()}"
    monkeypatch.setenv("SEGMENT_WORKER_KAFKA_BOOTSTRAP", nowhere)
    assert main(["erase", "cus_a"]) == 2
    err = capsys.readouterr().err
    assert (
        f"segment-worker: cannot reach Kafka at {nowhere} (SEGMENT_WORKER_KAFKA_BOOTSTRAP): " in err
    )
    assert "erasure requested for" not in err and "Unclosed" not in err
