"""CPU per event of the live worker's pure path, stage by stage, with no broker or Redis.

    python bench/live_path.py [--events 200000] [--customers 20000] [--batch 1000]
    PYTHONPATH=/tmp/old python bench/live_path.py      # an old commit, same traffic

What `segment-worker bench live` cannot separate: of the CPU it measures per event, how much
is the worker's own Python between the broker and Redis. Simulated traffic (feed faults
included) is cut into partition batches as the consumer hands them over, and each batch runs
the very calls the pipeline makes: ``parse_batch``; ``decode_state`` of the customers Redis
would return; ``apply_batch`` (apply, classify, due day, change and classes records); and
``encode_state``, the outbox frames, the due instants and the population deltas that the
commit sends. States are kept as encoded bytes between batches, as Redis keeps them. Each
stage is timed on its own (process CPU, garbage collector on, as in the worker), beside
``orjson.loads`` of every value as the floor any Python consumer pays. ``--profile`` prints
cProfile's top functions instead.
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import pstats
import time
from collections import defaultdict
from itertools import islice

import orjson

from worker.core.batch import InRecord, Topics, apply_batch, customers_of, parse_batch
from worker.core.codec import decode_state, encode_state
from worker.core.events import ParseLimits
from worker.core.partitioner import partition_of
from worker.core.rules import load_rules
from worker.core.timeutil import parse_rfc3339
from worker.tools.simulate import FeedFaults, Simulator

START = parse_rfc3339("2025-01-01T00:00:00Z")  # `bench live`'s default shop opening
STAGES = ("parse", "decode", "apply", "encode")


def batches(
    events: int, customers: int, seed: int, partitions: int, size: int
) -> list[tuple[int, list[InRecord]]]:
    """(now_ms, records) per partition batch: a partition's records in delivery order, cut
    whenever ``size`` have gathered, stamped with the delivery instant of the last one."""
    simulator = Simulator(seed, customers, START, faults=FeedFaults.realistic())
    pending: dict[int, list[InRecord]] = defaultdict(list)
    offsets: dict[int, int] = defaultdict(int)
    out = []
    for sim in islice(simulator, events):
        partition = partition_of(sim.key.decode(), partitions)
        offsets[partition] += 1
        records = pending[partition]
        records.append(InRecord(sim.topic, partition, offsets[partition], sim.key, sim.value))
        if len(records) == size:
            out.append((sim.delivered_ms, records))
            pending[partition] = []
    last = out[-1][0] if out else START
    out += [(last, records) for records in pending.values() if records]
    return out


def run(work: list[tuple[int, list[InRecord]]], partitions: int) -> dict[str, float]:
    """CPU seconds per stage over every batch."""
    rules, topics, limits = load_rules(None), Topics(), ParseLimits()
    redis: dict[str, bytes] = {}
    spent = dict.fromkeys(STAGES, 0.0)
    clock = time.process_time
    for now_ms, records in work:
        t0 = clock()
        parsed = parse_batch(records, topics, now_ms, limits, partitions)
        t1 = clock()
        states = {}
        for customer_id in customers_of(parsed):
            blob = redis.get(customer_id)
            states[customer_id] = None if blob is None else decode_state(customer_id, blob)
        t2 = clock()
        outcome = apply_batch(records, parsed, states, rules=rules, topics=topics, now_ms=now_ms)
        t3 = clock()
        for customer_id, state in outcome.states.items():
            redis[customer_id] = encode_state(state)
        [record.encode() for record in outcome.out]
        outcome.due_ms(rules.calendar)
        outcome.population_deltas()
        t4 = clock()
        for stage, took in zip(STAGES, (t1 - t0, t2 - t1, t3 - t2, t4 - t3), strict=True):
            spent[stage] += took
    return spent


def floor(work: list[tuple[int, list[InRecord]]]) -> float:
    """CPU seconds to ``orjson.loads`` every value (malformed ones raise and are skipped)."""
    started = time.process_time()
    for _, records in work:
        for record in records:
            try:  # noqa: SIM105 (contextlib.suppress would add its own cost to the floor)
                orjson.loads(record.value or b"")
            except orjson.JSONDecodeError:
                pass
    return time.process_time() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--customers", type=int, default=20_000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--partitions", type=int, default=12, help="input partitions")
    parser.add_argument("--batch", type=int, default=1000, help="records per partition batch")
    parser.add_argument("--profile", action="store_true", help="cProfile's top 40 instead")
    args = parser.parse_args()
    work = batches(args.events, args.customers, args.seed, args.partitions, args.batch)
    gc.freeze()  # the traffic held here is no worker's heap: keep it out of every collection
    count = sum(len(records) for _, records in work)
    if args.profile:
        profile = cProfile.Profile()
        profile.runcall(run, work, args.partitions)
        pstats.Stats(profile).sort_stats("tottime").print_stats(40)
        return
    base = floor(work)
    spent = run(work, args.partitions)
    total = sum(spent.values())
    print(f"{count:,} events in {len(work):,} partition batches")
    print(f"{'stage':<28} {'us/event':>9}")
    print(f"{'orjson.loads (the floor)':<28} {base / count * 1e6:>9.2f}")
    for stage in STAGES:
        print(f"{stage:<28} {spent[stage] / count * 1e6:>9.2f}")
    print(f"{'pure path, total':<28} {total / count * 1e6:>9.2f}")


if __name__ == "__main__":
    main()
