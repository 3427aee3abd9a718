"""`bench/latency.py --path-cpu`: the timed path alone on one CPU, the rest of the run on the
others (worker/tools/livesetup.py)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from worker.tools.livesetup import pin

CPUS = sorted(os.sched_getaffinity(0))
pytestmark = pytest.mark.skipif(len(CPUS) < 2, reason="needs two CPUs")


def _run(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=False, timeout=60
    )


def test_keep_off_leaves_the_cpu_to_the_timed_path_and_children_inherit_it() -> None:
    code = (
        "import os, subprocess, sys\n"
        "from worker.tools.livesetup import keep_off\n"
        f"keep_off({CPUS[-1]})\n"
        "child = subprocess.run([sys.executable, '-c', "
        "'import os; print(sorted(os.sched_getaffinity(0)))'], capture_output=True, text=True)\n"
        "print(sorted(os.sched_getaffinity(0)), child.stdout.strip())\n"
    )
    done = _run(code)
    assert done.returncode == 0, done.stderr
    rest = str(CPUS[:-1])
    assert done.stdout.split() == [*rest.split(), *rest.split()]


@pytest.mark.parametrize("cpu", [len(CPUS) + 64, -1])
def test_keep_off_refuses_a_cpu_it_does_not_have(cpu: int) -> None:
    done = _run(f"from worker.tools.livesetup import keep_off\nkeep_off({cpu})\n")
    assert done.returncode != 0
    assert f"CPU {cpu} is not one of this process's" in done.stderr


def test_pin_moves_a_running_process_to_one_cpu() -> None:
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        pin(sleeper.pid, CPUS[0])
        assert os.sched_getaffinity(sleeper.pid) == {CPUS[0]}
    finally:
        sleeper.kill()
        sleeper.wait()
