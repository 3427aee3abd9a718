"""The chaos run: a seeded, faulty history through two worker processes while workers are
killed (at random and at the exact points between the Redis commit, the relay and the offset
commit), paused past their session, Redis is killed and rolled back and the broker paused,
and on a 3-node Apache Kafka cluster single nodes fail too (the leader of a busy input
partition and of the change topic killed, a node stopped past its broker session, the active
controller killed); then everything the broker and Redis hold is compared with an
independent replay.

    CHAOS_EVENTS=210000 CHAOS_CUSTOMERS=32000 python -m pytest tests/chaos -q -s

writes a JSON report (CHAOS_REPORT, default chaos-report.json) and prints it as a table.
CI runs the same faults on fewer events (the defaults below).
"""

from __future__ import annotations

import asyncio
import os
import random
import shutil
import signal
import socket
import struct
import subprocess
from collections import Counter
from collections.abc import Callable, Coroutine
from dataclasses import replace
from functools import partial
from itertools import islice
from pathlib import Path

import orjson
import psutil
import pytest
import redis.asyncio as aioredis
from aiohttp import ClientSession
from aiokafka import TopicPartition
from aiokafka.errors import KafkaError
from redis.exceptions import RedisError

from tests.integration.live_support import (
    PARTITIONS,
    Produced,
    all_applied,
    all_committed,
    make_settings,
    produce,
    read_all,
    start_worker,
    stored_states,
    wait_until,
    worker_log,
)
from worker.core.events import ParseLimits
from worker.core.rules import load_rules
from worker.core.timeutil import DAY_MS, parse_rfc3339
from worker.core.views import describe
from worker.kafka import admin, partition_of, send_erasures
from worker.keys import Layout, offset_field
from worker.redis.client import connect
from worker.replay import Replayer
from worker.settings import Settings
from worker.tools.apache_kafka import ApacheKafka
from worker.tools.embedded import Broker, RedisServer
from worker.tools.kafka_node import KafkaNode
from worker.tools.servers import free_port
from worker.tools.simulate import FeedFaults, SimEvent, Simulator

pytestmark = [pytest.mark.integration, pytest.mark.timeout(900)]
EVENTS = int(os.environ.get("CHAOS_EVENTS", "12000"))
CUSTOMERS = int(os.environ.get("CHAOS_CUSTOMERS", "1500"))
SEED = int(os.environ.get("CHAOS_SEED", "7"))
REPORT = Path(os.environ.get("CHAOS_REPORT", "chaos-report.json"))
START = parse_rfc3339("2026-01-01T00:00:00Z")
RULES = load_rules(None)


class Workers:
    """Worker processes by name; each with its own HTTP port so its metrics can be read."""

    def __init__(self, settings: Settings, clock_ms: int) -> None:
        self.settings, self.clock_ms = settings, clock_ms
        self.procs: dict[str, tuple[subprocess.Popen[bytes], int]] = {}
        self.fenced_by_pid: dict[int, int] = {}  # last value each process reported

    @property
    def fenced(self) -> int:
        return sum(self.fenced_by_pid.values())

    def start(self, name: str, **extra: str) -> subprocess.Popen[bytes]:
        port = free_port()
        proc = start_worker(replace(self.settings, http_port=port), self.clock_ms, **extra)
        self.procs[name] = (proc, port)
        return proc

    def kill(self, name: str) -> None:
        """SIGKILL a worker that is running (one that died by itself fails the test)."""
        proc, _ = self.procs.pop(name)
        assert proc.poll() is None, f"worker {name} died by itself: {worker_log(proc)}"
        proc.kill()
        assert proc.wait() == -signal.SIGKILL

    async def scrape_fenced(self) -> None:
        async with ClientSession() as http:
            for proc, port in self.procs.values():
                if proc.poll() is not None:
                    continue
                try:
                    async with http.get(f"http://127.0.0.1:{port}/metrics") as resp:
                        for line in (await resp.text()).splitlines():
                            if line.startswith("segment_worker_fenced_writes_total "):
                                self.fenced_by_pid[proc.pid] = int(float(line.split()[1]))
                except OSError:
                    pass

    def kill_all(self) -> None:
        """SIGKILL whatever still runs (a failed test leaves no worker behind)."""
        for proc, _ in self.procs.values():
            proc.kill()
            proc.wait()
        self.procs.clear()

    async def stop_all(self) -> None:
        await self.scrape_fenced()
        for proc, _ in self.procs.values():
            proc.send_signal(signal.SIGCONT)
            proc.send_signal(signal.SIGTERM)
        for proc, _ in self.procs.values():
            try:
                await asyncio.to_thread(proc.wait, 60)
            except subprocess.TimeoutExpired:
                proc.kill()
        self.procs.clear()


