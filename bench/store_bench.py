"""Throughput of the Redis adapter's commit against plain pipelined writes on the same server.

    python bench/store_bench.py [--url redis://...] [--customers 1000] [--blob 200]
                                [--days 180] [--batches 8] [--seconds 3] [--concurrency 1]

Without --url it starts its own redis-server (no persistence) on a free port. Every variant
writes the same number of customers per call with blobs of the same size, ``--batches``
batches of distinct customers in turn, each customer due at the start of one of ``--days`` days and
moved to another day by each write, as a live partition's customers are:

- ``Store.commit``: one FCALL that checks the epoch, sets the states, moves the customers in
  the due index and moves two input offsets, atomically;
- pipelined MSET: the states only, in one round trip (the floor for moving these bytes);
- pipelined MSET+HSET: the states and the due buckets' new names, neither atomic nor fenced.

Beside the client's view (calls/s, latency) it prints what each call cost the Redis server
(INFO commandstats), the figure that says how many events/s one Redis core carries.

With --concurrency N, N tasks (one partition and connection each) write at once.

A last variant runs ``Store.commit`` over a connection that packs commands with hiredis (C):
redis-py's asyncio client packs them in pure Python, about 2 us per argument, which is most of
a 1,000-customer commit's time on the client.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import socket
import statistics
import subprocess
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager

import hiredis
import redis.asyncio as aioredis
from redis.asyncio.connection import Connection

from worker.core.timeutil import DAY_MS
from worker.store import Store

Writer = Callable[[int, int], Awaitable[None]]  # (partition, round) -> one call
PREFIX = "swbench"  # its keys are deleted at the end


class HiredisPackConnection(Connection):
    """Packs commands with hiredis instead of redis-py's pure-Python asyncio packer."""

    def pack_command(self, *args: object) -> list[bytes]:  # type: ignore[override]
        if isinstance(args[0], str) and " " in args[0]:  # "FUNCTION LOAD" -> two words
            args = (*args[0].split(), *args[1:])
        return [hiredis.pack_command(args)]


