"""The chaos run uses the integration tests' broker fixture (``SW_TEST_BROKER`` picks it) and
shows the broker's log when it fails."""

from tests.integration.conftest import broker, pytest_runtest_makereport

__all__ = ["broker", "pytest_runtest_makereport"]
