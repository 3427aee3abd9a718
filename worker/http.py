"""The worker's HTTP port, served by the Faust app's web server: Prometheus metrics, liveness,
readiness and the customer lookup."""

from __future__ import annotations

from typing import Any

import faust
import orjson
from prometheus_client import CONTENT_TYPE_LATEST
from redis.exceptions import RedisError

from worker.clock import Clock
from worker.core.codec import CorruptRecord
from worker.core.timeutil import day_of
from worker.live import Pipeline
from worker.lookup import look_up
from worker.metrics import Metrics
from worker.store import Store


def register_routes(
    app: faust.App, pipeline: Pipeline, *, metrics: Metrics, store: Store, clock: Clock
) -> None:
    @app.page("/metrics")
    async def metrics_page(view: Any, request: Any) -> Any:
        return view.bytes(metrics.exposition(), headers={"Content-Type": CONTENT_TYPE_LATEST})

    @app.page("/healthz")
    async def healthz(view: Any, request: Any) -> Any:
        return view.json({"status": "alive"})

    @app.page("/readyz")
    async def readyz(view: Any, request: Any) -> Any:
        if pipeline.ready:
            return view.json({"status": "ready", "partitions": pipeline.owned_partitions()})
        stopped = pipeline.stopped_partitions()
        if not pipeline.healthy:
            why = "kafka or redis unavailable"
        elif stopped:
            why = f"partitions {stopped} stopped on a state they cannot read"
        else:
            why = "no partitions assigned"
        return view.json({"status": "not ready", "reason": why}, status=503)

    @app.page("/customers/{customer_id}")
    async def customer(view: Any, request: Any, customer_id: str) -> Any:
        partitions = pipeline.input_partitions()
        if partitions is None:
            return view.json({"error": "topic metadata not available yet"}, status=503)
        try:
            body = await look_up(
                store, pipeline.rules, partitions, customer_id, day_of(clock.now_ms())
            )
        except (RedisError, OSError) as exc:  # redis-py's connection errors are RedisErrors
            return view.json({"error": f"redis unavailable: {exc}"}, status=503)
        except CorruptRecord as exc:
            return view.json({"error": str(exc)}, status=500)
        if body is None:
            return view.json({"error": "unknown customer"}, status=404)
        return view.bytes(orjson.dumps(body), content_type="application/json")

    del metrics_page, healthz, readyz, customer
