"""A new user's first run against a broker without idempotent producers (Tansu), the setting
left at its default: the worker stops at once with one line naming the setting, instead of
retrying InitProducerId forever; `produce` and `erase` say the same line."""

import asyncio
import subprocess
import sys
from dataclasses import replace

import pytest

from tests.integration.live_support import NOW, env_of, make_settings, start_worker, worker_log
from worker.settings import Settings
from worker.tools.embedded import Broker, RedisServer

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

VISIT = (
    b'{"type":"visit","event_id":"v1","customer_id":"cus_a",'
    b'"occurred_at":"2026-03-02T00:00:00Z","action":"login"}\n'
)


async def test_a_broker_without_idempotence_stops_the_worker_with_one_clear_line(
    redis_server: RedisServer,
) -> None:
    with Broker() as tansu:
        settings = replace(await make_settings(tansu, redis_server.url), kafka_idempotence=True)
        proc = start_worker(settings, NOW)
        try:
            code = await asyncio.to_thread(proc.wait, 60)
        finally:
            proc.kill()
    log = worker_log(proc)
    assert code == 2, log
    named = [line for line in log.splitlines() if "SEGMENT_WORKER_KAFKA_IDEMPOTENCE" in line]
    assert len(named) == 1, log
    assert "refused an idempotent producer" in named[0] and "Tansu" in named[0]
    assert "Traceback" not in log, log


@pytest.mark.parametrize("command", [["produce", "-"], ["erase", "cus_a"]])
def test_a_broker_without_idempotence_stops_the_producing_commands_with_one_clear_line(
    command: list[str],
) -> None:
    """Their producers start as the worker's does: the same line, not aiokafka's
    UnknownError, nor "cannot reach" a broker that answered, nor an unclosed producer."""
    with Broker() as tansu:
        settings = replace(Settings(), kafka_bootstrap=tansu.bootstrap, kafka_idempotence=True)
        done = subprocess.run(
            [sys.executable, "-m", "worker", *command],
            input=VISIT,
            env=env_of(settings),
            capture_output=True,
            timeout=60,
            check=False,
        )
    err = done.stderr.decode()
    assert done.returncode == 2, err
    assert err.splitlines() == [
        "segment-worker: bad setting: SEGMENT_WORKER_KAFKA_IDEMPOTENCE: the broker at "
        f"{tansu.bootstrap} refused an idempotent producer (InitProducerId: UnknownError); for a "
        "broker without idempotent producers (Tansu), set SEGMENT_WORKER_KAFKA_IDEMPOTENCE=false"
    ]
