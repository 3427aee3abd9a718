"""A stop that cannot finish (Redis stopped answering) ends `run` anyway: after
SHUTDOWN_TIMEOUT_MS, or at once on a second signal; and nothing is lost, because the next
worker starts from what Redis committed."""

import asyncio
import signal
import time

import pytest

from tests.integration.live_support import (
    NOW,
    all_committed,
    one_day_of_traffic,
    produce,
    start_worker,
    wait_until,
    worker_log,
    worker_process,
)
from worker.settings import Settings
from worker.tools.embedded import RedisServer

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]


@pytest.mark.parametrize("second_signal", [False, True], ids=["timeout", "second-signal"])
async def test_a_stop_that_cannot_finish_still_ends_the_process(
    settings: Settings, redis_server: RedisServer, second_signal: bool
) -> None:
    events = one_day_of_traffic(60, seed=17)
    half = len(events) // 2
    produced = await produce(settings, events[:half])
    limit_ms = 60_000 if second_signal else 2_000
    worker = start_worker(settings, NOW, SEGMENT_WORKER_SHUTDOWN_TIMEOUT_MS=str(limit_ms))
    try:
        await wait_until(lambda: all_committed(settings, produced), 90, "the first half")
        produced = await produce(settings, events[half:], produced)
        redis_server.pause()  # every Redis call now hangs until the client gives up, and is retried
        try:
            await asyncio.sleep(1)
            began = time.monotonic()
            worker.send_signal(signal.SIGTERM)
            if second_signal:
                await asyncio.sleep(1)
                assert worker.poll() is None, worker_log(worker)  # still waiting on Redis
                worker.send_signal(signal.SIGTERM)
            status = await asyncio.to_thread(worker.wait, 30)
            took = time.monotonic() - began
        finally:
            redis_server.resume()
        assert status == 1, worker_log(worker)
        assert took < (5 if second_signal else 8), took
        why = "SIGTERM again" if second_signal else "still stopping after 2 s"
        assert f"{why}: exiting without finishing the stop" in worker_log(worker)
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait()
    # The next worker starts from what Redis committed: the rest of the input is applied.
    async with worker_process(settings, NOW):
        await wait_until(lambda: all_committed(settings, produced), 90, "the second half")
