"""The operator's commands on one customer: ``erase`` (GDPR), ``customer`` (show) and
``forget`` (delete a damaged state), with the settings of ``run``."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Awaitable, Callable

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError

from worker.cli.common import (
    REDIS_ERRORS,
    Subparsers,
    computed_at,
    kafka_failure,
    redis_failure,
    store_arguments,
)
from worker.core.events import ParseLimits, valid_id
from worker.kafka import input_partitions, send_erasures
from worker.kafka_topics import partition_counts
from worker.lookup import forget, print_customers
from worker.partition_count import check, check_against_redis
from worker.redis.client import connect
from worker.redis.library import LibraryNotLoaded
from worker.settings import Settings
from worker.startup import KAFKA_DOWN
from worker.store import Store, store_for


def register(sub: Subparsers) -> None:
    """Add ``erase``, ``customer`` and ``forget``."""
    erase = sub.add_parser(
        "erase",
        help="erase customers (GDPR): state, due entry, and tombstones on the change and "
        "classes topics",
        description="Send erasure requests to the erasure topic (SEGMENT_WORKER_TOPIC_ERASURES, "
        "co-partitioned with the inputs). The worker that owns each customer deletes their "
        "state and due entry, keeps a marker so that replayed or late events cannot bring them "
        "back (SEGMENT_WORKER_ERASURE_MARKER_DAYS), and produces a tombstone (null value) for "
        "them on the segment-change topic and the compacted classes topic. Kafka settings "
        "come from the same environment variables as `run`. An erasure topic whose partition "
        "count is not the one the state in Redis is built with is refused, nothing sent.",
    )
    erase.add_argument("customer_ids", nargs="+", metavar="CUSTOMER_ID")
    erase.set_defaults(func=_erase)

    customer = sub.add_parser(
        "customer",
        help="show customers' stored state and classes, as GET /customers/{id} does",
        description="Read each customer's state from the worker's Redis and print it as one JSON "
        "object per line: order and visit statistics, window and score features, the classes "
        "last emitted and since when, and the next instant a class may change with no event. "
        "Redis and Kafka settings come from the same environment variables as `run`; Kafka is "
        "asked only for the orders topic's partition count, which places a customer (give it "
        "with --partitions to skip Kafka). Exit status 1 if any customer is unknown. While the "
        "rules file is refused (the worker then runs on its old rules), what the state stores "
        "is shown (classes and since, visits, region, traits, rules_version), not what the "
        "rules compute (order figures, windows, scores, next_change_at; said on stderr); "
        "--at, which needs the rules, is refused.",
    )
    customer.add_argument("customer_ids", nargs="+", metavar="CUSTOMER_ID")
    store_arguments(customer, computed="window and score features")
    customer.set_defaults(func=_customer)

    forget_ = sub.add_parser(
        "forget",
        help="delete a damaged stored state that stops its partition",
        description="A stored state the worker cannot read stops its partition (the log names "
        "the customer; segment_worker_stuck_partitions counts such partitions). This deletes "
        "that state (its due-index entry goes when it falls due), so the partition carries "
        "on when it is next retried (SEGMENT_WORKER_STUCK_RETRY_MS); the customer's later "
        "events start a new history, and the class populations still count their old "
        "classes. It refuses a state that reads (use `erase`) and one in a newer release's "
        "format (finish that rollout instead). Settings as for `customer`.",
    )
    forget_.add_argument("customer_ids", nargs="+", metavar="CUSTOMER_ID")
    store_arguments(forget_)
    forget_.set_defaults(func=_forget)


def _erase(args: argparse.Namespace) -> int:
    limits = ParseLimits()
    invalid = [c for c in args.customer_ids if not valid_id(c, limits)]
    if invalid:
        print(
            f"segment-worker: {invalid[0][:40]!r}: not a customer id (1 to "
            f"{limits.max_id_length} characters, as events carry them); nothing sent",
            file=sys.stderr,
        )
        return 2
    settings = Settings.from_env()

    async def counted(client: AIOKafkaProducer) -> None:
        """The erasure topic's partition count, which places a request, against the one the
        state is built with: requests placed by another count would miss their customers."""
        count = (await partition_counts(client, settings)).get(settings.topic_erasures)
        unchecked = None if count is None else await check_against_redis(settings, count)
        if unchecked is not None:
            print(unchecked, file=sys.stderr)

    try:
        asyncio.run(send_erasures(settings, args.customer_ids, before=counted))
    except KAFKA_DOWN as exc:
        then = "run it again once it is up (an erasure requested twice is erased once)"
        print(kafka_failure(exc, settings, then), file=sys.stderr)
        return 2
    print(f"erasure requested for {len(args.customer_ids)} customer(s)", file=sys.stderr)
    return 0


def _customer(args: argparse.Namespace) -> int:
    without = "order figures, windows, scores and next_change_at not shown"
    _, show = computed_at(args.at, without=without)

    def work(_: Settings, store: Store, partitions: int) -> Awaitable[int]:
        return print_customers(store, args.customer_ids, partitions, show)

    return against_redis(args.partitions, work)


def _forget(args: argparse.Namespace) -> int:
    async def work(_: Settings, store: Store, partitions: int) -> int:
        await store.library.ensure()  # forget is one of its Functions
        return await forget(store, args.customer_ids, partitions)

    return against_redis(args.partitions, work)


def against_redis(
    partitions: int | None, work: Callable[[Settings, Store, int], Awaitable[int]]
) -> int:
    """Run an operator command on the worker's Redis, with the settings of `run` and the
    input partition count (asked of Kafka unless given); its exit status, or 2 with a message
    when a server cannot answer."""
    settings = Settings.from_env()

    async def main() -> int:
        count = partitions or await input_partitions(settings)
        client = connect(settings)
        try:
            store = store_for(settings, client)
            # Customers are found on their partition of the count the state is built with.
            await check(store, count, option="--partitions" if partitions else None)
            return await work(settings, store, count)
        finally:
            await client.aclose()

    try:
        return asyncio.run(main())
    except KafkaError as exc:
        print(
            f"segment-worker: Kafka at {settings.kafka_bootstrap} did not tell the partition "
            f"count of {settings.topic_orders!r} ({exc!r}); give it with --partitions",
            file=sys.stderr,
        )
    except LibraryNotLoaded as exc:
        print(f"segment-worker: {exc}", file=sys.stderr)
    except BrokenPipeError:  # the reader stopped early (`| head`): nothing left to say
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except REDIS_ERRORS as exc:
        print(redis_failure(exc, settings), file=sys.stderr)
    except OSError as exc:  # an output file that cannot be written, and the like
        print(f"segment-worker: {exc}", file=sys.stderr)
    return 2
