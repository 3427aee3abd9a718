"""Audiences and class populations read from Redis equal replay's: a few thousand customers of
a generated shop history are replayed, their states committed to Redis the way the worker
commits them (population counts included), and `segment-worker audience` must list exactly
replay's members of each class, as JSON lines and as CSV, with and without pseudonyms, on one
Redis and on a three-master Redis Cluster; a scan over a changing keyspace keeps its promise."""

from __future__ import annotations

import asyncio
import csv
import io
from collections import Counter, defaultdict
from pathlib import Path

import orjson
import pytest
import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster

from tests.integration.test_redis_cluster import (  # noqa: F401 - the fixture
    cluster,
    owner_of,
)
from tests.traffic import history
from worker.audience import Tally, columns, members, populations
from worker.cli import main
from worker.core.codec import encode_state
from worker.core.events import ParseLimits
from worker.core.rules import load_rules
from worker.core.state import CustomerState
from worker.core.timeutil import DAY_MS, format_ms
from worker.core.views import describe, showing
from worker.kafka import partition_of
from worker.redis.client import Client
from worker.replay import Replayer
from worker.store import Store
from worker.tools.embedded import RedisServer
from worker.tools.servers import free_port

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

PARTITIONS = 4
KEY = "audience-test-key-of-at-least-32-bytes"
RULES = load_rules()
CLASSES = {d.name: [c.name for c in d.classes] for d in RULES.dimensions}


@pytest.fixture(scope="module")
def shop() -> tuple[dict[str, CustomerState], int]:
    """Replay's final states of 3,000 customers, and the instant they are as of."""
    lines, as_of = history(seed=15, customers=3000, events=24_000)
    replayer = Replayer(
        RULES, lambda _: None, lambda *_: None, limits=ParseLimits(), future_reference_ms=as_of
    )
    for n, line in enumerate(lines, 1):
        replayer.feed(line, n)
    replayer.advance(as_of)
    return replayer.states, as_of


async def commit_all(store: Store, states: dict[str, CustomerState]) -> None:
    """Write every state, and its classes into the population counts, as the worker does."""
    await store.library.load()
    by_partition: dict[int, list[CustomerState]] = defaultdict(list)
    for state in states.values():
        by_partition[partition_of(state.customer_id, PARTITIONS)].append(state)
    for partition, held in by_partition.items():
        claim = await store.claim(partition)
        for start in range(0, len(held), 500):
            batch = held[start : start + 500]
            pops = Counter(
                (dim, cls) for s in batch for dim, cls in s.classes.items() if cls is not None
            )
            await store.commit(
                claim,
                states={s.customer_id: encode_state(s) for s in batch},
                due={},
                outbox=[],
                offsets={},
                populations=pops,
            )


def replay_members(states: dict[str, CustomerState], dimension: str, name: str) -> set[str]:
    return {cid for cid, s in states.items() if s.classes.get(dimension) == name}


def replay_counts(states: dict[str, CustomerState]) -> dict[str, dict[str, int]]:
    out = {d.name: dict.fromkeys((c.name for c in d.classes), 0) for d in RULES.dimensions}
    for state in states.values():
        for dim, cls in state.classes.items():
            if cls is not None:
                out[dim][cls] += 1
    return out


