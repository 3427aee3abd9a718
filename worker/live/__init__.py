"""The live worker: Kafka in, Redis state, Kafka out. :class:`Pipeline` is what the service
runs; the modules beside it each own one job (see docs/live-worker.md)."""

from worker.live.pipeline import Pipeline
from worker.live.storage import RedisReset

__all__ = ["Pipeline", "RedisReset"]
