"""Embedded servers do not outlive a process that SIGTERM or SIGHUP ends (atexit does not run
then): they are stopped first, and the signal still ends the process."""

import signal
import subprocess
import sys

import psutil
import pytest

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

HOLDER = """
import sys, time
from worker.tools.embedded import RedisServer
server = RedisServer().start()
print(server.pid, flush=True)
time.sleep(60)
"""


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP], ids=["sigterm", "sighup"])
def test_a_fatal_signal_stops_the_servers_and_still_ends_the_process(sig: signal.Signals) -> None:
    with subprocess.Popen(
        [sys.executable, "-c", HOLDER], stdout=subprocess.PIPE, text=True
    ) as proc:
        assert proc.stdout is not None
        server = psutil.Process(int(proc.stdout.readline()))
        proc.send_signal(sig)
        assert proc.wait(30) == -sig  # ended by the signal, as without the handler
    _gone, alive = psutil.wait_procs([server], timeout=10)
    assert not alive, alive
