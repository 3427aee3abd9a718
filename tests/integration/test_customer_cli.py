"""`segment-worker customer`: a customer's stored state read from a real Redis, as the HTTP
lookup shows it, and a clear exit status for unknown customers, damaged states and servers
that cannot be reached. (Asking Kafka for the partition count is covered in test_live.py.)"""

from __future__ import annotations

import orjson
import pytest
import redis

from worker.cli import main
from worker.core.codec import encode_state
from worker.core.engine import process_event
from worker.core.events import Order
from worker.core.rules import load_rules
from worker.core.state import CustomerState
from worker.core.timeutil import DAY_MS, format_ms, parse_rfc3339
from worker.core.views import describe
from worker.embedded import RedisServer, free_port
from worker.live import partition_of

pytestmark = pytest.mark.integration

PARTITIONS = 4
ORDERED = parse_rfc3339("2026-03-01T10:00:00Z")


def _state(customer_id: str) -> CustomerState:
    state = CustomerState(customer_id)
    order = Order("e1", customer_id, ORDERED, 12_550, "USD", "paid", "o1", "North")
    process_event(state, order, load_rules(), ORDERED, ORDERED)
    return state


def _store(server: RedisServer, customer_id: str, blob: bytes) -> None:
    client = redis.Redis.from_url(server.url)
    try:
        client.set(f"sw:{{p{partition_of(customer_id, PARTITIONS)}}}:c:{customer_id}", blob)
    finally:
        client.close()


def _env(monkeypatch: pytest.MonkeyPatch, redis_url: str, bootstrap: str = "") -> None:
    for name in ("SEGMENT_WORKER_RULES", "SEGMENT_WORKER_REDIS_PREFIX"):
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
    assert "cannot read Redis" in capsys.readouterr().err

    assert main(["customer", "cus_a"]) == 2  # the partition count must come from Kafka
    err = capsys.readouterr().err
    assert "--partitions" in err and nowhere in err


def test_a_bad_instant_is_refused_by_the_parser(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["customer", "cus_a", "--at", "yesterday"])
    assert exit_.value.code == 2
    assert "RFC 3339" in capsys.readouterr().err
