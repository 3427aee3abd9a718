"""The state codec's CPU and Redis memory per customer, old commit against new (issue 16).

    python bench/codec.py --states /tmp/states.pkl [--customers 100000] [--seed 1]
    PYTHONPATH=/tmp/old python bench/codec.py --states /tmp/states.pkl

Builds the `segment-worker bench live` memory population (replay of simulated traffic until
``--customers`` customers have a state) the first time and pickles it to ``--states`` as
(customer id, format 7 state) pairs; later runs load it, so that two commits (the second
line: an old commit unpacked with ``git archive``, format 7 and on) see the very same states.
Prints, per state, best of ``--rounds`` with the garbage collector off, as `bench live` does:

- encode: a state whose every part is built (as after an order event);
- decode: the stored bytes into a state;
- read+write: what the worker pays for a state that a visit or a timer touches: decode,
  count its orders (the index classification reads), encode;

then the blob sizes, and Redis bytes per customer with the states and due index loaded
through ``Store.commit`` into a fresh redis-server, as `bench live` does. Every state must
decode back to itself and encode back to its bytes, built or as decoded.

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
from collections.abc import Callable
from pathlib import Path

import worker
from worker.core.codec import decode_state, encode_state
from worker.core.events import ParseLimits
from worker.core.rules import load_rules
from worker.core.state import CustomerState
from worker.core.timeutil import parse_rfc3339
from worker.replay import Replayer
from worker.tools.memorybench import redis_bytes
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


def built(stored: list[tuple[str, bytes]]) -> list[CustomerState]:
    """The states with every part built, as the core leaves them after an order event."""
    states = [decode_state(cid, blob) for cid, blob in stored]
    for state in states:
        assert state.orders is not None  # builds the order records where they are lazy
    return states


def best(rounds: int, run: Callable[[], object]) -> float:
    """The least process CPU seconds of ``rounds`` calls, the garbage collector off."""
    least = float("inf")
    gc.disable()
    try:
        for _ in range(rounds):
            started = time.process_time()
            run()
            least = min(least, time.process_time() - started)
    finally:
        gc.enable()
    return least


def cpu(stored: list[tuple[str, bytes]], rounds: int) -> tuple[float, float, float]:
    """Encode, decode and read+write (see the module) seconds per state."""
    states = built(stored)
    counting, calendar = RULES.counting, RULES.calendar

    def read_write() -> None:
        for cid, blob in stored:
            state = decode_state(cid, blob)
            state.index(counting, calendar)
            encode_state(state)

    encode = best(rounds, lambda: [encode_state(s) for s in states])
    decode = best(rounds, lambda: [decode_state(cid, blob) for cid, blob in stored])
    both = best(rounds, read_write)
    for state, (cid, blob) in zip(states, stored, strict=True):
        back = decode_state(cid, blob)
        if back != state or encode_state(back) != blob or encode_state(state) != blob:
            raise SystemExit(f"{cid}: the state does not survive its round trip")
    n = len(stored)
    return encode / n, decode / n, both / n


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--states", type=Path, required=True, help="pickle of the population")
    parser.add_argument("--customers", type=int, default=100_000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--breakdown", action="store_true", help="split the Redis figure")
    args = parser.parse_args()
    if args.states.exists():
        stored = pickle.loads(args.states.read_bytes())  # our own file
    else:
        stored = [(s.customer_id, encode_state(s)) for s in population(args.customers, args.seed)]
        args.states.write_bytes(pickle.dumps(stored))
    encode, decode, read_write = cpu(stored, args.rounds)
    sizes = [len(blob) for _, blob in stored]
    due_days = {cid: decode_state(cid, blob).due_day for cid, blob in stored}
    due = {cid: None if d is None else RULES.calendar.start_ms(d) for cid, d in due_days.items()}
    blobs = dict(stored)
    per_customer = asyncio.run(redis_bytes(blobs, due))
    print(
        f"{worker.__file__}: {len(stored):,} states; per state: encode {encode * 1e6:.2f} us, "
        f"decode {decode * 1e6:.2f} us, read+write {read_write * 1e6:.2f} us; blob mean "
        f"{statistics.mean(sizes):,.0f} B, p99 {statistics.quantiles(sizes, n=100)[98]:,.0f} B; "
        f"Redis {per_customer:,.0f} B per customer"
    )
    if args.breakdown:
        no_due = dict.fromkeys(due)
        states_only = asyncio.run(redis_bytes(blobs, no_due))
        keys_only = asyncio.run(redis_bytes(dict.fromkeys(due, b"\x01"), no_due))
        print(
            f"  of which: state key without its value {keys_only:,.0f} B, value "
            f"{states_only - keys_only:,.0f} B, due index entry {per_customer - states_only:,.0f} B"
        )


if __name__ == "__main__":
    main()
