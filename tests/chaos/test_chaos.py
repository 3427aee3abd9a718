"""The chaos run: a seeded, faulty history through two worker processes while workers are
killed (at random and at the exact points between the Redis commit, the relay and the offset
commit), paused past their session, Redis is killed and rolled back and the broker paused;
then everything the broker and Redis hold is compared with an independent replay.

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
import subprocess
from collections import Counter
from dataclasses import replace
from itertools import islice
from pathlib import Path

import orjson
import pytest
import redis.asyncio as aioredis
from aiohttp import ClientSession

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
)
from worker.core.events import ParseLimits
from worker.core.rules import load_rules
from worker.core.timeutil import DAY_MS, parse_rfc3339
from worker.core.views import describe
from worker.kafka import partition_of, send_erasures
from worker.keys import Layout
from worker.replay import Replayer
from worker.settings import Settings
from worker.tools.embedded import Broker, RedisServer, free_port
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

    def start(self, name: str, **extra: str) -> None:
        port = free_port()
        proc = start_worker(replace(self.settings, http_port=port), self.clock_ms, **extra)
        self.procs[name] = (proc, port)

    def kill(self, name: str) -> None:
        proc, _ = self.procs.pop(name)
        proc.kill()
        proc.wait()

    def signal(self, name: str, sig: signal.Signals) -> None:
        self.procs[name][0].send_signal(sig)

    def reap(self) -> None:
        """Forget workers that died by themselves (the crash-point ones)."""
        for name, (proc, _) in list(self.procs.items()):
            if proc.poll() is not None:
                del self.procs[name]

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


async def chaos(
    broker: Broker, redis: RedisServer, settings: Settings, events: list[SimEvent], clock_ms: int
) -> tuple[Produced, list[str], Counter[str], Workers]:
    rng = random.Random(SEED)
    workers = Workers(settings, clock_ms)
    workers.start("a")
    workers.start("b")
    faults: Counter[str] = Counter()
    chunks = 12
    size = len(events) // chunks + 1
    produced = Produced({})
    victims = sorted({e.key.decode() for e in events[: len(events) // 3]})[:5]

    async def feed() -> None:
        nonlocal produced
        for i in range(chunks):
            produced = await produce(settings, events[i * size : (i + 1) * size], produced)
            if i == chunks // 2:
                await send_erasures(settings, victims)
            await asyncio.sleep(1.0)

    feeding = asyncio.create_task(feed())

    async def restart(name: str, **extra: str) -> None:
        await workers.scrape_fenced()  # a killed worker takes its counters with it
        workers.reap()
        if name in workers.procs:
            workers.kill(name)
        workers.start(name, **extra)

    schedule = [
        ("kill9_worker", lambda: restart("a")),
        ("crash_after_commit", lambda: restart("b", SW_TEST_CRASH="after_commit:2")),
        ("kill9_redis", None),
        ("crash_after_relay", lambda: restart("a", SW_TEST_CRASH="after_relay:2")),
        ("sigstop_past_session", None),
        ("kill9_worker", lambda: restart("b")),
        ("pause_broker", None),
        ("kill9_during_rebalance", None),
        ("redis_rollback", None),
        ("crash_after_commit", lambda: restart("b", SW_TEST_CRASH="after_commit:3")),
        ("kill9_redis", None),
        ("kill9_worker", lambda: restart("a")),
        ("crash_after_dead_letter", lambda: restart("b", SW_TEST_CRASH="after_dead_letter:1")),
    ]
    only = os.environ.get("CHAOS_FAULTS")  # e.g. "kill9_redis,redis_rollback" to isolate one
    if only:
        schedule = [(k, a) for k, a in schedule if k in only.split(",")]
    for kind, action in schedule:
        await asyncio.sleep(rng.uniform(1.0, 2.5))
        faults[kind] += 1
        if action is not None:
            await action()
        elif kind == "kill9_redis":
            await asyncio.to_thread(redis.restart)
        elif kind == "redis_rollback":
            backup = redis.directory.parent / f"{redis.directory.name}-{faults[kind]}"
            await asyncio.to_thread(shutil.copytree, redis.directory / "appendonlydir", backup)
            await asyncio.sleep(1.5)

            def roll_back(backup: Path = backup) -> None:
                redis.kill()
                shutil.rmtree(redis.directory / "appendonlydir")
                shutil.copytree(backup, redis.directory / "appendonlydir")
                redis.start()

            await asyncio.to_thread(roll_back)
        elif kind == "sigstop_past_session":
            workers.reap()
            name = next(iter(workers.procs), None)
            if name is not None:
                workers.signal(name, signal.SIGSTOP)
                await asyncio.sleep(settings.session_timeout_ms / 1000 + 3)
                workers.signal(name, signal.SIGCONT)
        elif kind == "pause_broker":
            broker.pause()
            await asyncio.sleep(3)
            broker.resume()
        elif kind == "kill9_during_rebalance":
            workers.start("c")  # joining: a rebalance starts
            await asyncio.sleep(1.0)
            await workers.scrape_fenced()
            workers.kill("c")
    await feeding
    await workers.scrape_fenced()
    workers.reap()
    for name in ("a", "b"):
        if name not in workers.procs:
            workers.start(name)
    return produced, victims, faults, workers


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


async def test_chaos(broker: Broker, tmp_path: Path) -> None:
    events = traffic()
    clock_ms = max(e.delivered_ms for e in events) + 60_000
    later = clock_ms + 200 * DAY_MS
    redis = RedisServer(
        appendonly=True, appendfsync="everysec", directory=tmp_path / "redis"
    ).start()
    try:
        settings = await make_settings(broker, redis.url)
        settings = replace(settings, batch_size=200)
        produced, victims, faults, workers = await chaos(broker, redis, settings, events, clock_ms)

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
                if await client.zcount(layout.due(p), "-inf", later) or await client.llen(
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
            "events": len(events),
            "customers": len(replayer.states),
            "faults": dict(faults),
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
        print("\n" + "\n".join(f"{k:<{width}}  {v}" for k, v in report.items()))
        # Nothing lost, nothing counted twice, every bad input dead-lettered, erasures hold:
        # asserted. The change stream's chains and duplicates are reported, not asserted: after
        # Redis loses writes (kill -9 with everysec, or the rollback), re-reading interleaves
        # the orders and visits topics differently, so a customer with both in the lost window
        # can get intermediate changes that differ from those already emitted (known limit,
        # docs/contracts.md "Ordering"); the final state and final classes are exact.
        hard = ("lost", "double_counted", "state_mismatches", "erased_resurrected")
        assert all(report[k] == 0 for k in hard), report
        assert report["dlq_received"] == dlq_expected, report
        assert report["tombstones"] == len(victims), report
    finally:
        redis.stop()