def traffic() -> list[SimEvent]:
    sim = Simulator(SEED, CUSTOMERS, START, faults=FeedFaults.realistic(), signup_days=60)
    return list(islice(sim, EVENTS))


async def applied(settings: Settings) -> int:
    """Input records Redis holds (the sum of its input offsets; the topics are fresh, so
    offsets count records); -1 while Redis does not answer."""
    client = connect(settings)
    layout = Layout(settings.redis_prefix)
    try:
        total = 0
        for p in range(PARTITIONS):
            for topic in (settings.topic_orders, settings.topic_visits):
                total += int(await client.hget(layout.meta(p), offset_field(topic)) or 0)
        return total
    except (RedisError, OSError):
        return -1
    finally:
        await client.aclose()


async def redis_run_id(redis: RedisServer) -> str:
    """The server's run_id: a new one proves a new redis-server process answers."""
    client = aioredis.from_url(redis.url)
    try:
        return str((await client.info("server"))["run_id"])
    finally:
        await client.aclose()


def broker_answers(bootstrap: str, timeout: float = 2.0) -> bool:
    """Whether the first broker answers a Kafka ApiVersions request (v0) within ``timeout``.
    A paused broker's kernel still accepts the connection; the broker answers nothing."""
    host, port = bootstrap.split(",", maxsplit=1)[0].rsplit(":", 1)
    client_id = b"chaos"
    request = struct.pack(">hhih", 18, 0, 1, len(client_id)) + client_id
    try:
        with socket.create_connection((host, int(port)), timeout) as sock:
            sock.sendall(struct.pack(">i", len(request)) + request)
            return len(sock.recv(4)) == 4
    except OSError:
        return False


BROKER_SESSION_S = 9.0  # broker.session.timeout.ms (Kafka's default): then the controller fences


