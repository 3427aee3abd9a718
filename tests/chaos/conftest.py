"""The chaos run's broker: a 3-node Apache Kafka cluster (replication factor 3,
``min.insync.replicas=2``), or Tansu with ``SW_TEST_BROKER=tansu``; the broker's log is shown
when the run fails."""

from collections.abc import Iterator

import pytest

from tests.integration.conftest import pytest_runtest_makereport
from worker.tools.apache_kafka import ApacheKafka, chosen_broker
from worker.tools.embedded import Broker

__all__ = ["broker", "pytest_runtest_makereport"]


@pytest.fixture(scope="session")
def broker() -> Iterator[ApacheKafka | Broker]:
    """The broker ``SW_TEST_BROKER`` names; Apache Kafka as a cluster, so that single nodes
    can fail."""
    with chosen_broker(nodes=3) as started:
        yield started
