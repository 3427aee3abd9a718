"""Hot reload of rules files that once crashed the live worker: each is refused, logged, and
the worker goes on with the rules it had; and a re-evaluation cut short, then reverted."""

import asyncio
import os
import re
import signal
from collections import Counter
from dataclasses import replace
from functools import partial
from pathlib import Path

import pytest
from aiohttp import ClientSession

from tests.core.test_rules import CRASHING
from tests.integration.live_support import (
    LOGS,
    NOW,
    PARTITIONS,
    all_committed,
    assert_state_matches,
    one_day_of_traffic,
    produce,
    replay,
    start_worker,
    stored_states,
    wait_until,
    worker_process,
)
from worker.core.rules import default_rules_text, load_rules
from worker.core.state import CustomerState
from worker.core.timeutil import DAY_MS
from worker.kafka import partition_of
from worker.keys import Layout
from worker.redis.client import connect
from worker.settings import Settings

REFUSED = "rules reload refused, the current rules keep running"
pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]


def replace_file(path: Path, text: str) -> None:
    """Swap the file in one step (as a ConfigMap update does), so that no reload ever reads
    it half-written."""
    staged = path.with_suffix(".staged")
    staged.write_text(text)
    os.replace(staged, path)


async def metrics(settings: Settings) -> str:
    async with (
        ClientSession() as http,
        http.get(f"http://127.0.0.1:{settings.http_port}/metrics") as resp,
    ):
        return await resp.text()


async def refusals(settings: Settings) -> int:
    found = re.search(
        r'segment_worker_rules_reloads_total\{outcome="rejected"\} (\S+)', await metrics(settings)
    )
    return 0 if found is None else int(float(found[1]))


async def refused(settings: Settings, at_least: int) -> bool:
    return await refusals(settings) >= at_least


async def test_rules_that_used_to_crash_are_refused_by_a_running_worker(
    settings: Settings, tmp_path: Path
) -> None:
    rules_file = tmp_path / "rules.toml"
    rules_file.write_bytes(default_rules_text())
    version = load_rules(rules_file).version
    settings = replace(settings, rules=rules_file)
    events = one_day_of_traffic(100, seed=41, orders_only=True)
    half = len(events) // 2
    produced = await produce(settings, events[:half])
    async with worker_process(settings, NOW) as worker:
        await wait_until(lambda: all_committed(settings, produced), 90, "the first half")
        log = LOGS[worker.pid]
        for n, name in enumerate(sorted(CRASHING), start=1):
            text, message = CRASHING[name]
            replace_file(rules_file, text)  # a new mtime: reloaded at the next tick
            await wait_until(partial(refused, settings, n), 30, f"{name} refused")
            assert await refusals(settings) == n, name
            lines = log.read_text(errors="replace").splitlines()
            last = [line for line in lines if REFUSED in line][-1]
            assert re.search(message, last), (name, last)
        worker.send_signal(signal.SIGHUP)  # the same file again, on request
        await wait_until(partial(refused, settings, len(CRASHING) + 1), 30, "SIGHUP reload")
        assert worker.poll() is None
        assert f'segment_worker_rules_info{{version="{version}"}} 1.0' in await metrics(settings)
        assert await refusals(settings) == len(CRASHING) + 1
        # ... and it still works: the rest of the input is consumed under the old rules.
        produced = await produce(settings, events[half:], produced)
        await wait_until(lambda: all_committed(settings, produced), 90, "the second half")


async def versions(settings: Settings, customers: list[str]) -> Counter[str]:
    """How many of the customers' stored states were classified under each rules version."""
    states = (await stored_states(settings, customers)).values()
    return Counter(s.rules_version for s in states if s is not None)


def bad_change(rules: str) -> str:
    """A change that moves many customers (membership from 1 order), to revert."""
    return rules.replace('orders_total >= 3" }', 'orders_total >= 1" }')


async def all_back(settings: Settings, customers: list[str], old: str, new: str) -> None:
    """Wait until every customer is on the ``old`` rules again; else say how many are not."""

    async def back() -> bool:
        return set(await versions(settings, customers)) == {old}

    try:
        await wait_until(back, 30, "every customer back on the old rules")
    except AssertionError:
        left = (await versions(settings, customers))[new]
        raise AssertionError(f"{left} customers kept the reverted-from rules") from None


