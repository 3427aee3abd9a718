"""The chaos run uses the integration tests' broker fixture."""

from tests.integration.conftest import broker

__all__ = ["broker"]
