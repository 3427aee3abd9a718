"""The Redis adapter against a real redis-server: atomic fenced commits, offsets, outbox, due
index, argument checks before any write, large batches, odd customer ids, AOF restarts."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator
from typing import Any

import pytest
import redis.asyncio as aioredis
from redis.asyncio.connection import Connection
from redis.crc import key_slot
from redis.exceptions import ResponseError

from tests.integration.conftest import AofStore
from tests.integration.live_support import due_index
from worker.keys import Layout
from worker.redis.claims import Claim, Fenced, ServerChanged
from worker.redis.library import library_code
from worker.store import Store

pytestmark = pytest.mark.integration
LAYOUT = Layout("sw")


class CountingRedis(aioredis.Redis):
    """Records every write to Redis, one round trip each, as the names of the commands it
    carries joined by " + " (the Store packs its function calls itself, so this counts at
    the connection)."""

    sent: list[str]


def command_names(packed: Any) -> list[str]:
    """The command names in a RESP request: arrays of bulk strings, read by their lengths
    (payloads are binary). A container command is named with its subcommand."""
    data = packed if isinstance(packed, bytes | bytearray) else b"".join(packed)
    names, pos = [], 0

    def line() -> bytes:  # the next line, from its type byte
        nonlocal pos
        end = data.index(b"\r\n", pos)
        text, pos = data[pos:end], end + 2
        return text

    while pos < len(data):
        header = line()
        assert header[:1] == b"*", header
        words = []
        for _ in range(int(header[1:])):
            size = int(line()[1:])
            words.append(data[pos : pos + size])
            pos += size + 2
        name = words[0].decode().upper()
        if name in {"FUNCTION", "CLIENT", "CONFIG"}:
            name += " " + words[1].decode().upper()
        names.append(name)
    return names


@pytest.fixture
async def client(redis_url: str) -> AsyncIterator[CountingRedis]:
    sent: list[str] = []

    class Counting(Connection):
        async def send_packed_command(self, command: Any, check_health: bool = True) -> None:
            sent.append(" + ".join(command_names(command)))
            await super().send_packed_command(command, check_health)

    redis = CountingRedis.from_url(redis_url, connection_class=Counting)
    redis.sent = sent
    yield redis
    await redis.aclose()


@pytest.fixture
async def store(client: CountingRedis) -> Store:
    store = Store(client)
    await store.library.load()
    client.sent.clear()
    return store


async def snapshot(client: aioredis.Redis) -> dict[bytes, tuple[str, object, int]]:
    """Every key of the database: type, value and TTL state."""
    out: dict[bytes, tuple[str, object, int]] = {}
    async for key in client.scan_iter(count=1000):
        kind = (await client.type(key)).decode()
        value: object
        if kind == "string":
            value = await client.get(key)
        elif kind == "hash":
            value = await client.hgetall(key)
        elif kind == "zset":
            value = await client.zrange(key, 0, -1, withscores=True)
        elif kind == "list":
            value = await client.lrange(key, 0, -1)
        else:
            raise AssertionError(f"unexpected {kind} at {key!r}")
        out[key] = (kind, value, -1 if await client.pttl(key) == -1 else 1)
    return out


async def test_round_trip_of_states_due_outbox_and_offsets(
    store: Store, client: CountingRedis
) -> None:
    claim = await store.claim(3)
    assert claim == Claim(3, 1, {}, await store.server_id(3))
    await store.commit(
        claim,
        states={"alice": b"\x00state-a\xff", "bob": b"state-b"},
        due={"alice": 2_000, "bob": 1_000},
        outbox=[b"out-1", b"out-2"],
        offsets={"orders": 11, "visits": 7},
    )
    assert (await store.read_checked(3, ["alice", "bob", "carol"])).states == [
        b"\x00state-a\xff",
        b"state-b",
        None,
    ]
    assert await store.get(3, "alice") == b"\x00state-a\xff"
    assert await store.get(4, "alice") is None  # another partition, other keys
    assert list(await store.due(3, 1_999, 10)) == ["bob"]
    assert list(await store.due(3, 2_000, 10)) == ["bob", "alice"]
    assert list(await store.due(3, 2_000, 1)) == ["bob"]
    assert len(list(await store.due(3, 2_000, 10_000))) == 2
    assert await store.outbox(3, 10) == [b"out-1", b"out-2"]

    # None deletes the state and removes the due entry; records append after the old ones.
    await store.commit(
        claim,
        states={"alice": None, "bob": b"state-b2"},
        due={"alice": None, "bob": 5_000},
        indexed={"alice": 2_000, "bob": 1_000},
        outbox=[b"out-3"],
        offsets={"orders": 12},
    )
    assert (await store.read_checked(3, ["alice", "bob"])).states == [None, b"state-b2"]
    assert list(await store.due(3, 10_000, 10)) == ["bob"]
    assert await store.outbox(3, 10) == [b"out-1", b"out-2", b"out-3"]
    assert (await store.claim(3)).offsets == {"orders": 12, "visits": 7}

    # The key layout the store documents, all in one slot.
    keys = {k.decode() for k in await client.keys("*")}
    assert keys == {
        LAYOUT.meta(3),
        LAYOUT.at(3),
        LAYOUT.bucket(3, 5_000),
        LAYOUT.outbox(3),
        LAYOUT.customer(3, "bob"),
    }
    assert await due_index(client, LAYOUT, 3) == {5_000: {"bob"}}
    assert {key_slot(k.encode()) for k in keys} == {key_slot(b"{p3}")}


async def test_one_round_trip_per_read_and_per_commit(store: Store, client: CountingRedis) -> None:
    claim = await store.claim(0)
    client.sent.clear()
    ids = [f"c{i}" for i in range(1_000)]
    await store.commit(
        claim,
        states=dict.fromkeys(ids, b"x" * 200),
        due={c: i for i, c in enumerate(ids)},
        outbox=[b"r"] * 50,
        offsets={"orders": 1_000},
        populations={("lifecycle", "new"): 1_000},
    )
    assert client.sent == ["FCALL"]
    client.sent.clear()
    assert len((await store.read_checked(0, ids)).states) == 1_000
    assert client.sent == ["FCALL_RO"]  # states, erasure markers and the server's run id


async def test_stale_epoch_is_fenced_and_writes_nothing(
    store: Store, client: CountingRedis
) -> None:
    old = await store.claim(5)
    await store.commit(
        old, states={"a": b"1"}, due={"a": 10}, outbox=[b"r1"], offsets={"orders": 3}
    )
    new = await store.claim(5)
    assert new.epoch == old.epoch + 1
    assert new.offsets == {"orders": 3}
    before = await snapshot(client)

    with pytest.raises(Fenced) as fenced:
        await store.commit(
            old,
            states={"a": b"stale", "b": b"stale", "gone": None},
            due={"a": None, "b": 1},
            outbox=[b"stale-record"],
            offsets={"orders": 99, "visits": 5},
            populations={("lifecycle", "active"): 1},
        )
    assert (fenced.value.partition, fenced.value.epoch, fenced.value.current) == (5, 1, 2)
    with pytest.raises(Fenced):
        await store.ack_outbox(old, 1)
    with pytest.raises(Fenced):
        await store.erase(old, "a", 60_000)
    with pytest.raises(Fenced):
        await store.mark_rules(old, "v2")
    assert await snapshot(client) == before

    # The new owner writes; the old one stays fenced for good.
    await store.commit(new, states={"a": b"2"}, due={}, outbox=[], offsets={"orders": 4})
    assert await store.get(5, "a") == b"2"
    with pytest.raises(Fenced):
        await store.commit(old, states={}, due={}, outbox=[], offsets={})


async def test_rules_mark_is_fenced_like_every_write(store: Store, client: CountingRedis) -> None:
    assert await store.rules_version(6) is None
    old = await store.claim(6)
    await store.mark_rules(old, "v1")
    assert await store.rules_version(6) == "v1"
    new = await store.claim(6)
    before = await snapshot(client)
    with pytest.raises(Fenced) as fenced:  # a stale owner finishing its re-evaluation
        await store.mark_rules(old, "v2")
    assert (fenced.value.partition, fenced.value.epoch, fenced.value.current) == (6, 1, 2)
    assert await snapshot(client) == before
    await store.mark_rules(new, "v2")
    assert await store.rules_version(6) == "v2"
    with pytest.raises(ValueError, match="empty"):
        await store.mark_rules(new, "")
    with pytest.raises(ResponseError, match="epoch must be >= 1"):
        await store.mark_rules(Claim(1, 0, {}, old.server), "v1")
    assert await store.rules_version(1) is None


async def test_a_re_evaluation_begun_is_marked_until_it_ends(
    store: Store, client: CountingRedis
) -> None:
    """The pass mark says customers may be off the rules mark: it stays until the mark."""
    old = await store.claim(7)
    await store.mark_rules(old, "v1")
    assert await store.rules_pass(7) is None
    await store.begin_rules(old, "v2")
    assert (await store.rules_version(7), await store.rules_pass(7)) == ("v1", "v2")
    new = await store.claim(7)
    before = await snapshot(client)
    with pytest.raises(Fenced):  # a stale owner beginning a re-evaluation
        await store.begin_rules(old, "v3")
    assert await snapshot(client) == before
    await store.begin_rules(new, "v1")  # the file reverted
    assert (await store.rules_version(7), await store.rules_pass(7)) == ("v1", "v1")
    await store.mark_rules(new, "v1")
    assert (await store.rules_version(7), await store.rules_pass(7)) == ("v1", None)
    with pytest.raises(ValueError, match="empty"):
        await store.begin_rules(new, "")


async def test_commit_before_any_claim_is_refused(store: Store, client: CountingRedis) -> None:
    here = await store.server_id(1)
    with pytest.raises(ResponseError, match="epoch must be >= 1"):
        await store.commit(Claim(1, 0, {}, here), states={"a": b"1"}, due={}, outbox=[], offsets={})
    with pytest.raises(Fenced) as fenced:  # an epoch nobody was ever given
        await store.commit(Claim(1, 7, {}, here), states={"a": b"1"}, due={}, outbox=[], offsets={})
    assert fenced.value.current == 0
    assert await snapshot(client) == {}


async def test_offsets_never_go_backwards(store: Store) -> None:
    claim = await store.claim(2)
    for given, expected in [(10, 10), (5, 10), (10, 10), (12, 12), (0, 12)]:
        await store.commit(claim, states={}, due={}, outbox=[], offsets={"orders": given})
        assert (await store.claim(2)).offsets["orders"] == expected
        claim = await store.claim(2)
    big = 2**53 - 1  # the largest offset the Function accepts
    await store.commit(claim, states={}, due={}, outbox=[], offsets={"orders": big, "v": 0})
    assert (await store.claim(2)).offsets == {"orders": big, "v": 0}


async def test_outbox_ack_trims_exactly(store: Store) -> None:
    claim = await store.claim(1)
    for batch in ([b"r0", b"r1"], [], [b"r2", b"r3", b"r4"]):
        await store.commit(claim, states={}, due={}, outbox=batch, offsets={})
    assert await store.outbox(1, 3) == [b"r0", b"r1", b"r2"]
    assert await store.outbox(1, 0) == []
    await store.ack_outbox(claim, 0)
    await store.ack_outbox(claim, 2)
    assert await store.outbox(1, 10) == [b"r2", b"r3", b"r4"]
    await store.commit(claim, states={}, due={}, outbox=[b"r5"], offsets={})
    await store.ack_outbox(claim, 1)
    assert await store.outbox(1, 10) == [b"r3", b"r4", b"r5"]
    await store.ack_outbox(claim, 10)  # more than there is: empty, not an error
    assert await store.outbox(1, 10) == []
    with pytest.raises(ValueError, match="count"):
        await store.ack_outbox(claim, -1)


async def test_ack_remembers_how_far_changes_were_relayed_and_never_goes_back(
    store: Store,
) -> None:
    claim = await store.claim(1)
    assert await store.relayed(1) == 0
    await store.commit(claim, states={}, due={}, outbox=[b"r0", b"r1"], offsets={})
    await store.ack_outbox(claim, 1, relayed=40)
    assert await store.relayed(1) == 40
    await store.ack_outbox(claim, 1, relayed=12)  # a late ack of older records
    assert await store.relayed(1) == 40
    await store.ack_outbox(claim, 0, relayed=41)
    assert await store.relayed(1) == 41
    assert await store.outbox(1, 10) == []


async def test_a_commit_can_carry_the_ack_of_the_previous_relay(
    store: Store, client: CountingRedis
) -> None:
    claim = await store.claim(1)
    await store.commit(claim, states={}, due={}, outbox=[b"r0", b"r1", b"r2"], offsets={})
    client.sent.clear()
    await store.commit(
        claim, states={}, due={}, outbox=[b"r3"], offsets={"orders": 4}, acked=2, relayed=40
    )
    assert client.sent == ["FCALL"]  # trim and commit: one round trip
    assert await store.outbox(1, 10) == [b"r2", b"r3"]
    assert await store.relayed(1) == 40
    await store.commit(claim, states={}, due={}, outbox=[], offsets={}, relayed=12)
    assert await store.relayed(1) == 40  # a mark never goes back
    await store.commit(claim, states={}, due={}, outbox=[b"r4"], offsets={}, acked=2)
    assert await store.outbox(1, 10) == [b"r4"]
    assert (await store.claim(1)).offsets == {"orders": 4}
    with pytest.raises(ValueError, match="acked"):
        await store.commit(claim, states={}, due={}, outbox=[], offsets={}, acked=-1)


async def test_a_fenced_commit_does_not_trim_either(store: Store) -> None:
    old = await store.claim(1)
    await store.commit(old, states={}, due={}, outbox=[b"r0", b"r1"], offsets={})
    await store.claim(1)
    with pytest.raises(Fenced):
        await store.commit(
            old, states={"a": b"x"}, due={}, outbox=[b"r2"], offsets={}, acked=2, relayed=9
        )
    assert await store.outbox(1, 10) == [b"r0", b"r1"]
    assert await store.relayed(1) == 0
    assert await store.get(1, "a") is None


async def test_calls_of_one_turn_share_a_round_trip_and_keep_their_own_answers(
    store: Store, client: CountingRedis
) -> None:
    claims = [await store.claim(p) for p in (1, 2, 3)]
    for claim in claims:
        state = f"s{claim.partition}".encode()
        await store.commit(claim, states={"a": state}, due={}, outbox=[], offsets={})
    client.sent.clear()
    seen = await asyncio.gather(*(store.read_checked(p, ["a", "b"]) for p in (1, 2, 3)))
    assert [s.states for s in seen] == [[b"s1", None], [b"s2", None], [b"s3", None]]
    assert client.sent == ["FCALL_RO + FCALL_RO + FCALL_RO"]  # one round trip, not three
    await store.claim(1)  # fences claims[0]
    results = await asyncio.gather(
        store.commit(claims[0], states={"b": b"stale"}, due={}, outbox=[], offsets={}),
        store.commit(claims[1], states={"b": b"fresh"}, due={}, outbox=[], offsets={}),
        return_exceptions=True,
    )
    assert isinstance(results[0], Fenced)
    assert results[1] is None
    assert await store.get(1, "b") is None
    assert await store.get(2, "b") == b"fresh"


async def test_large_commit_in_one_call(store: Store, client: CountingRedis) -> None:
    claim = await store.claim(7)
    ids = [f"customer-{i:05d}" for i in range(2_000)]
    states = {c: c.encode() * 10 for c in ids}
    client.sent.clear()
    await store.commit(
        claim,
        states=states,
        due={c: 1_700_000_000_000 + i for i, c in enumerate(ids)},
        outbox=[f"record-{i}".encode() for i in range(2_000)],
        offsets={"orders": 2_000},
    )
    assert client.sent == ["FCALL"]
    assert (await store.read_checked(7, ids)).states == list(states.values())
    assert len(list(await store.due(7, 2**52, 10_000))) == 2_000
    assert list(await store.due(7, 1_700_000_000_001, 5)) == ids[:2]
    outbox = await store.outbox(7, 5_000)
    assert outbox == [f"record-{i}".encode() for i in range(2_000)]

    # And delete them all in one call again.
    await store.commit(
        claim,
        states=dict.fromkeys(ids),
        due=dict.fromkeys(ids),
        indexed={c: 1_700_000_000_000 + i for i, c in enumerate(ids)},
        outbox=[],
        offsets={},
    )
    assert (await store.read_checked(7, ids)).states == [None] * 2_000
    assert len(list(await store.due(7, 2**52, 10_000))) == 0


ODD_IDS = [
    "{p4}",
    "}{",
    "{",
    "}",
    "a:b:c",
    "sw:{p9}:c:x",
    "with space",
    "line\nbreak\r\n",
    "tab\tand\x00nul",
    "ünïcødé ✓ 🎉 顧客",
    "x" * 1024,
    "é" * 600,  # 1,200 bytes in UTF-8
    "",
]


async def test_customer_ids_with_any_characters(store: Store, client: CountingRedis) -> None:
    claim = await store.claim(4)
    states = {c: f"state of {c!r}".encode() for c in ODD_IDS}
    await store.commit(
        claim,
        states=states,
        due={c: i for i, c in enumerate(ODD_IDS)},
        outbox=[],
        offsets={},
    )
    assert (await store.read_checked(4, ODD_IDS)).states == list(states.values())
    for c in ODD_IDS:
        assert await store.get(4, c) == states[c]
    assert list(await store.due(4, 10**6, 100)) == ODD_IDS
    keys = await client.keys("*")
    assert await due_index(client, LAYOUT, 4) == {i: {c} for i, c in enumerate(ODD_IDS)}
    assert {key_slot(k) for k in keys} == {key_slot(b"{p4}")}  # the first {...} is ours
    assert (await store.read_checked(9, ODD_IDS)).states == [None] * len(
        ODD_IDS
    )  # "sw:{p9}:c:x" is not p9's

    removed = ODD_IDS[:6]
    await store.commit(
        claim,
        states=dict.fromkeys(removed),
        due=dict.fromkeys(removed),
        indexed={c: i for i, c in enumerate(removed)},
        outbox=[],
        offsets={},
    )
    assert (await store.read_checked(4, removed)).states == [None] * len(removed)
    assert list(await store.due(4, 10**6, 100)) == ODD_IDS[6:]


async def test_erase_deletes_state_and_due_and_leaves_a_marker(store: Store) -> None:
    claim = await store.claim(6)
    await store.commit(
        claim, states={"a": b"1", "b": b"2"}, due={"a": 1, "b": 2}, outbox=[], offsets={}
    )
    assert await store.erase(claim, "a", 60_000) is True
    assert await store.erase(claim, "a", None) is False
    assert await store.erase(claim, "b", None) is True
    assert (await store.read_checked(6, ["a", "b"])).states == [None, None]
    assert list(await store.due(6, 100, 10)) == []
    assert (await store.read_checked(6, ["a", "b"])).erased == {"a"}
    with pytest.raises(ValueError, match="marker_ttl_ms"):
        await store.erase(claim, "a", 0)


async def test_due_index_keeps_a_bucket_per_instant(store: Store, client: CountingRedis) -> None:
    claim = await store.claim(5)
    states = {c: c.encode() for c in ("a", "b", "c")}
    await store.commit(
        claim, states=states, due={"a": 100, "b": 100, "c": 300}, outbox=[], offsets={}
    )
    assert await due_index(client, LAYOUT, 5) == {100: {"a", "b"}, 300: {"c"}}
    assert await store.due(5, 300, 10) == {"a": 100, "b": 100, "c": 300}
    # a moves on, b leaves the index: the emptied bucket goes, with its instant.
    await store.commit(
        claim,
        states={"a": b"a2", "b": b"b2"},
        due={"a": 300, "b": None},
        indexed={"a": 100, "b": 100},
        outbox=[],
        offsets={},
    )
    assert await due_index(client, LAYOUT, 5) == {300: {"a", "c"}}  # no bucket of 100 left
    assert await store.due(5, 300, 10) == {"a": 300, "c": 300}
    # A state written with no due instant given leaves its customer's index as it is.
    await store.commit(claim, states={"c": b"c2"}, due={}, outbox=[], offsets={})
    assert await store.due(5, 300, 10) == {"a": 300, "c": 300}
    with pytest.raises(ValueError, match="does not write"):
        await store.commit(claim, states={}, due={"a": 5}, outbox=[], offsets={})


async def test_a_name_left_under_a_wrong_instant_is_found_and_taken_out(
    store: Store, client: CountingRedis
) -> None:
    """A commit told a wrong ``indexed`` (a state read under another shop calendar) leaves
    the name in its old bucket; the timer finds it there, with that instant, and its commit
    (``indexed`` = the instant found) takes it out."""
    claim = await store.claim(5)
    await store.commit(claim, states={"a": b"1"}, due={"a": 100}, outbox=[], offsets={})
    await store.commit(
        claim, states={"a": b"2"}, due={"a": 500}, indexed={"a": 90}, outbox=[], offsets={}
    )
    assert await store.due(5, 200, 10) == {"a": 100}
    await store.commit(
        claim, states={"a": b"2"}, due={"a": 500}, indexed={"a": 100}, outbox=[], offsets={}
    )
    assert await store.due(5, 200, 10) == {}
    assert await store.due(5, 500, 10) == {"a": 500}
    assert await due_index(client, LAYOUT, 5) == {500: {"a"}}


async def test_due_reads_a_large_bucket_in_limited_steps(store: Store) -> None:
    claim = await store.claim(2)
    ids = [f"c{i}" for i in range(1_200)]
    await store.commit(
        claim, states=dict.fromkeys(ids, b"s"), due=dict.fromkeys(ids, 7), outbox=[], offsets={}
    )
    seen: list[str] = []
    while found := await store.due(2, 10, 500):
        assert len(found) <= 500 and not set(found) & set(seen)
        seen += found
        await store.commit(
            claim,
            states=dict.fromkeys(found, b"s"),
            due=dict.fromkeys(found, 50),
            indexed=found,
            outbox=[],
            offsets={},
        )
    assert sorted(seen) == sorted(ids)
    assert len(await store.due(2, 50, 5_000)) == 1_200


async def test_the_due_index_of_older_releases_is_moved_into_buckets(
    store: Store, client: CountingRedis
) -> None:
    """Library versions before 9 kept a zset of names; the timer's read moves it, earliest
    first and a chunk per call, and drops the names that have no state."""
    claim = await store.claim(6)
    ids = [f"c{i}" for i in range(30)]
    await client.mset({LAYOUT.customer(6, c): b"s" for c in ids})
    await client.zadd(LAYOUT.due(6), {c: 1_000 + i for i, c in enumerate(ids)})
    await client.zadd(LAYOUT.due(6), {"gone": 1_005})
    # ten moved, the earliest: nine customers and "gone", dropped as it has no state
    assert await store.due(6, 1_009, 10) == {c: 1_000 + i for i, c in enumerate(ids[:9])}
    assert await client.zcard(LAYOUT.due(6)) == 21
    assert await store.due(6, 1_009, 10) == {c: 1_000 + i for i, c in enumerate(ids[:10])}
    while await client.exists(LAYOUT.due(6)):
        await store.due(6, 0, 10)
    assert len(await store.due(6, 5_000, 100)) == 30
    await store.commit(
        claim,
        states={"c0": b"t"},
        due={"c0": 9_000},
        indexed={"c0": 1_000},
        outbox=[],
        offsets={},
    )
    assert list(await store.due(6, 1_001, 100)) == ["c1"]


async def test_populations_are_kept_by_commits(store: Store) -> None:
    claim = await store.claim(8)
    deltas = {("lifecycle", "new"): 2, ("value_tier", "low"): 2, ("rfm", "x"): 0}
    await store.commit(claim, states={}, due={}, outbox=[], offsets={}, populations=deltas)
    await store.commit(
        claim,
        states={},
        due={},
        outbox=[],
        offsets={"orders": 1},
        populations={("lifecycle", "new"): -1, ("lifecycle", "active"): 1},
    )
    assert await store.populations(8) == {
        ("lifecycle", "new"): 1,
        ("lifecycle", "active"): 1,
        ("value_tier", "low"): 2,
    }
    assert (await store.claim(8)).offsets == {"orders": 1}  # pop:* fields are not offsets


# Malformed calls straight to the Functions: every one is refused with a clear message and
# writes nothing, although valid states, due entries and records come before the bad part.

META, AT, OUT = LAYOUT.meta(3), LAYOUT.at(3), LAYOUT.outbox(3)
CA, CB = LAYOUT.customer(3, "a"), LAYOUT.customer(3, "b")
SERVER = "0" * 40  # a well-formed run id; these calls are refused before it is compared
XA = LAYOUT.erased(3, hashlib.sha256(b"a").hexdigest())


def commit_call(
    *,
    keys: list[str] | None = None,
    epoch: object = 1,
    server: object = SERVER,
    counts: tuple[object, ...] = (2, 0, 1, 1, 0),
    blobs: tuple[object, ...] = ("A", "B"),
    due: tuple[object, ...] = ("", 5, "", ""),
    out: tuple[object, ...] = ("record",),
    offsets: tuple[object, ...] = ("orders", 9),
    pops: tuple[object, ...] = (),
) -> tuple[object, ...]:
    keys = [META, AT, OUT, CA, CB] if keys is None else keys
    args = (epoch, server, *counts, *blobs, *due, *out, *offsets, *pops)
    return ("segment_worker_commit", len(keys), *keys, *args)


BAD_CALLS: dict[str, tuple[tuple[object, ...], str]] = {
    "epoch not a number": (commit_call(epoch="one"), "epoch must be a non-negative integer"),
    "epoch negative": (commit_call(epoch=-1), "epoch must be a non-negative integer"),
    "epoch fractional": (commit_call(epoch="1.0"), "epoch must be a non-negative integer"),
    "epoch zero": (commit_call(epoch=0), "epoch must be >= 1"),
    "server not a run id": (
        commit_call(server="abc"),
        'server must be the run id the claim returned (40 hex digits), got "abc"',
    ),
    "ack without a server": (
        ("segment_worker_ack", 2, META, OUT, 1, 1, ""),
        "segment_worker_ack: expected 4 arguments",
    ),
    "count with exponent": (
        commit_call(counts=("2e0", 0, 1, 1, 0)),
        "n_set must be a non-negative integer",
    ),
    "count missing": (
        ("segment_worker_commit", 5, META, AT, OUT, CA, CB, 1, SERVER, 2, 0),
        "n_out must be a non-negative integer, got nothing",
    ),
    "too few keys": (commit_call(keys=[META, AT, OUT, CA]), "expected 5 keys, got 4"),
    "too many arguments": (
        commit_call(pops=("lifecycle\x1fnew",)),
        "expected 16 arguments (from the counts given), got 17",
    ),
    "too few arguments": (
        commit_call(offsets=("orders",)),
        "expected 16 arguments (from the counts given), got 15",
    ),
    "due time fractional": (commit_call(due=("", "5.5", "", "")), f'due instant of "{CA}"'),
    "due time negative": (commit_call(due=("", 5, "", -5)), f'due instant of "{CB}"'),
    "due time hex": (commit_call(due=("", "0x10", "", "")), f'due instant of "{CA}"'),
    "due time leading zero": (commit_call(due=("05", 5, "", "")), f'indexed instant of "{CA}"'),
    "due time beyond 2^53": (commit_call(due=("", 2**53, "", "")), "at most 2^53 - 1"),
    "offset not a number": (commit_call(offsets=("orders", "nine")), 'offset of "orders"'),
    "offset with spaces": (commit_call(offsets=("orders", " 9")), 'offset of "orders"'),
    "offset huge": (commit_call(offsets=("orders", "1" * 30)), 'offset of "orders"'),
    "topic empty": (commit_call(offsets=("", 9)), "topic must be a Kafka topic name"),
    "topic with colon": (commit_call(offsets=("a:b", 9)), "topic must be a Kafka topic name"),
    "population delta fractional": (
        commit_call(counts=(2, 0, 1, 1, 1), pops=("lifecycle\x1fnew", "0.5")),
        "population delta",
    ),
    "population field empty": (
        commit_call(counts=(2, 0, 1, 1, 1), pops=("", 1)),
        "population field must not be empty",
    ),
    "meta key of another layout": (
        commit_call(keys=["sw:meta", AT, OUT, CA, CB]),
        "KEYS[1] must be <prefix>:{p<N>}:meta",
    ),
    "braces in the prefix": (
        commit_call(keys=["{x}:{p3}:meta", AT, OUT, CA, CB]),
        "KEYS[1] must be <prefix>:{p<N>}:meta",
    ),
    "due key of another partition": (
        commit_call(keys=[META, LAYOUT.at(4), OUT, CA, CB]),
        'KEYS[2] must be "sw:{p3}:at"',
    ),
    "outbox key wrong": (
        commit_call(keys=[META, AT, "sw:{p3}:out", CA, CB]),
        'KEYS[3] must be "sw:{p3}:outbox"',
    ),
    "state key of another partition": (
        commit_call(keys=[META, AT, OUT, CA, LAYOUT.customer(4, "b")]),
        'KEYS[5] must start with "sw:{p3}:c:"',
    ),
    "state key not a customer": (
        commit_call(keys=[META, AT, OUT, CA, META]),
        'KEYS[5] must start with "sw:{p3}:c:"',
    ),
    "claim with arguments": (
        ("segment_worker_claim", 1, META, "extra"),
        "segment_worker_claim: expected 0 arguments",
    ),
    "claim without key": (("segment_worker_claim", 0), "segment_worker_claim: expected 1 keys"),
    "claim of a bad key": (
        ("segment_worker_claim", 1, AT),
        "segment_worker_claim: KEYS[1] must be",
    ),
    "ack count negative": (
        ("segment_worker_ack", 2, META, OUT, 1, SERVER, -1, ""),
        "segment_worker_ack: count must be a non-negative integer",
    ),
    "ack count missing": (
        ("segment_worker_ack", 2, META, OUT, 1, SERVER, 1),
        "segment_worker_ack: expected 4 arguments",
    ),
    "ack of another list": (
        ("segment_worker_ack", 2, META, AT, 1, SERVER, 1, ""),
        'segment_worker_ack: KEYS[2] must be "sw:{p3}:outbox"',
    ),
    "ack relayed not an offset": (
        ("segment_worker_ack", 2, META, OUT, 1, SERVER, 1, "-5"),
        "segment_worker_ack: relayed must be a non-negative integer",
    ),
    "ack_commit count negative": (
        ("segment_worker_ack_commit", 5, META, AT, OUT, CA, CB, -1, "", *commit_call()[7:]),
        "segment_worker_ack_commit: count must be a non-negative integer",
    ),
    "ack_commit relayed not an offset": (
        ("segment_worker_ack_commit", 5, META, AT, OUT, CA, CB, 1, "x", *commit_call()[7:]),
        "segment_worker_ack_commit: relayed must be a non-negative integer",
    ),
    "ack_commit with a bad commit part": (
        ("segment_worker_ack_commit", 5, META, AT, OUT, CA, CB, 1, "", *commit_call(epoch=0)[7:]),
        "segment_worker_ack_commit: epoch must be >= 1",
    ),
    "erase key of another customer": (
        ("segment_worker_erase", 4, META, AT, CB, XA, 1, SERVER, "a", "", ""),
        'segment_worker_erase: KEYS[3] must be "sw:{p3}:c:a"',
    ),
    "erase key with a line break in the message": (
        (
            "segment_worker_erase",
            4,
            META,
            AT,
            LAYOUT.customer(3, "a\r\nb"),
            XA,
            1,
            SERVER,
            "a",
            "",
            "",
        ),
        'segment_worker_erase: KEYS[3] must be "sw:{p3}:c:a", got "sw:{p3}:c:a',
    ),
    "read with a marker key that names the customer": (
        ("segment_worker_read", 3, META, CA, LAYOUT.erased(3, "a")),
        'segment_worker_read: KEYS[3] must be "sw:{p3}:x:<64 hex digits>"',
    ),
    "erase with a marker key that names the customer": (
        (
            "segment_worker_erase",
            4,
            META,
            AT,
            CA,
            LAYOUT.erased(3, "a"),
            1,
            SERVER,
            "a",
            60_000,
            "",
        ),
        'segment_worker_erase: KEYS[4] must be "sw:{p3}:x:<64 hex digits>"',
    ),
    "forget of another customer's key": (
        ("segment_worker_forget", 2, META, CB, "stored", "a"),
        'segment_worker_forget: KEYS[2] must be "sw:{p3}:c:a"',
    ),
    "read without marker keys": (
        ("segment_worker_read", 2, META, CA),
        "segment_worker_read: expected meta and as many x: keys as c: keys",
    ),
    "read of another partition": (
        ("segment_worker_read", 3, META, LAYOUT.customer(4, "a"), LAYOUT.erased(4, "a")),
        'segment_worker_read: KEYS[2] must be "sw:{p3}:c:<id>"',
    ),
    "erase ttl zero": (
        ("segment_worker_erase", 4, META, AT, CA, XA, 1, SERVER, "a", 0, ""),
        "marker_ttl_ms must be >= 1",
    ),
    "mark_rules with an empty version": (
        ("segment_worker_mark_rules", 1, META, 1, SERVER, ""),
        "segment_worker_mark_rules: rules version must not be empty",
    ),
    "mark_rules of a bad key": (
        ("segment_worker_mark_rules", 1, OUT, 1, SERVER, "v1"),
        "segment_worker_mark_rules: KEYS[1] must be",
    ),
    "mark_rules without an epoch": (
        ("segment_worker_mark_rules", 1, META, SERVER, "v1"),
        "segment_worker_mark_rules: expected 3 arguments",
    ),
    "begin_rules with an empty version": (
        ("segment_worker_begin_rules", 1, META, 1, SERVER, ""),
        "segment_worker_begin_rules: rules version must not be empty",
    ),
    "begin_rules of a bad key": (
        ("segment_worker_begin_rules", 1, OUT, 1, SERVER, "v1"),
        "segment_worker_begin_rules: KEYS[1] must be",
    ),
    "recount with a negative count": (
        ("segment_worker_recount", 1, META, SERVER, 1, "tier", -1),
        'segment_worker_recount: population count of "tier" must be a non-negative integer',
    ),
    "recount with a field and no count": (
        ("segment_worker_recount", 1, META, SERVER, 1, "tier"),
        "segment_worker_recount: expected server, writes and (field, count) pairs",
    ),
    "recount of a bad key": (
        ("segment_worker_recount", 1, OUT, SERVER, 1),
        "segment_worker_recount: KEYS[1] must be",
    ),
    "recount without a run id": (
        ("segment_worker_recount", 1, META, "", 1),
        "segment_worker_recount: server must be the run id",
    ),
}


@pytest.mark.parametrize("name", sorted(BAD_CALLS))
async def test_bad_arguments_are_refused_before_any_write(
    store: Store, client: CountingRedis, name: str
) -> None:
    claim = await store.claim(3)
    assert claim.epoch == 1
    await store.commit(
        claim, states={"old": b"old"}, due={"old": 1}, outbox=[b"old"], offsets={"orders": 1}
    )
    call, message = BAD_CALLS[name]
    good = commit_call(server=claim.server)
    before = await snapshot(client)
    with pytest.raises(ResponseError) as refused:
        await client.fcall(*call)  # type: ignore[arg-type]
    assert message in str(refused.value), str(refused.value)
    assert await snapshot(client) == before
    # The same call well formed goes through.
    await client.fcall(*good)  # type: ignore[arg-type]
    assert (await store.read_checked(3, ["a", "b"])).states == [b"A", b"B"]


@pytest.mark.parametrize("kind", ["due", "outbox", "meta"])
async def test_keys_of_the_wrong_type_are_refused_before_any_write(
    store: Store, client: CountingRedis, kind: str
) -> None:
    claim = await store.claim(3)
    key = {"due": AT, "outbox": OUT, "meta": META}[kind]
    await client.delete(key)
    await client.set(key, "not mine")
    before = await snapshot(client)
    with pytest.raises(ResponseError, match=f"{kind} key .* holds a string"):
        await store.commit(claim, states={"a": b"1"}, due={"a": 1}, outbox=[b"r"], offsets={})
    assert await snapshot(client) == before


async def test_an_erasure_leaves_no_id_in_a_key_name(store: Store, client: CountingRedis) -> None:
    claim = await store.claim(3)
    who = "alice@example.com"
    await store.commit(claim, states={who: b"s"}, due={who: 5}, outbox=[], offsets={})
    assert await store.erase(claim, who, 60_000)
    names = [k.decode() async for k in client.scan_iter()]
    assert names and not [k for k in names if "alice" in k]
    assert store.erased_key(3, who) in names
    assert (await store.read_checked(3, [who, "bob"])).erased == {who}


async def test_forget_deletes_only_the_value_it_was_given(
    store: Store, client: CountingRedis
) -> None:
    claim = await store.claim(3)
    await store.commit(claim, states={"a": b"damaged"}, due={"a": 5}, outbox=[], offsets={})
    assert not await store.forget(3, "a", b"read earlier")
    assert await store.get(3, "a") == b"damaged"
    assert await store.forget(3, "a", b"damaged")
    assert await store.get(3, "a") is None and list(await store.due(3, 10, 10)) == []
    assert await client.keys("*:at*") == []  # its due entry dropped, since it has no state


async def test_store_refuses_a_prefix_with_braces_and_a_decoding_client(redis_url: str) -> None:
    plain = aioredis.from_url(redis_url)
    decoding = aioredis.from_url(redis_url, decode_responses=True)
    try:
        with pytest.raises(ValueError, match="hash tag"):
            Store(plain, "sw{x}")
        with pytest.raises(ValueError, match="decode"):
            Store(decoding)
        assert Store(plain, "other").customer_key(3, "a") == Layout("other").customer(3, "a")
    finally:
        await plain.aclose()
        await decoding.aclose()


async def test_load_library_is_idempotent_and_replaces_other_code(
    store: Store, client: CountingRedis
) -> None:
    assert await client.fcall_ro("segment_worker_version", 0) == b"11"
    client.sent.clear()
    await store.library.load()  # the same code is loaded: nothing written
    assert client.sent == ["FUNCTION LIST"]
    old = "#!lua name=segment_worker\nredis.register_function('segment_worker_old', function() return 1 end)"
    await client.function_load(old, replace=True)
    await store.library.load()
    libraries = await client.function_list("segment_worker", withcode=True)
    assert len(libraries) == 1
    assert dict(zip(libraries[0][::2], libraries[0][1::2], strict=True))[
        b"library_code"
    ].decode() == (library_code())


async def test_committed_data_survives_kill_9_with_aof(aof_store: AofStore) -> None:
    server, client, store = aof_store
    claim = await store.claim(2)
    ids = [f"c{i}" for i in range(500)] + ODD_IDS
    await store.commit(
        claim,
        states={c: c.encode() for c in ids},
        due={c: i for i, c in enumerate(ids)},
        outbox=[b"r1", b"r2", b"r3"],
        offsets={"orders": 500, "visits": 42},
    )
    await store.ack_outbox(claim, 1)
    before = await snapshot(client)

    server.restart()  # kill -9: only what was fsynced survives
    await client.connection_pool.disconnect()
    assert await snapshot(client) == before
    assert (await store.read_checked(2, ids)).states == [c.encode() for c in ids]
    assert await store.outbox(2, 10) == [b"r2", b"r3"]
    # Functions were persisted with the data; loading again is harmless.
    assert await client.fcall_ro("segment_worker_version", 0) == b"11"
    await store.library.load()
    # The epoch survived too, but a claim made before the restart writes nothing: this
    # server cannot know what it lost. A new claim (the next epoch) writes.
    with pytest.raises(ServerChanged):
        await store.commit(claim, states={"c0": b"stale"}, due={}, outbox=[], offsets={})
    fresh = await store.claim(2)
    assert fresh.epoch == claim.epoch + 1
    assert fresh.server != claim.server
    assert fresh.offsets == {"orders": 500, "visits": 42}
    await store.commit(fresh, states={"c0": b"after"}, due={}, outbox=[], offsets={})
    with pytest.raises(ServerChanged):
        await store.commit(claim, states={"c0": b"stale"}, due={}, outbox=[], offsets={})

    server.restart()
    await client.connection_pool.disconnect()
    await store.library.load()
    assert await store.get(2, "c0") == b"after"
    assert (await store.claim(2)).epoch == fresh.epoch + 1


async def test_an_epoch_handed_out_again_after_a_rollback_does_not_admit_the_old_claim(
    aof_store: AofStore,
) -> None:
    """A Redis restored from an older copy gives out an epoch it gave out before: the stale
    claim of that number (made on the old server) must not write, nor trim, nor mark."""
    server, client, store = aof_store
    first = await store.claim(4)
    await store.commit(first, states={"a": b"1"}, due={}, outbox=[b"r1"], offsets={"v": 10})
    server.copy_aof()
    stale = await store.claim(4)  # epoch 2, lost with the rollback below
    await store.commit(stale, states={"a": b"2"}, due={}, outbox=[], offsets={"v": 20})
    server.roll_back()
    await client.connection_pool.disconnect()
    new = await store.claim(4)
    assert (new.epoch, new.offsets) == (stale.epoch, {"v": 10})  # the same number again
    before = await snapshot(client)
    with pytest.raises(ServerChanged) as refused:
        await store.commit(stale, states={"a": b"x"}, due={}, outbox=[b"x"], offsets={"v": 30})
    assert (refused.value.partition, refused.value.current) == (4, new.server)
    with pytest.raises(ServerChanged):
        await store.ack_outbox(stale, 1, relayed=99)
    with pytest.raises(ServerChanged):
        await store.erase(stale, "a", 60_000)
    with pytest.raises(ServerChanged):
        await store.mark_rules(stale, "v2")
    with pytest.raises(ServerChanged):
        await store.begin_rules(stale, "v2")
    assert await snapshot(client) == before
    await store.commit(new, states={"a": b"3"}, due={}, outbox=[], offsets={"v": 11})
    assert await store.get(4, "a") == b"3"