async def test_a_re_evaluation_cut_short_then_reverted_moves_everyone_back(
    settings: Settings, tmp_path: Path
) -> None:
    """The usual reaction to a bad rules change is to put the old file back; if the worker
    died while re-evaluating under the new rules, the customers it had moved must go back
    too, not keep the reverted-from rules forever."""
    rules_file = tmp_path / "rules.toml"
    old = default_rules_text().decode()
    rules_file.write_text(old)
    settings = replace(settings, rules=rules_file, rules_reevaluation_rate=50)
    old_version = load_rules(rules_file).version
    events = one_day_of_traffic(300, seed=43, orders_only=True)
    replayer, _, _ = replay(events, NOW)
    customers = sorted(replayer.states)
    produced = await produce(settings, events)
    doomed = start_worker(settings, NOW)
    try:
        await wait_until(lambda: all_committed(settings, produced), 90, "input applied")
        replace_file(rules_file, bad_change(old))
        new_version = load_rules(rules_file).version

        async def moving() -> bool:
            return new_version in await versions(settings, customers)

        await wait_until(moving, 30, "the re-evaluation under the new rules")
    finally:
        doomed.kill()  # kill -9, mid-way: 50 customers/s, ~300 of them
        await asyncio.to_thread(doomed.wait, 30)
    assert {old_version, new_version} <= set(await versions(settings, customers)), "not mid-way"
    replace_file(rules_file, old)  # reverted
    async with worker_process(settings, NOW):
        await all_back(settings, customers, old_version, new_version)
    await assert_state_matches(settings, replayer, NOW // DAY_MS, exact=False)


async def test_a_re_evaluation_stopped_on_a_damaged_state_then_reverted_moves_everyone_back(
    settings: Settings, tmp_path: Path
) -> None:
    """The same without a crash: the pass stops its partition on a state it cannot read, the
    file is reverted meanwhile, and the partition, taken again, goes back to the old rules."""
    rules_file = tmp_path / "rules.toml"
    old = default_rules_text().decode()
    rules_file.write_text(old)
    settings = replace(settings, rules=rules_file, rules_reevaluation_rate=20, stuck_retry_ms=1000)
    old_version = load_rules(rules_file).version
    events = one_day_of_traffic(300, seed=47, orders_only=True)
    replayer, _, _ = replay(events, NOW)
    customers = sorted(replayer.states)
    produced = await produce(settings, events)
    client = connect(settings)
    async with worker_process(settings, NOW):
        await wait_until(lambda: all_committed(settings, produced), 90, "input applied")
        replace_file(rules_file, bad_change(old))
        new_version = load_rules(rules_file).version
        states: dict[str, CustomerState | None] = {}

        async def moving() -> bool:
            states.update(await stored_states(settings, customers))
            return any(s and s.rules_version == new_version for s in states.values())

        await wait_until(moving, 30, "the re-evaluation under the new rules")
        on = {c: s.rules_version for c, s in states.items() if s is not None}
        stuck = partition_of(next(c for c, v in on.items() if v == new_version), PARTITIONS)
        cid = next(
            c for c, v in on.items() if v == old_version and partition_of(c, PARTITIONS) == stuck
        )
        key = Layout(settings.redis_prefix).customer(stuck, cid)
        readable = await client.get(key)
        await client.set(key, b"[99]")  # not re-evaluated yet: the pass meets it

        async def shows(line: str) -> bool:
            return line in await metrics(settings)

        await wait_until(partial(shows, "segment_worker_stuck_partitions 1.0"), 30, "the stop")
        replace_file(rules_file, old)  # reverted
        info = f'segment_worker_rules_info{{version="{old_version}"}} 1.0'
        await wait_until(partial(shows, info), 30, "the revert")
        await client.set(key, readable)  # repaired
        await all_back(settings, customers, old_version, new_version)
    await client.aclose()
    await assert_state_matches(settings, replayer, NOW // DAY_MS, exact=False)
