"""Event-to-change latency at fixed rates, beside the broker-only relay (issue 16, goal 2).

    python bench/latency.py --rate 1500 --rate 7000 [--seconds 15] [--warmup 3] [--broker kafka]
        [--path-cpu 1]
    cd /tmp/old && PYTHONPATH=. python /path/to/bench/latency.py --rate 1500   # an old commit

`segment-worker bench live` measures the latency at half and at a tenth of the capacity it
has just measured, and that capacity moves from run to run on a shared machine, so two
commits are never paced alike. This runs only bench live's paced latency runs, at the rates
given, on one fresh broker and Redis. Each run times, for every event that causes a change,
its send to the arrival of the change, for the worker and for the broker-only relay baseline;
events sent in the first ``--warmup`` seconds are timed apart (the p99 with them is shown).
``--path-cpu N`` runs the timed path (worker, then relay baseline) alone on CPU N and all
else (this process, the broker, Redis) on the other CPUs, as separate machines would.
"""

from __future__ import annotations

import argparse
import asyncio

from worker.core.timeutil import parse_rfc3339
from worker.tools.apache_kafka import BROKERS, chosen_broker
from worker.tools.embedded import RedisServer
from worker.tools.livesetup import Plan, Servers, keep_off
from worker.tools.pacedbench import latency

START = parse_rfc3339("2025-01-01T00:00:00Z")  # `bench live`'s default shop opening


async def measure(
    rates: list[float],
    *,
    seconds: float,
    warmup: float,
    customers: int,
    broker_name: str,
    linger_ms: int | None,
    path_cpu: int | None,
) -> None:
    if path_cpu is not None:
        try:
            keep_off(path_cpu)  # before the broker and Redis start: they inherit it
        except ValueError as exc:
            raise SystemExit(f"--path-cpu: {exc}") from None
    plan = Plan(
        events=0,
        customers=customers,
        memory_customers=0,
        seed=1,
        latency_seconds=seconds,
        latency_warmup=warmup,
        batch_linger_ms=linger_ms,
        start_ms=START,
        rules=None,
        broker=broker_name,
        path_cpu=path_cpu,
    )
    with chosen_broker(broker_name) as broker, RedisServer() as redis_server:
        servers = Servers(broker.bootstrap, redis_server.url, broker.idempotent)
        for rate in rates:
            await latency(servers, plan, rate, "as asked")


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--rate", type=float, action="append", required=True, help="events/s")
    parser.add_argument("--seconds", type=float, default=15, help="how long each run sends")
    parser.add_argument(
        "--warmup", type=float, default=3, help="seconds sent before the timed part"
    )
    parser.add_argument("--customers", type=int, default=10_000)
    parser.add_argument(
        "--linger", type=int, help="the worker's SEGMENT_WORKER_BATCH_LINGER_MS (its default)"
    )
    parser.add_argument("--broker", choices=BROKERS, default="kafka")
    parser.add_argument(
        "--path-cpu",
        type=int,
        help="run the worker and the relay baseline alone on this CPU (default: shared)",
    )
    args = parser.parse_args()
    asyncio.run(
        measure(
            args.rate,
            seconds=args.seconds,
            warmup=args.warmup,
            customers=args.customers,
            broker_name=args.broker,
            linger_ms=args.linger,
            path_cpu=args.path_cpu,
        )
    )


if __name__ == "__main__":
    main()
