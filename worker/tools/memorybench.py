"""Redis bytes per customer for `bench live` (and bench/codec.py): the states a replay of
simulated traffic builds, stored in a fresh Redis as the worker stores them."""

from __future__ import annotations

import gc
import statistics
import time

import redis.asyncio as aioredis

from worker.core.codec import decode_state, encode_state
from worker.core.events import ParseLimits
from worker.core.rules import Rules
from worker.kafka import partition_of
from worker.progress import Progress
from worker.replay import Replayer
from worker.store import Store
from worker.tools.embedded import RedisServer
from worker.tools.livesetup import PARTITIONS, Plan
from worker.tools.simulate import Simulator


async def memory(plan: Plan, rules: Rules) -> None:
    """Redis bytes per customer: the states and due index the worker writes, for the states
    a replay of simulated traffic builds for ``customers`` customers."""
    customers = plan.memory_customers
    replayer = Replayer(
        rules, lambda _: None, lambda *_: None, limits=ParseLimits(), future_reference_ms=2**62
    )
    # Until every simulated customer has a state (they sign up over half a year), so that
    # the figure is at ``customers`` customers, as the goal is stated.
    progress = Progress(customers, "memory: customers")
    for n, e in enumerate(Simulator(plan.seed, customers, plan.start_ms), start=1):
        replayer.feed(e.jsonl(), n)
        if n % 8192 == 0:
            progress.update(len(replayer.states), n)
            if len(replayer.states) >= customers:
                break
    progress.close()
    # What the state's size costs the worker's CPU: one encode and one decode per customer
    # an input batch touches. Without collections over the heap of 100k states that only
    # this bench holds. The blobs timed here are the ones loaded into Redis below.
    gc.disable()
    try:
        started = time.process_time()
        blobs = {cid: encode_state(state) for cid, state in replayer.states.items()}
        encoded = time.process_time()
        for cid, blob in blobs.items():
            decode_state(cid, blob)
        decoded = time.process_time()
    finally:
        gc.enable()
    due = {
        cid: None if state.due_day is None else rules.calendar.start_ms(state.due_day)
        for cid, state in replayer.states.items()
    }
    per_customer = await redis_bytes(blobs, due)
    n = len(replayer.states)
    sizes = [len(blob) for blob in blobs.values()]
    print(
        f"Redis memory: {per_customer:,.0f} bytes per customer at {n:,} customers "
        f"(state blob mean {statistics.mean(sizes):,.0f} B, p99 "
        f"{statistics.quantiles(sizes, n=100)[98]:,.0f} B; due index and key overhead included); "
        f"CPU per state: encode {(encoded - started) / n * 1e6:.1f} us, "
        f"decode {(decoded - encoded) / n * 1e6:.1f} us"
    )


async def redis_bytes(blobs: dict[str, bytes], due_ms: dict[str, int | None]) -> float:
    """Redis used_memory growth per customer, states and due index stored in a fresh Redis as
    the worker stores them (fenced commits of up to 1,000 customers of a partition)."""
    batch: dict[int, list[str]] = {}
    for cid in blobs:
        batch.setdefault(partition_of(cid, PARTITIONS), []).append(cid)
    with RedisServer() as server:
        client = aioredis.from_url(server.url)
        try:
            store = Store(client)
            await store.library.load()
            before = int((await client.info("memory"))["used_memory"])
            for partition, ids in batch.items():
                claim = await store.claim(partition)
                for i in range(0, len(ids), 1000):
                    chunk = ids[i : i + 1000]
                    await store.commit(
                        claim,
                        states={c: blobs[c] for c in chunk},
                        due={c: due_ms[c] for c in chunk},
                        outbox=[],
                        offsets={},
                    )
            after = int((await client.info("memory"))["used_memory"])
        finally:
            await client.aclose()
    return (after - before) / len(blobs)
