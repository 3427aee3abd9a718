"""The pinned Apache Kafka's jars, fetched once with Maven, and the java that runs them."""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Final

from worker.errors import SegmentWorkerError

KAFKA_DIR: Final = Path(__file__).resolve().parents[2] / "deploy" / "kafka"
POM: Final = KAFKA_DIR / "pom.xml"


class BrokerUnavailable(SegmentWorkerError, RuntimeError):
    """Raised when the Apache Kafka broker cannot be fetched or started (no Java, no Maven,
    a failed download, a node that exits or never serves)."""


def kafka_version() -> str:
    """The broker version pinned in deploy/kafka/pom.xml."""
    if not POM.is_file():
        raise BrokerUnavailable(f"{POM} not found: Apache Kafka runs from a source checkout")
    found = re.search(r"<kafka\.version>([^<]+)</kafka\.version>", POM.read_text())
    if found is None:
        raise BrokerUnavailable(f"{POM}: no <kafka.version>")
    return found.group(1).strip()


def cache_root() -> Path:
    """Where fetched brokers are kept: ``$SW_KAFKA_CACHE``, else the user's cache folder."""
    if os.environ.get("SW_KAFKA_CACHE"):
        return Path(os.environ["SW_KAFKA_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "segment-worker"


def _require(program: str, why: str) -> str:
    found = shutil.which(program)
    if found is None:
        raise BrokerUnavailable(f"{program} not found on PATH: {why} (or SW_TEST_BROKER=tansu)")
    return found


def broker_jars(root: Path | None = None) -> Path:
    """The folder of the pinned broker's jars, resolved with Maven on first use.

    The folder's name carries the version and a hash of the pom, so editing the pom fetches
    again; it appears complete or not at all (built aside, then renamed), so concurrent
    test runs cannot see half of it.
    """
    root = root or cache_root()
    digest = hashlib.sha256(POM.read_bytes()).hexdigest()[:10]
    target = root / f"kafka-{kafka_version()}-{digest}"
    if target.is_dir():
        return target
    mvn = _require("mvn", "Maven fetches the Apache Kafka broker")
    root.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=root))
    argv = [mvn, "-q", "-B", "-f", str(POM), "dependency:copy-dependencies"]
    result = subprocess.run(
        [*argv, f"-DoutputDirectory={staging}"], capture_output=True, text=True, check=False
    )
    if result.returncode != 0 or not any(staging.glob("kafka_2.13-*.jar")):
        shutil.rmtree(staging, ignore_errors=True)
        raise BrokerUnavailable(
            f"{' '.join(argv)} failed:\n{(result.stdout + result.stderr)[-3000:]}"
        )
    try:
        staging.rename(target)
    except OSError:  # another process got there first
        shutil.rmtree(staging, ignore_errors=True)
    return target


def java_binary() -> str:
    """``$JAVA_HOME/bin/java``, else ``java`` from PATH."""
    if os.environ.get("JAVA_HOME"):
        java = Path(os.environ["JAVA_HOME"]) / "bin" / "java"
        if not os.access(java, os.X_OK):
            raise BrokerUnavailable(f"JAVA_HOME={os.environ['JAVA_HOME']}: no {java}")
        return str(java)
    return _require("java", "the Apache Kafka broker is a JVM (OpenJDK 17+)")
