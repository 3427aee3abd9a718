"""`segment-worker redis recount` against a real redis-server: states written through the
store's commits with population counts that are wrong (as a release that dropped decrements
left them), rebuilt from the states; a partition written while it is counted is left alone."""

from __future__ import annotations

import asyncio
import contextlib
import io
import os
import subprocess
import sys
from collections import Counter
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis

from worker.core.codec import decode_state, encode_state
from worker.core.state import CustomerState
from worker.progress import Progress
from worker.redis.recount import recount
from worker.store import Store

pytestmark = pytest.mark.integration
PREFIX = "shop"
PSEUDONYM_KEY = "k" * 32
# Per partition: customer -> classes (emitted); None: a class-less dimension.
CLASSES: dict[int, dict[str, dict[str, str | None]]] = {
    0: {
        "a": {"lifecycle": "active", "value_tier": "high"},
        "b": {"lifecycle": "active", "value_tier": None},
        "c": {},
    },
    3: {
        "d": {"lifecycle": "churned", "value_tier": "low"},
        "e{x}": {"lifecycle": "active", "value_tier": "low"},
    },
}
# What a release that dropped decrements left: every class ever entered, never left.
STORED = {
    0: {("lifecycle", "new"): 3, ("lifecycle", "active"): 2, ("value_tier", "high"): 2},
    3: {("lifecycle", "new"): 2, ("lifecycle", "churned"): 1, ("lifecycle", "active"): 4},
}


@pytest.fixture
async def store(redis_url: str) -> AsyncIterator[Store]:
    client = aioredis.from_url(redis_url)
    store = Store(client, PREFIX, pseudonym_key=PSEUDONYM_KEY.encode())
    await store.library.load()
    yield store
    await client.aclose()


async def write(store: Store) -> None:
    """The states of CLASSES (e's consent withholds a move to high: it still counts in low),
    a customer deleted since (its classes still counted), and one damaged state."""
    for partition, customers in CLASSES.items():
        claim = await store.claim(partition)
        states: dict[str, bytes | None] = {}
        for cid, classes in customers.items():
            withheld: dict[str, str | None] = {"value_tier": "high"} if cid == "e{x}" else {}
            states[cid] = encode_state(CustomerState(cid, classes=classes, withheld=withheld))
        due: dict[str, int | None] = {}
        args = {"due": due, "outbox": [], "offsets": {}}
        await store.commit(claim, states=states, populations=STORED[partition], **args)
        await store.commit(claim, states={"gone": b"x", "broken": b"\xc1not a state"}, **args)
        await store.commit(claim, states={"gone": None}, **args)


def true_counts(partition: int) -> dict[bytes, bytes]:
    """The pop: fields the partition's states call for, counted here from CLASSES."""
    counts = Counter(
        (dim, cls)
        for classes in CLASSES[partition].values()
        for dim, cls in classes.items()
        if cls is not None
    )
    return {f"pop:{d}\x1f{c}".encode(): str(n).encode() for (d, c), n in counts.items()}


async def pop_fields(store: Store, partition: int) -> dict[bytes, bytes]:
    fields = await store.client.hgetall(store.keys.meta(partition))
    return {k: v for k, v in fields.items() if k.startswith(b"pop:")}


def recount_command(url: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SEGMENT_WORKER_")}
    env |= {"SEGMENT_WORKER_REDIS_PREFIX": PREFIX, "SEGMENT_WORKER_PSEUDONYM_KEY": PSEUDONYM_KEY}
    return subprocess.run(
        [sys.executable, "-m", "worker", "redis", "recount", "--redis-url", url],
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )


async def test_recount_rewrites_each_partitions_counts_to_those_of_its_states(
    store: Store, redis_url: str
) -> None:
    await write(store)
    assert await pop_fields(store, 3) != true_counts(3)
    done = recount_command(redis_url)
    assert done.returncode == 0, done.stderr
    for partition in CLASSES:
        assert await pop_fields(store, partition) == true_counts(partition)
    assert done.stdout.splitlines() == [
        "lifecycle: 12 -> 4 customers in a class",
        "value_tier: 2 -> 3 customers in a class",
        "2 partition(s) rewritten from 5 customers' states",
    ]
    assert "cannot read the state of 'broken'" in done.stderr
    assert "2 state(s) not counted: unreadable" in done.stderr
    # Commits go on from the true counts.
    claim = await store.claim(0)
    await store.commit(
        claim, states={}, due={}, outbox=[], offsets={}, populations={("lifecycle", "active"): -1}
    )
    assert (await store.populations(0))[("lifecycle", "active")] == 1


async def test_a_partition_written_while_it_is_counted_is_left_as_it_was(
    store: Store,
) -> None:
    await write(store)
    seen = await store.counts(0)
    claim = await store.claim(0)  # a worker takes it and commits: its delta is not counted
    await store.commit(claim, states={}, due={}, outbox=[], offsets={}, populations={})
    before = await pop_fields(store, 0)
    assert not await store.rewrite_populations(0, seen, {("lifecycle", "active"): 2})
    assert await pop_fields(store, 0) == before
    # An erasure counts as a write too; read again, the rewrite goes through.
    seen = await store.counts(0)
    await store.erase(claim, "b", 1_000, None)
    assert not await store.rewrite_populations(0, seen, {("lifecycle", "active"): 1})
    seen = await store.counts(0)
    assert await store.rewrite_populations(0, seen, {("lifecycle", "active"): 1})
    assert await pop_fields(store, 0) == {b"pop:lifecycle\x1factive": b"1"}


async def test_a_recount_read_from_another_server_process_writes_nothing(
    store: Store,
) -> None:
    await write(store)
    seen = (await store.counts(3))._replace(server="0" * 40)
    before = await pop_fields(store, 3)
    assert not await store.rewrite_populations(3, seen, {})
    assert await pop_fields(store, 3) == before


async def test_a_worker_committing_throughout_keeps_its_partition_out_until_it_stops(
    store: Store,
) -> None:
    await write(store)
    claim = await store.claim(0)
    moves = 0

    async def worker() -> None:
        """Moves "c" between two classes, with the right deltas, as a live worker would."""
        nonlocal moves
        while True:
            old, new = ("new", "active") if moves % 2 == 0 else ("active", "new")
            state = encode_state(CustomerState("c", classes={"lifecycle": new}))
            deltas = {("lifecycle", old): -1 if moves else 0, ("lifecycle", new): 1}
            await store.commit(
                claim, states={"c": state}, due={}, outbox=[], offsets={}, populations=deltas
            )
            moves += 1

    quiet = Progress(None, "recount", stream=io.StringIO())
    running = asyncio.create_task(worker())
    try:
        report = await recount(store, quiet)
    finally:
        running.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await running
    assert moves > 1
    assert report.changed == [0]  # written while counted: left alone
    assert list(report.after) == [3]
    assert await pop_fields(store, 3) == true_counts(3)
    assert await pop_fields(store, 0) != true_counts(0)
    # Quiet now: the next recount takes it, and "c" counts in the class it was left in.
    report = await recount(store, quiet)
    assert report.changed == []
    stored = await store.get(0, "c")  # the last commit may have landed as it was cancelled
    assert stored is not None
    c_in = decode_state("c", stored).classes["lifecycle"]
    want = Counter({k.decode(): int(v) for k, v in true_counts(0).items()})
    want[f"pop:lifecycle\x1f{c_in}"] += 1
    assert await pop_fields(store, 0) == {k.encode(): str(n).encode() for k, n in want.items()}
