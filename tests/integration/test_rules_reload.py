"""Hot reload of rules files that once crashed the live worker: each is refused, logged, and
the worker goes on with the rules it had."""

import os
import re
import signal
from dataclasses import replace
from functools import partial
from pathlib import Path

import pytest
from aiohttp import ClientSession

from tests.core.test_rules import CRASHING
from tests.integration.live_support import (
    LOGS,
    NOW,
    all_committed,
    make_settings,
    one_day_of_traffic,
    produce,
    wait_until,
    worker_process,
)
from worker.core.rules import default_rules_text, load_rules
from worker.settings import Settings
from worker.tools.embedded import Broker, RedisServer

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
    broker: Broker, redis_server: RedisServer, tmp_path: Path
) -> None:
    rules_file = tmp_path / "rules.toml"
    rules_file.write_bytes(default_rules_text())
    version = load_rules(rules_file).version
    settings = replace(await make_settings(broker, redis_server.url), rules=rules_file)
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
