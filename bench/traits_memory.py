"""Redis memory per customer with and without five traits (issue 15: customer traits).

    python bench/traits_memory.py [--customers 100000] [--seed 7]

Replays simulated traffic until ``--customers`` customers have a state (as `segment-worker
bench live` does for its memory figure), then stores every state twice in a redis-server of
its own, under the worker's key names: as replay left it, and with five traits stated by one
profile (gender, birth year, CRM level, city, marketing consent). Prints the state blob's mean
size and Redis's own figure per key (MEMORY USAGE, averaged over every key) for each, and the
difference. The due index and the partition's meta hash do not change with traits, so they
are left out.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
from dataclasses import replace
from itertools import islice

import redis.asyncio as aioredis

from worker.core.codec import encode_state
from worker.core.events import ParseLimits, Profile
from worker.core.partitioner import partition_of
from worker.core.rules import load_rules
from worker.core.state import CustomerState
from worker.core.timeutil import parse_rfc3339
from worker.keys import Layout
from worker.replay import Replayer
from worker.tools.embedded import RedisServer
from worker.tools.simulate import Simulator

PARTITIONS = 12
START = parse_rfc3339("2026-01-01T00:00:00Z")
RULES = load_rules(None)


def states(customers: int, seed: int) -> dict[str, CustomerState]:
    replayer = Replayer(
        RULES, lambda _: None, lambda *_: None, limits=ParseLimits(), future_reference_ms=2**62
    )
    for n, e in enumerate(islice(Simulator(seed, customers, START), 50 * customers), start=1):
        replayer.feed(e.jsonl(), n)
        if n % 8192 == 0 and len(replayer.states) >= customers:
            break
    return replayer.states


def with_traits(state: CustomerState, rng: random.Random) -> CustomerState:
    """The state after one profile stating five traits, a week after its latest order."""
    at = max((r.ms for r in state.orders.values()), default=START) + 7 * 86_400_000
    traits = (
        ("birth_year", rng.randrange(1950, 2008)),
        ("city", rng.choice(["Beijing", "Shanghai", "Shenzhen", "Hangzhou", "Chengdu"])),
        ("crm_level", rng.choice(["bronze", "silver", "gold", "platinum"])),
        ("gender", rng.choice(["F", "M"])),
        ("marketing_consent", rng.random() < 0.8),
    )
    out = replace(state, traits={})
    out.apply(Profile("p", state.customer_id, at, traits), RULES.activity)
    return out


async def measure(blobs: dict[str, bytes]) -> tuple[float, float]:
    """(mean blob bytes, mean MEMORY USAGE bytes per state key)."""
    layout = Layout("sw")
    with RedisServer() as server:
        client = aioredis.from_url(server.url)
        try:
            keys = [layout.customer(partition_of(c, PARTITIONS), c) for c in blobs]
            async with client.pipeline(transaction=False) as pipe:
                for key, blob in zip(keys, blobs.values(), strict=True):
                    pipe.set(key, blob)
                await pipe.execute()
            async with client.pipeline(transaction=False) as pipe:
                for key in keys:
                    pipe.memory_usage(key, samples=0)
                usage = await pipe.execute()
        finally:
            await client.aclose()
    return statistics.mean(map(len, blobs.values())), statistics.mean(usage)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--customers", type=int, default=100_000)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    base = states(args.customers, args.seed)
    rng = random.Random(args.seed)
    plain = {cid: encode_state(s) for cid, s in base.items()}
    traited = {cid: encode_state(with_traits(s, rng)) for cid, s in base.items()}
    blob0, key0 = asyncio.run(measure(plain))
    blob5, key5 = asyncio.run(measure(traited))
    print(f"{len(base):,} customers (replayed simulated traffic)")
    print(f"no traits:     state blob {blob0:,.0f} B, Redis {key0:,.0f} B per key")
    print(f"five traits:   state blob {blob5:,.0f} B, Redis {key5:,.0f} B per key")
    print(
        f"traits cost:   {blob5 - blob0:,.0f} B of blob, {key5 - key0:,.0f} B of Redis per customer"
    )


if __name__ == "__main__":
    main()
