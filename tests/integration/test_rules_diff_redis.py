"""rules diff against the state a worker keeps in Redis."""

import asyncio
from pathlib import Path

import orjson
import pytest
import redis.asyncio as aioredis

from worker.cli import main
from worker.core.codec import encode_state
from worker.core.events import Order
from worker.core.rules import load_rules
from worker.core.state import CustomerState
from worker.core.timeutil import DAY_MS, format_ms
from worker.store import Store
from worker.tools.embedded import RedisServer
from worker.tools.servers import free_port

pytestmark = pytest.mark.integration


async def seed(url: str) -> None:
    client = aioredis.from_url(url)
    store = Store(client)
    await store.library.load()
    for partition, (cid, orders) in enumerate([("a", 1), ("b", 2), ("c{x}:y", 2), ("d", 3)]):
        state = CustomerState(cid)
        for n in range(orders):
            state.apply(
                Order(
                    f"{cid}{n}", cid, (20_500 - n) * DAY_MS, 1000, "USD", "paid", f"{cid}{n}", None
                ),
                load_rules(None).activity,
            )
        claim = await store.claim(partition)
        await store.commit(claim, states={cid: encode_state(state)}, due={}, outbox=[], offsets={})
    await client.aclose()


def test_rules_diff_reads_the_live_state(
    redis_server: RedisServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    asyncio.run(seed(redis_server.url))
    new = tmp_path / "new.toml"
    text = (Path(__file__).parents[2] / "worker/core/default_rules.toml").read_text()
    new.write_text(text.replace('orders_total >= 3" }', 'orders_total >= 2" }'))
    as_of = format_ms(20_500 * DAY_MS)
    assert (
        main(["rules", "diff", str(new), "--redis", redis_server.url, "--as-of", as_of, "--json"])
        == 0
    )
    out = orjson.loads(capsys.readouterr().out)
    assert out["membership"] == [{"from": "ordinary", "to": "member", "customers": 2}]


def test_rules_diff_without_a_url_reads_the_worker_setting(
    redis_server: RedisServer,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The URL (with its password) need not be in argv: --redis alone reads the setting."""
    asyncio.run(seed(redis_server.url))
    secret = tmp_path / "redis-url"
    secret.write_text(redis_server.url + "\n")
    monkeypatch.setenv("SEGMENT_WORKER_REDIS_URL_FILE", str(secret))
    rules = str(Path(__file__).parents[2] / "worker/core/default_rules.toml")
    assert main(["rules", "diff", rules, "--redis", "--as-of", format_ms(20_500 * DAY_MS)]) == 0
    assert capsys.readouterr().out.startswith("4 customers; ")


def test_rules_diff_against_redis_starts_from_the_workers_own_rules(
    redis_server: RedisServer,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The state was classified under SEGMENT_WORKER_RULES: diffing that file against itself
    moves nobody, though it differs from the built-in defaults."""
    asyncio.run(seed(redis_server.url))
    text = (Path(__file__).parents[2] / "worker/core/default_rules.toml").read_text()
    current = tmp_path / "current.toml"
    current.write_text(text.replace('orders_total >= 3" }', 'orders_total >= 2" }'))
    monkeypatch.setenv("SEGMENT_WORKER_RULES", str(current))
    args = ["--redis", redis_server.url, "--as-of", format_ms(20_500 * DAY_MS), "--json"]
    assert main(["rules", "diff", str(current), *args]) == 0
    assert all(not moves for moves in orjson.loads(capsys.readouterr().out).values())


@pytest.mark.parametrize("command", [["rules", "diff", "rules.toml"], ["fit"]])
def test_a_redis_it_cannot_reach_is_named_without_its_password(
    command: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rules = Path(__file__).parents[2] / "worker/core/default_rules.toml"
    (tmp_path / "rules.toml").write_bytes(rules.read_bytes())
    command = [str(tmp_path / arg) if arg.endswith(".toml") else arg for arg in command]
    url = f"redis://user:s3cret@127.0.0.1:{free_port()}/0"
    with pytest.raises(SystemExit) as exited:
        main([*command, "--redis", url])
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert "segment-worker: cannot reach Redis at redis://user:***@127.0.0.1:" in err
    assert "s3cret" not in err and "Traceback" not in err