class NodeFaults:
    """Faults of single nodes of an Apache Kafka cluster, each seen to act: the node ran and
    died of SIGKILL (or stopped), another node took its part, and it came back in sync."""

    KINDS = frozenset(
        {"kill9_input_leader", "kill9_changes_leader", "sigstop_broker", "kill9_controller"}
    )

    def __init__(self, cluster: ApacheKafka, topics: tuple[str, ...]) -> None:
        self.cluster, self.topics = cluster, topics

    def node(self, node_id: int) -> KafkaNode:
        found = [n for n in self.cluster.nodes if n.node_id == node_id]
        assert found, f"no node {node_id}"
        return found[0]

    async def replicas(
        self, topic: str, down: KafkaNode | None = None
    ) -> dict[int, tuple[int, list[int]]]:
        """``partition -> (leader, in-sync replicas)`` of ``topic``, asked of the nodes that
        run and are not ``down``; empty while none of them can tell."""
        nodes = self.cluster.nodes
        client = admin(
            ",".join(n.address for n in nodes if n.running and n is not down),
            request_timeout_ms=5000,
        )
        try:
            await client.start()
            [described] = await client.describe_topics([topic])
        except (KafkaError, OSError, ValueError):
            return {}
        finally:
            await client.close()
        if described["error_code"]:
            return {}
        return {p["partition"]: (p["leader"], p["isr"]) for p in described["partitions"]}

    async def leader(self, tp: TopicPartition, down: KafkaNode | None = None) -> int:
        """The node leading ``tp``; -1 while none does or none can tell."""
        return (await self.replicas(tp.topic, down)).get(tp.partition, (-1, []))[0]

    def controller(self) -> int:
        """The KRaft quorum's leader (the active controller), by the newest epoch in the
        quorum state of the nodes that run; -1 while they elect. (Under KRaft the Metadata
        response's controller id is any live broker, so it cannot say.)"""
        best = (-1, -1)
        for node in self.cluster.nodes:
            state = node.directory / "data" / "__cluster_metadata-0" / "quorum-state"
            if node.running and state.exists():
                quorum = orjson.loads(state.read_bytes())
                best = max(best, (quorum["leaderEpoch"], quorum.get("leaderId", -1)))
        return best[1]

    async def in_sync(self, node: KafkaNode) -> bool:
        """Whether ``node`` is in the ISR of every partition of the worker's topics."""
        for topic in self.topics:
            got = await self.replicas(topic)
            if not got or any(node.node_id not in isr for _, isr in got.values()):
                return False
        return True

    async def kill9(self, victim: KafkaNode, replaced: Callable[[], object], what: str) -> None:
        """SIGKILL a running node; ``replaced`` must come true while it is down (``what``
        says how); restarted, the node must be back in sync."""
        assert victim.running, f"node {victim.node_id} is not running"
        await asyncio.to_thread(victim.kill)
        assert victim.returncode == -signal.SIGKILL, victim.returncode
        await wait_until(replaced, 60, what)
        await asyncio.to_thread(victim.start, 120)
        await wait_until(partial(self.in_sync, victim), 240, f"node {victim.node_id} in sync")

    async def kill9_leader(self, tp: TopicPartition) -> None:
        """SIGKILL the node leading ``tp``; another replica must take over."""
        victim = self.node(await self.leader(tp))

        async def taken_over() -> bool:
            return await self.leader(tp, victim) not in (-1, victim.node_id)

        await self.kill9(victim, taken_over, f"a new leader of {tp}")

    async def kill9_controller(self) -> None:
        """SIGKILL the active controller (a combined node); the quorum must elect another."""
        victim = self.node(self.controller())
        await self.kill9(
            victim,
            lambda: self.controller() not in (-1, victim.node_id),
            f"a controller in place of node {victim.node_id}",
        )

    async def sigstop(self, tp: TopicPartition) -> None:
        """SIGSTOP the node leading ``tp`` past the broker session: the controller must fence
        it and another replica lead ``tp``; after SIGCONT it must be back in sync."""
        victim = self.node(await self.leader(tp))
        assert victim.pid is not None
        proc = psutil.Process(victim.pid)
        assert proc.status() in (psutil.STATUS_RUNNING, psutil.STATUS_SLEEPING), proc.status()
        victim.pause()
        try:
            stopped = lambda: proc.status() == psutil.STATUS_STOPPED  # noqa: E731
            await wait_until(stopped, 10, f"node {victim.node_id} stopped")
            await asyncio.sleep(BROKER_SESSION_S + 3)

            async def fenced() -> bool:
                return await self.leader(tp, victim) not in (-1, victim.node_id)

            await wait_until(fenced, 60, f"a new leader of {tp}")
        finally:
            victim.resume()
        await wait_until(lambda: proc.status() != psutil.STATUS_STOPPED, 10, "node resumed")
        await wait_until(partial(self.in_sync, victim), 240, f"node {victim.node_id} in sync")