def cli_env(monkeypatch: pytest.MonkeyPatch, url: str, **extra: str) -> None:
    for name in ("SEGMENT_WORKER_RULES", "SEGMENT_WORKER_REDIS_PREFIX"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("SEGMENT_WORKER_REDIS_URL", url)
    monkeypatch.delenv("SEGMENT_WORKER_PSEUDONYM_KEY", raising=False)
    monkeypatch.delenv("SEGMENT_WORKER_REDIS_CLUSTER", raising=False)
    for name, value in extra.items():
        monkeypatch.setenv(f"SEGMENT_WORKER_{name}", value)


def run_audience(capsysbinary: pytest.CaptureFixture[bytes], *args: str) -> tuple[int, bytes, str]:
    code = main(["audience", *args, "--partitions", str(PARTITIONS)])
    out, err = capsysbinary.readouterr()
    return code, out, err.decode()


@pytest.mark.parametrize("pseudonyms", [False, True], ids=["ids", "pseudonyms"])
def test_every_audience_equals_replays_members(
    shop: tuple[dict[str, CustomerState], int],
    redis_server: RedisServer,
    monkeypatch: pytest.MonkeyPatch,
    capsysbinary: pytest.CaptureFixture[bytes],
    pseudonyms: bool,
) -> None:
    states, as_of = shop
    key = KEY.encode() if pseudonyms else None

    async def seed() -> dict[str, dict[str, int]]:
        client = aioredis.from_url(redis_server.url)
        store = Store(client, pseudonym_key=key)
        await commit_all(store, states)
        counts = await populations(store, RULES, PARTITIONS)
        await client.aclose()
        return counts

    assert asyncio.run(seed()) == replay_counts(states)
    cli_env(monkeypatch, redis_server.url, **({"PSEUDONYM_KEY": KEY} if pseudonyms else {}))
    day = as_of // DAY_MS
    total = 0
    for dimension in ("lifecycle", "value_tier"):
        for name in CLASSES[dimension]:
            want = replay_members(states, dimension, name)
            code, out, err = run_audience(capsysbinary, dimension, name, "--at", format_ms(as_of))
            assert code == 0, err
            listed = [orjson.loads(line) for line in out.splitlines()]
            assert sorted(m["customer_id"] for m in listed) == sorted(want), (dimension, name)
            assert f"{len(want):,} members of {dimension}={name}" in err
            for member in listed[:20]:  # the figures are the lookup's, at --at
                state = states[member["customer_id"]]
                shown = orjson.loads(orjson.dumps(describe(state, RULES, day)))
                assert member["class"] == name
                assert member["since"] == shown["since"][dimension]
                for field in columns(RULES)[3:]:
                    assert member[field] == shown[field], field
            total += len(listed)
    assert total > len(states)  # most customers are in a class of each of the two dimensions


def test_csv_has_a_header_and_the_same_members(
    shop: tuple[dict[str, CustomerState], int],
    redis_server: RedisServer,
    monkeypatch: pytest.MonkeyPatch,
    capsysbinary: pytest.CaptureFixture[bytes],
) -> None:
    states, as_of = shop

    async def seed() -> None:
        client = aioredis.from_url(redis_server.url)
        await commit_all(Store(client), states)
        await client.aclose()

    asyncio.run(seed())
    cli_env(monkeypatch, redis_server.url)
    code, out, err = run_audience(
        capsysbinary, "value_tier", "high", "--format", "csv", "--at", format_ms(as_of)
    )
    assert code == 0, err
    rows = list(csv.reader(io.StringIO(out.decode())))
    assert rows[0] == columns(RULES)
    want = replay_members(states, "value_tier", "high")
    assert want and sorted(r[0] for r in rows[1:]) == sorted(want)
    assert {r[1] for r in rows[1:]} == {"high"}


def test_a_refused_rules_file_still_lists_the_stored_members(
    shop: tuple[dict[str, CustomerState], int],
    redis_server: RedisServer,
    monkeypatch: pytest.MonkeyPatch,
    capsysbinary: pytest.CaptureFixture[bytes],
    tmp_path: Path,
) -> None:
    """During a rules incident the worker runs on its old rules, and an audience is still
    what was last emitted: only the figures the rules compute are left out."""
    states, _ = shop

    async def seed() -> None:
        client = aioredis.from_url(redis_server.url)
        await commit_all(Store(client), states)
        await client.aclose()

    asyncio.run(seed())
    broken = tmp_path / "rules.toml"
    broken.write_text("[orders\n")
    cli_env(monkeypatch, redis_server.url, RULES=str(broken))
    code, out, err = run_audience(capsysbinary, "value_tier", "high", "--format", "csv")
    assert code == 0, err
    assert err.startswith(
        "segment-worker: DIMENSION and CLASS not checked, only customer_id, class and since "
        f"listed, the rules file is refused: {broken}: "
    )
    rows = list(csv.reader(io.StringIO(out.decode())))
    assert rows[0] == ["customer_id", "class", "since"]
    shown = {r[0]: r[2] for r in rows[1:]}
    want = replay_members(states, "value_tier", "high")
    assert want and sorted(shown) == sorted(want)
    some = next(iter(want))
    assert shown[some] == format_ms(states[some].since_ms["value_tier"])
    code, out, err = run_audience(
        capsysbinary, "value_tier", "high", "--at", "2026-01-01T00:00:00Z"
    )
    assert (code, out) == (2, b"")
    assert err.startswith("segment-worker: --at needs the rules, and the rules file is refused: ")


def test_an_unknown_dimension_or_class_is_refused_naming_the_valid_ones(
    capsysbinary: pytest.CaptureFixture[bytes], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("SEGMENT_WORKER_RULES", raising=False)
    code, out, err = run_audience(capsysbinary, "value", "high")
    assert (code, out) == (2, b"")
    assert "unknown dimension 'value'; the rules have: lifecycle, value_tier, rfm" in err
    code, out, err = run_audience(capsysbinary, "value_tier", "platinum")
    assert (code, out) == (2, b"")
    assert "dimension 'value_tier' has no class 'platinum'; its classes: high, medium, low" in err


async def test_a_scan_over_a_changing_keyspace_keeps_its_promise(
    redis_server: RedisServer,
) -> None:
    """Between the scan's batches customers leave the class, are deleted, or arrive: every
    member present for the whole scan is listed exactly once, and nobody who never was one."""
    client = aioredis.from_url(redis_server.url)
    store = Store(client)
    steady = {f"s{n:04}": _member(f"s{n:04}") for n in range(5000)}
    leaving = {f"l{n:04}": _member(f"l{n:04}") for n in range(300)}
    await commit_all(store, steady | leaving)
    claims = {p: await store.claim(p) for p in range(PARTITIONS)}

    async def write(customer_id: str, state: CustomerState | None) -> None:
        claim = claims[partition_of(customer_id, PARTITIONS)]
        blob = None if state is None else encode_state(state)
        await store.commit(claim, states={customer_id: blob}, due={}, outbox=[], offsets={})

    listed: list[str] = []
    arrived: set[str] = set()
    batches = 0
    tally = Tally()
    show, fields = showing(RULES, 20_500 * DAY_MS), columns(RULES)
    async for found in members(store, "lifecycle", "new", show=show, fields=fields, tally=tally):
        listed += [str(m["customer_id"]) for m in found]
        batches += 1
        for n in range(batches * 100 - 100, min(batches * 100, len(leaving))):
            leaver, newcomer = f"l{n:04}", f"n{n:04}"
            if n % 2:
                moved = _member(leaver)
                moved.classes["lifecycle"] = "active"
                await write(leaver, moved)
            else:
                await write(leaver, None)
            await write(newcomer, _member(newcomer))
            arrived.add(newcomer)
    await client.aclose()
    assert batches > 3  # the changes did land mid-scan
    assert len(listed) == len(set(listed))  # nobody twice
    assert set(steady) <= set(listed)  # every steady member
    assert set(listed) <= set(steady) | set(leaving) | arrived
    assert tally.members == len(listed)


def _member(customer_id: str) -> CustomerState:
    state = CustomerState(customer_id)
    state.classes["lifecycle"] = "new"
    state.since_ms["lifecycle"] = 20_000 * DAY_MS
    return state


async def test_an_audience_on_a_redis_cluster_reaches_every_master(
    shop: tuple[dict[str, CustomerState], int],
    cluster: list[RedisServer],  # noqa: F811 - the fixture imported above
) -> None:
    states, as_of = shop
    client: Client = RedisCluster(host="127.0.0.1", port=cluster[0].port)
    store = Store(client)
    masters = {owner_of(cluster, store.keys.meta(p)) for p in range(PARTITIONS)}
    assert len(masters) > 1  # the partitions are spread, so one master's SCAN is not enough
    await commit_all(store, states)
    tally = Tally()
    listed: list[str] = []
    show, fields = showing(RULES, as_of), columns(RULES)
    async for found in members(store, "lifecycle", "active", show=show, fields=fields, tally=tally):
        listed += [str(m["customer_id"]) for m in found]
    assert sorted(listed) == sorted(replay_members(states, "lifecycle", "active"))
    assert tally.scanned == len(states)
    assert await populations(store, RULES, PARTITIONS) == replay_counts(states)
    await client.aclose()


def test_a_redis_it_cannot_reach_gives_status_2(
    monkeypatch: pytest.MonkeyPatch, capsysbinary: pytest.CaptureFixture[bytes]
) -> None:
    cli_env(monkeypatch, f"redis://127.0.0.1:{free_port()}/0")
    code, out, err = run_audience(capsysbinary, "lifecycle", "active")
    assert (code, out) == (2, b"")
    assert "cannot reach Redis" in err
