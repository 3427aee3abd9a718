"""`segment-worker demo` runs the whole product and leaves nothing behind when stopped."""

import signal
import subprocess
import sys
import time

import psutil
import pytest

from worker.tools.embedded import free_port

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]


def demo(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "worker",
            "demo",
            "--no-view",
            "--customers",
            "300",
            "--days-per-second",
            "3",
            "--http-port",
            str(free_port()),
            *args,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def descendants(pid: int) -> list[psutil.Process]:
    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []


def test_demo_runs_and_stops_on_its_own() -> None:
    proc = demo("--duration", "15")
    out, err = proc.communicate(timeout=90)
    assert proc.returncode == 0, err
    status = [line for line in out.splitlines() if line.startswith("segment-worker demo")]
    assert len(status) >= 8
    last = status[-1]
    changes = int(last.split("changes ")[1].split()[0].replace(",", ""))
    assert changes > 50, last
    assert "segment changes" in err


def test_ctrl_c_stops_everything_it_started() -> None:
    proc = demo()
    deadline = time.monotonic() + 30
    children: list[psutil.Process] = []
    while time.monotonic() < deadline and len(children) < 2:
        children = descendants(proc.pid)
        time.sleep(0.5)
    assert len(children) >= 2  # the broker and the Redis server
    time.sleep(5)
    proc.send_signal(signal.SIGINT)
    proc.communicate(timeout=60)
    assert proc.returncode == 0
    _gone, alive = psutil.wait_procs(children, timeout=10)
    assert not alive, alive