async def chaos(
    broker: ApacheKafka | Broker, redis: RedisServer, workers: Workers, events: list[SimEvent]
) -> tuple[Produced, list[str], Counter[str], list[str]]:
    """Feed the events while the faults act, one after another, each at its place in the
    input; input keeps flowing (a trickle) while a fault acts, and a fault is counted only
    once it is seen to have happened. ``placed``: where in the input each fault acted."""
    rng = random.Random(SEED)
    settings = workers.settings
    workers.start("a")
    workers.start("b")
    faults: Counter[str] = Counter()
    placed: list[str] = []
    produced = Produced({})
    victims = sorted({e.key.decode() for e in events[: len(events) // 3]})[:5]
    erased = False
    chunk = max(50, len(events) // 48)
    pos = 0  # events[:pos] are produced

    async def feed(count: int) -> None:
        nonlocal produced, pos, erased
        produced = await produce(settings, events[pos : pos + count], produced)
        pos = min(len(events), pos + count)
        if not erased and pos >= len(events) // 2:
            await send_erasures(settings, victims)
            erased = True

    async def applied_over(floor: int) -> bool:
        return await applied(settings) > floor

    async def flow_until(target: int) -> None:
        """Produce up to ``target`` in chunks, each once the workers hold all but the last
        two: they stay busy, but not far behind."""
        while pos < target:
            floor = pos - 2 * chunk
            await wait_until(partial(applied_over, floor - 1), 300, f"{floor} applied")
            await feed(min(chunk, target - pos))

    async def kill(name: str) -> None:
        await workers.scrape_fenced()  # a killed worker takes its counters with it
        workers.kill(name)

    async def kill9_worker(name: str) -> None:
        await kill(name)
        workers.start(name)

    async def crash_at(name: str, point: str) -> None:
        """Replace the worker by one that exits (137) the n-th time it passes ``point``;
        wait for that exit, then start a plain one in its place."""
        await kill(name)
        doomed = workers.start(name, SW_TEST_CRASH=point)
        try:
            code = await asyncio.to_thread(doomed.wait, 240)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"{point} never reached: {worker_log(doomed)}") from None
        assert code == 137, (point, code, worker_log(doomed))
        workers.start(name)

    async def kill9_redis() -> None:
        before = await redis_run_id(redis)
        await asyncio.to_thread(redis.restart)
        assert redis.returncode == -signal.SIGKILL
        assert await redis_run_id(redis) != before

    async def redis_rollback() -> None:
        backup = redis.directory.parent / f"{redis.directory.name}-{faults['redis_rollback']}"
        await asyncio.to_thread(shutil.copytree, redis.directory / "appendonlydir", backup)
        copied = await applied(settings)  # the copy holds at most this much
        await asyncio.sleep(1.5)
        # Redis must have moved on since the copy, or restoring it would lose nothing.
        await wait_until(partial(applied_over, copied), 120, "writes after the copy")
        before = await redis_run_id(redis)

        def roll_back() -> None:
            redis.kill()
            shutil.rmtree(redis.directory / "appendonlydir")
            shutil.copytree(backup, redis.directory / "appendonlydir")
            redis.start()

        await asyncio.to_thread(roll_back)
        assert redis.returncode == -signal.SIGKILL
        assert await redis_run_id(redis) != before

    async def sigstop_past_session() -> None:
        name = rng.choice(sorted(workers.procs))
        proc = psutil.Process(workers.procs[name][0].pid)
        assert proc.status() in (psutil.STATUS_RUNNING, psutil.STATUS_SLEEPING), proc.status()
        proc.suspend()  # SIGSTOP
        await wait_until(lambda: proc.status() == psutil.STATUS_STOPPED, 10, f"{name} stopped")
        await asyncio.sleep(settings.session_timeout_ms / 1000 + 3)
        proc.resume()  # SIGCONT
        await wait_until(lambda: proc.status() != psutil.STATUS_STOPPED, 10, f"{name} resumed")

    async def pause_broker() -> None:
        broker.pause()
        try:
            silent = await asyncio.to_thread(broker_answers, broker.bootstrap, 2.0)
            await asyncio.sleep(1)
        finally:
            broker.resume()
        assert not silent, "the paused broker still answered"
        await wait_until(lambda: broker_answers(broker.bootstrap), 30, "broker answering again")

    async def kill9_during_rebalance() -> None:
        workers.start("c")  # joining: a rebalance starts
        await asyncio.sleep(1.0)
        await kill("c")

    inputs = (settings.topic_orders, settings.topic_visits)
    nodes = (
        NodeFaults(broker, (*inputs, settings.topic_changes, settings.topic_classes))
        if isinstance(broker, ApacheKafka) and broker.size >= 3
        else None
    )

    def on_nodes() -> NodeFaults:
        assert nodes is not None
        return nodes

    def busiest(*topics: str) -> TopicPartition:
        """The partition of ``topics`` that has received the most input so far."""
        return max((tp for tp in produced.ends if tp.topic in topics), key=produced.ends.get)

    def changes_of_busiest() -> TopicPartition:
        return TopicPartition(settings.topic_changes, busiest(*inputs).partition)

    schedule: list[tuple[str, Callable[[], Coroutine[object, object, None]]]] = [
        ("kill9_worker", lambda: kill9_worker("a")),
        ("crash_after_commit", lambda: crash_at("b", "after_commit:2")),
        ("kill9_input_leader", lambda: on_nodes().kill9_leader(busiest(*inputs))),
        ("kill9_redis", kill9_redis),
        ("crash_after_relay", lambda: crash_at("a", "after_relay:2")),
        ("kill9_changes_leader", lambda: on_nodes().kill9_leader(changes_of_busiest())),
        ("sigstop_past_session", sigstop_past_session),
        ("kill9_worker", lambda: kill9_worker("b")),
        ("sigstop_broker", lambda: on_nodes().sigstop(busiest(settings.topic_visits))),
        ("pause_broker", pause_broker),
        ("kill9_during_rebalance", kill9_during_rebalance),
        ("kill9_controller", lambda: on_nodes().kill9_controller()),
        ("redis_rollback", redis_rollback),
        ("crash_after_commit", lambda: crash_at("b", "after_commit:3")),
        ("kill9_redis", kill9_redis),
        ("kill9_worker", lambda: kill9_worker("a")),
        ("crash_after_dead_letter", lambda: crash_at("b", "after_dead_letter:1")),
    ]
    if nodes is None:  # one broker node (Tansu): no node of it can fail alone
        schedule = [(k, a) for k, a in schedule if k not in NodeFaults.KINDS]
    only = os.environ.get("CHAOS_FAULTS")  # e.g. "kill9_redis,redis_rollback" to isolate one
    if only:
        schedule = [(k, a) for k, a in schedule if k in only.split(",")]
    for i, (kind, action) in enumerate(schedule):
        # Fault i acts at its share of the input (from 1/16 to 13/16 with all 13 of a single
        # broker, 1/20 to 17/20 with a cluster's 17), once the workers have applied most of
        # what came before it.
        await flow_until(len(events) * (i + 1) // (len(schedule) + 3))
        began, done, since = pos, await applied(settings), asyncio.get_running_loop().time()
        acting = asyncio.create_task(action())
        while not acting.done():  # a trickle of input while the fault acts
            if pos < len(events):
                await feed(10)
            await asyncio.wait({acting}, timeout=0.5)
        await acting  # raises if the fault was not seen to happen
        faults[kind] += 1
        took = asyncio.get_running_loop().time() - since
        placed.append(f"{kind} {began}-{pos} ({done} applied at the start, {took:.0f} s)")
        print(f"fault {placed[-1]}")  # shown at once with -s, should a later step fail
        assert pos < len(events), f"input ran out while {kind} acted"
    await flow_until(len(events))
    for name, (proc, _) in workers.procs.items():
        assert proc.poll() is None, f"worker {name} died by itself: {worker_log(proc)}"
    return produced, victims, faults, placed


def expected(events: list[SimEvent], as_of: int) -> tuple[Replayer, int]:
    rejected = 0

    def on_reject(*_: object) -> None:
        nonlocal rejected
        rejected += 1

    replayer = Replayer(
        RULES, lambda _: None, on_reject, limits=ParseLimits(), future_reference_ms=as_of
    )
    for n, e in enumerate(events):
        replayer.feed(e.jsonl(), n)
    replayer.advance(as_of)
    return replayer, rejected


async def test_chaos(broker: ApacheKafka | Broker, tmp_path: Path) -> None:
    events = traffic()
    clock_ms = max(e.delivered_ms for e in events) + 60_000
    later = clock_ms + 200 * DAY_MS
    redis = RedisServer(
        appendonly=True, appendfsync="everysec", directory=tmp_path / "redis"
    ).start()
    workers: Workers | None = None
    try:
        settings = await make_settings(broker, redis.url)
        settings = replace(settings, batch_size=200)
        workers = Workers(settings, clock_ms)
        produced, victims, faults, placed = await chaos(broker, redis, workers, events)

        async def drained() -> bool:  # the group's offsets run ahead of a Redis that lost writes
            return await all_committed(settings, produced) and await all_applied(settings, produced)

        await wait_until(drained, 300, "drain")
        await workers.stop_all()
        fenced = workers.fenced
        # Time passes: one worker with the clock 200 days on fires every time-driven change.
        workers = Workers(settings, later)
        workers.start("timer")
        client = aioredis.from_url(settings.redis_url)
        layout = Layout(settings.redis_prefix)

        async def timers_done() -> bool:
            for p in range(PARTITIONS):
                if await client.zcount(layout.at(p), "-inf", later) or await client.llen(
                    layout.outbox(p)
                ):
                    return False
            return True

        await wait_until(timers_done, 120, "timers")
        await workers.stop_all()
        await client.aclose()

        replayer, dlq_expected = expected(events, later)
        day = later // DAY_MS
        live = await stored_states(settings, sorted(replayer.states))
        lost = double = mismatches = 0
        for cid, want in replayer.states.items():
            if cid in victims:
                continue
            got = live[cid]
            if got is None:
                lost += 1
                continue
            a, b = describe(got, RULES, day), describe(want, RULES, day)
            for d in (a, b):
                del d["since"]
            if a["orders_total"] < b["orders_total"]:
                lost += 1
            elif a["orders_total"] > b["orders_total"]:
                double += 1
            elif a != b:
                mismatches += 1
                if mismatches <= 5:  # what differs, for whoever reads a failed run
                    diff = {k: (a[k], b.get(k)) for k in a if a[k] != b.get(k)}
                    where = partition_of(cid, PARTITIONS)
                    print(f"state mismatch: {cid} (partition {where}), live vs replay: {diff}")
        resurrected = sum(1 for cid in victims if live.get(cid) is not None)

        changes = await read_all(settings, settings.topic_changes)
        seen: dict[str, bytes] = {}
        conflicting = broken = missing = 0
        last: dict[tuple[str, str], object] = {}
        for r in sorted(changes, key=lambda r: (r.partition, r.offset)):
            if r.value is None:
                continue  # an erasure tombstone
            change = orjson.loads(r.value)
            body = dict(change)
            body.pop("emitted_at")
            canonical = orjson.dumps(body, option=orjson.OPT_SORT_KEYS)
            if change["event_id"] in seen:
                conflicting += seen[change["event_id"]] != canonical
                continue
            seen[change["event_id"]] = canonical
            key = (change["customer_id"], change["dimension"])
            if change["from"] != last.get(key) and change["customer_id"] not in victims:
                broken += 1
            last[key] = change["to"]
        for cid, state in replayer.states.items():
            if cid in victims:
                continue
            for dim, cls in state.classes.items():
                missing += last.get((cid, dim)) != cls
        dlq = await read_all(settings, settings.topic_dlq, 1.0)
        sources = {
            tuple(
                v
                for k, v in r.headers
                if k in ("dlq.source.topic", "dlq.source.partition", "dlq.source.offset")
            )
            for r in dlq
        }
        tombstones = {(r.key or b"").decode() for r in changes if r.value is None}
        report = {
            "broker": (
                f"Apache Kafka, {broker.size} nodes" if isinstance(broker, ApacheKafka) else "Tansu"
            ),
            "events": len(events),
            "customers": len(replayer.states),
            "faults": dict(faults),
            "fault_positions": placed,
            "lost": lost,
            "double_counted": double,
            "state_mismatches": mismatches,
            "missing_changes": missing,
            "conflicting_duplicates": conflicting,
            "broken_chains": broken,
            "dlq_expected": dlq_expected,
            "dlq_received": len(sources),
            "fenced_writes": fenced + workers.fenced,
            "erased": len(victims),
            "erased_resurrected": resurrected,
            "tombstones": len(tombstones & set(victims)),
        }
        zero = (
            "lost",
            "double_counted",
            "state_mismatches",
            "missing_changes",
            "conflicting_duplicates",
            "broken_chains",
            "erased_resurrected",
        )
        ok = (
            all(report[k] == 0 for k in zero)
            and report["dlq_received"] == dlq_expected
            and report["tombstones"] == len(victims)
        )
        report["result"] = "PASS" if ok else "FAIL"
        REPORT.write_bytes(orjson.dumps(report, option=orjson.OPT_INDENT_2) + b"\n")
        width = max(len(k) for k in report)
        lines = [
            f"{k:<{width}}  " + (f"\n{'':<{width}}  ".join(v) if isinstance(v, list) else str(v))
            for k, v in report.items()
        ]
        print("\n" + "\n".join(lines))
        # Every zero the report shows is asserted: nothing lost or counted twice, states as
        # replay's, every chain unbroken and ending at replay's class, no id with two contents,
        # erasures hold, every bad input dead-lettered.
        assert all(report[k] == 0 for k in zero), report
        assert report["dlq_received"] == dlq_expected, report
        assert report["tombstones"] == len(victims), report
    finally:
        if workers is not None:
            workers.kill_all()
        redis.stop()
