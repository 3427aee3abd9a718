"""The state codec's CPU and Redis memory per customer, old commit against new (issue 16).

    python bench/codec.py --states /tmp/states.pkl [--customers 100000] [--seed 1]
    PYTHONPATH=/tmp/old python bench/codec.py --states /tmp/states.pkl

Builds the `segment-worker bench live` memory population (replay of simulated traffic until
``--customers`` customers have a state) the first time and pickles it to ``--states``; later
runs load it, so that two commits (the second line: an old commit unpacked with ``git
archive``) encode the very same states. Prints encode and decode CPU per state (best of
``--rounds``, garbage collector off, as `bench live` does), the blob sizes, and Redis bytes
per customer with the states and due index loaded through ``Store.commit`` into a fresh
redis-server, as `bench live` does. Every state must decode back to itself. The pickle
holds pure-Python states: a compiled core (mypyc) needs one of its own.

``--breakdown`` loads two more Redis servers to split that figure: the states without their
due index entries, and 1-byte states without them (what a state key costs before its value).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import pickle
import statistics
import time
from pathlib import Path

import worker
from worker.core.codec import decode_state, encode_state
from worker.core.events import ParseLimits
from worker.core.rules import load_rules
from worker.core.state import CustomerState
from worker.core.timeutil import parse_rfc3339
from worker.replay import Replayer
from worker.tools.livebench import redis_bytes
from worker.tools.simulate import Simulator

RULES = load_rules(None)
START = parse_rfc3339("2025-01-01T00:00:00Z")  # `bench live`'s default shop opening


def population(customers: int, seed: int) -> list[CustomerState]:
    replayer = Replayer(
        RULES, lambda _: None, lambda *_: None, limits=ParseLimits(), future_reference_ms=2**62
    )
    for n, e in enumerate(Simulator(seed, customers, START), start=1):
        replayer.feed(e.jsonl(), n)
        if n % 8192 == 0 and len(replayer.states) >= customers:
            break
    return list(replayer.states.values())


def cpu(states: list[CustomerState], rounds: int) -> tuple[float, float, list[bytes]]:
    """Best encode and decode seconds per state over ``rounds``, and the blobs."""
    best_encode = best_decode = float("inf")
    blobs: list[bytes] = []
    gc.disable()
    try:
        for _ in range(rounds):
            started = time.process_time()
            blobs = [encode_state(s) for s in states]
            encoded = time.process_time()
            for state, blob in zip(states, blobs, strict=True):
                decode_state(state.customer_id, blob)
            decoded = time.process_time()
            best_encode = min(best_encode, encoded - started)
            best_decode = min(best_decode, decoded - encoded)
    finally:
        gc.enable()
    for state, blob in zip(states, blobs, strict=True):
        back = decode_state(state.customer_id, blob)
        if back != state or encode_state(back) != blob:
            raise SystemExit(f"{state.customer_id}: the state does not survive its round trip")
    return best_encode / len(states), best_decode / len(states), blobs


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--states", type=Path, required=True, help="pickle of the population")
    parser.add_argument("--customers", type=int, default=100_000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--breakdown", action="store_true", help="split the Redis figure")
    args = parser.parse_args()
    if args.states.exists():
        states = pickle.loads(args.states.read_bytes())  # our own file
    else:
        states = population(args.customers, args.seed)
        for state in states:
            state._index = None  # derived, rebuilt on use
        args.states.write_bytes(pickle.dumps(states))
    encode, decode, blobs = cpu(states, args.rounds)
    sizes = [len(b) for b in blobs]
    due = {
        s.customer_id: None if s.due_day is None else RULES.calendar.start_ms(s.due_day)
        for s in states
    }
    per_customer = asyncio.run(redis_bytes(dict(zip(due, blobs, strict=True)), due))
    print(
        f"{worker.__file__}: {len(states):,} states; encode {encode * 1e6:.2f} us, decode "
        f"{decode * 1e6:.2f} us per state; blob mean {statistics.mean(sizes):,.0f} B, p99 "
        f"{statistics.quantiles(sizes, n=100)[98]:,.0f} B; Redis {per_customer:,.0f} B per customer"
    )
    if args.breakdown:
        no_due = dict.fromkeys(due)
        states_only = asyncio.run(redis_bytes(dict(zip(due, blobs, strict=True)), no_due))
        keys_only = asyncio.run(redis_bytes(dict.fromkeys(due, b"\x01"), no_due))
        print(
            f"  of which: state key without its value {keys_only:,.0f} B, value "
            f"{states_only - keys_only:,.0f} B, due index entry {per_customer - states_only:,.0f} B"
        )


if __name__ == "__main__":
    main()