@contextmanager
def redis_server() -> Iterator[str]:
    """A throwaway redis-server on a free port; yields its URL."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    directory = tempfile.mkdtemp(prefix="sw-bench-")
    command = ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--dir", directory]
    command += ["--save", "", "--appendonly", "no"]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.5) as sock:
                    sock.sendall(b"PING\r\n")
                    if sock.recv(16).startswith(b"+PONG"):
                        break
            except OSError:
                time.sleep(0.02)
        else:
            raise RuntimeError("redis-server did not start")
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        process.kill()
        process.wait()
        shutil.rmtree(directory, ignore_errors=True)


async def measure(
    client: aioredis.Redis, name: str, write: Writer, *, seconds: float, concurrency: int, n: int
) -> None:
    latencies: list[float] = []

    async def run(partition: int, deadline: float) -> None:
        round_ = 0
        while time.perf_counter() < deadline:
            started = time.perf_counter()
            await write(partition, round_)
            latencies.append(time.perf_counter() - started)
            round_ += 1

    warmup = time.perf_counter() + min(0.5, seconds / 4)
    await asyncio.gather(*(run(p, warmup) for p in range(concurrency)))
    latencies.clear()
    await client.config_resetstat()
    started = time.perf_counter()
    await asyncio.gather(*(run(p, started + seconds) for p in range(concurrency)))
    elapsed = time.perf_counter() - started
    calls = len(latencies)
    ms = sorted(x * 1000 for x in latencies)
    p99 = ms[min(len(ms) - 1, int(len(ms) * 0.99))]
    stats = await client.info("commandstats")
    server_us = sum(s["usec"] for k, s in stats.items() if k != "cmdstat_config") / max(calls, 1)
    print(
        f"{name:<44} {calls / elapsed:>9,.0f} calls/s {calls * n / elapsed:>12,.0f} customers/s"
        f"   p50 {statistics.median(ms):6.2f} ms   p99 {p99:6.2f} ms"
        f"   Redis {server_us / n:5.2f} us/customer"
    )


async def bench(
    url: str,
    *,
    customers: int,
    blob_size: int,
    days: int,
    batches: int,
    seconds: float,
    concurrency: int,
) -> None:
    client = aioredis.from_url(url, max_connections=concurrency + 2)
    packed = aioredis.Redis(
        connection_pool=aioredis.ConnectionPool.from_url(
            url, max_connections=concurrency + 2, connection_class=HiredisPackConnection
        )
    )
    store, packed_store = Store(client, PREFIX), Store(packed, PREFIX)
    await store.library.load()
    claims = {p: await store.claim(p) for p in range(concurrency)}
    ids = [[f"customer-{b}-{i:06d}" for i in range(customers)] for b in range(batches)]
    blob = os.urandom(blob_size)
    today = 1_760_000_000_000 // DAY_MS * DAY_MS

    def due(round_: int) -> dict[str, int]:
        """Round ``round_``'s due instants: day starts, each customer on another day."""
        batch = ids[round_ % batches]
        return {c: today + DAY_MS * ((7 * i + round_) % days) for i, c in enumerate(batch)}

    def committer(store: Store) -> Writer:
        async def commit(partition: int, round_: int) -> None:
            batch = ids[round_ % batches]
            await store.commit(
                claims[partition],
                states=dict.fromkeys(batch, blob),
                due=due(round_),
                indexed=due(round_ - batches) if round_ >= batches else {},
                outbox=[],
                offsets={"orders": round_ * customers, "visits": round_ * customers},
            )

        return commit

    async def mset(partition: int, round_: int) -> None:
        batch = ids[round_ % batches]
        pipe = client.pipeline(transaction=False)
        pipe.mset({store.customer_key(partition, c): blob for c in batch})
        await pipe.execute()

    async def mset_hset(partition: int, round_: int) -> None:
        batch = ids[round_ % batches]
        pipe = client.pipeline(transaction=False)
        pipe.mset({store.customer_key(partition, c): blob for c in batch})
        buckets: dict[int, dict[str, str]] = {}
        for c, at in due(round_).items():
            buckets.setdefault(at, {})[store.names.name(c)] = ""
        for at, names in buckets.items():
            pipe.hset(store.keys.bucket(partition, at), mapping=names)
        pipe.hset(
            store.keys.meta(partition),
            mapping={"off:orders": round_ * customers, "off:visits": round_ * customers},
        )
        await pipe.execute()

    info = await client.info("server")
    print(
        f"redis-server {info['redis_version']} at {url}: {customers:,} customers x "
        f"{blob_size} B per call, due over {days} days, {concurrency} concurrent writer(s), "
        f"{seconds:g} s each"
    )
    variants: list[tuple[str, Writer]] = [
        ("Store.commit (1 FCALL, fenced, atomic)", committer(store)),
        ("pipelined MSET (states only)", mset),
        ("pipelined MSET+HSET (not atomic/fenced)", mset_hset),
        ("Store.commit, hiredis-packed connection", committer(packed_store)),
    ]
    try:
        for name, write in variants:
            await measure(
                client, name, write, seconds=seconds, concurrency=concurrency, n=customers
            )
    finally:
        async for key in client.scan_iter(match=f"{PREFIX}:*", count=1000):
            await client.delete(key)
        await packed.aclose()
        await client.aclose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--url", help="a scratch Redis (the segment_worker library is (re)loaded there)"
    )
    parser.add_argument("--customers", type=int, default=1000)
    parser.add_argument("--blob", type=int, default=200, help="state size in bytes")
    parser.add_argument("--days", type=int, default=180, help="day starts the customers are due at")
    parser.add_argument(
        "--batches", type=int, default=8, help="batches of distinct customers written in turn"
    )
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--concurrency", type=int, default=1)
    args = parser.parse_args()
    run = {
        "customers": args.customers,
        "blob_size": args.blob,
        "days": args.days,
        "batches": args.batches,
        "seconds": args.seconds,
        "concurrency": args.concurrency,
    }
    if args.url:
        asyncio.run(bench(args.url, **run))
    else:
        with redis_server() as url:
            asyncio.run(bench(url, **run))


if __name__ == "__main__":
    main()
