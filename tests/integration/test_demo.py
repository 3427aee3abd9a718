"""`segment-worker demo` runs the whole product and leaves nothing behind when stopped."""

import json
import os
import shlex
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence

import psutil
import pytest

from worker.tools.apache_kafka import ApacheKafka
from worker.tools.embedded import Broker
from worker.tools.servers import free_port

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]


def demo(
    *args: str,
    http_port: int | None = None,
    prefix: Sequence[str] = (),
    env: Mapping[str, str] | None = None,
) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [
            *prefix,
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
            str(http_port or free_port()),
            *args,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **(env or {})},
    )


# What a shell does to a job started with ``&``: SIGINT ignored, which survives exec.
BACKGROUND_JOB = ("bash", "-c", 'trap "" INT; exec "$@"', "background-job")


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


@pytest.mark.parametrize(
    ("sig", "prefix"),
    [
        (signal.SIGINT, ()),
        (signal.SIGTERM, ()),  # kill PID
        (signal.SIGHUP, ()),  # the terminal closed
        (signal.SIGINT, BACKGROUND_JOB),
    ],
    ids=["ctrl-c", "sigterm", "sighup", "ctrl-c-in-a-background-job"],
)
def test_a_stop_signal_stops_everything_it_started(
    sig: signal.Signals, prefix: Sequence[str]
) -> None:
    proc = demo(prefix=prefix)
    deadline = time.monotonic() + 30
    children: list[psutil.Process] = []
    while time.monotonic() < deadline and len(children) < 2:
        children = descendants(proc.pid)
        time.sleep(0.5)
    assert len(children) >= 2  # the broker and the Redis server
    time.sleep(5)
    proc.send_signal(sig)
    _out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert "segment changes" in err  # the summary: it went the orderly way out
    _gone, alive = psutil.wait_procs(children, timeout=10)
    assert not alive, alive


def test_it_prints_where_it_listens_and_a_customer_that_exists() -> None:
    port = free_port()
    proc = demo("--duration", "40", http_port=port)
    assert proc.stdout is not None
    try:
        first = proc.stdout.readline()
        url = f"http://127.0.0.1:{port}"
        assert first.startswith(f"segment-worker demo: HTTP {url} ")
        assert f"{url}/metrics" in first
        deadline = time.monotonic() + 30
        listening: list[str] = []
        while not listening and time.monotonic() < deadline:
            time.sleep(0.2)
            listening = [
                c.laddr.ip
                for c in psutil.Process(proc.pid).net_connections()
                if c.status == psutil.CONN_LISTEN and c.laddr.port == port
            ]
        assert listening == ["127.0.0.1"]  # what it prints, not every interface
        line = ""
        while not line.startswith("lookup: "):
            line = proc.stdout.readline()
            assert line, "no lookup hint before the end"
        curl, option, header, address = shlex.split(line.removeprefix("lookup: "))
        assert (curl, option) == ("curl", "-H")
        name, _, value = header.partition(": ")
        assert name == "Authorization" and value.startswith("Bearer ")
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(address, timeout=10)  # customer data needs the token
        assert refused.value.code == 401
        refused.value.close()
        asked = urllib.request.Request(address, headers={name: value})
        with urllib.request.urlopen(asked, timeout=10) as resp:
            assert resp.status == 200
            assert json.loads(resp.read())["customer_id"].startswith("cus_")
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=60)
    assert proc.returncode == 0


def test_a_kafka_given_is_used_with_the_environments_kafka_settings() -> None:
    """--kafka is the user's broker: SEGMENT_WORKER_KAFKA_* apply to it, as they do for run
    (here a SASL protocol without a user name, refused before anything starts)."""
    env = {"SEGMENT_WORKER_KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT"}
    proc = demo("--kafka", f"127.0.0.1:{free_port()}", "--duration", "5", env=env)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 2, err
    assert "bad setting: SEGMENT_WORKER_KAFKA_SASL_USERNAME" in err


def test_a_kafka_it_cannot_reach_is_said_in_one_line() -> None:
    """aiokafka's own error is said in that line, not printed before it."""
    nowhere = f"127.0.0.1:{free_port()}"
    proc = demo("--kafka", nowhere, "--duration", "5")
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 2, err
    [line] = err.splitlines()
    assert line.startswith(
        f'segment-worker: Kafka at {nowhere}: KafkaConnectionError: Unable connect to "{nowhere}"'
    )


def test_a_demo_whose_worker_failed_exits_non_zero(broker: ApacheKafka | Broker) -> None:
    if not isinstance(broker, Broker):
        pytest.skip("only Tansu refuses an idempotent producer (SW_TEST_BROKER=tansu)")
    proc = demo("--kafka", broker.bootstrap, "--duration", "10")
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 1, err
    assert "SEGMENT_WORKER_KAFKA_IDEMPOTENCE" in err
    env = {"SEGMENT_WORKER_KAFKA_IDEMPOTENCE": "false"}  # as that message advises
    proc = demo("--kafka", broker.bootstrap, "--duration", "10", env=env)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
