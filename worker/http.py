"""The worker's HTTP port, served by the Faust app's web server: Prometheus metrics, liveness
and readiness to anyone; customer data (the customer lookup, class populations) only to
callers with the bearer token (SEGMENT_WORKER_HTTP_TOKEN), and not at all without one."""

from __future__ import annotations

import hashlib
import hmac
import logging
from typing import Any, Final

import faust
import orjson
from prometheus_client import CONTENT_TYPE_LATEST
from redis.exceptions import RedisError

from worker.audience import populations
from worker.clock import Clock
from worker.core.packing import CorruptRecord
from worker.core.views import showing
from worker.live import Pipeline
from worker.lookup import look_up
from worker.metrics import Metrics
from worker.store import Store

log = logging.getLogger("segment_worker.http")
CHALLENGE: Final = {"WWW-Authenticate": 'Bearer realm="segment-worker"'}


def authorised(header: str | None, token: str) -> bool:
    """Whether an ``Authorization`` header carries the bearer token. Their SHA-256 digests are
    compared in constant time: 32 bytes against 32, so that timing reveals neither how much of
    a guess is right nor the token's length."""
    scheme, _, given = (header or "").partition(" ")
    same = hmac.compare_digest(_digest(given.strip()), _digest(token))
    return same and scheme.lower() == "bearer"


def _digest(text: str) -> bytes:
    return hashlib.sha256(text.encode()).digest()


def register_routes(
    app: faust.App,
    pipeline: Pipeline,
    *,
    metrics: Metrics,
    store: Store,
    clock: Clock,
    token: str | None,
) -> None:
    if token is None:
        log.warning(
            "customer data is not served (/customers/{id} and /segments answer 404): "
            "set SEGMENT_WORKER_HTTP_TOKEN to serve it to callers with that bearer token"
        )

    def refused(view: Any, request: Any, shown: str) -> Any | None:
        """The answer to a request for customer data that must not get it (``shown``: its
        path as logs may show it); None to serve it."""
        if token is None:
            return view.json({"error": "not found"}, status=404)
        if not authorised(request.headers.get("Authorization"), token):
            log.warning("refused %s %s: no or wrong bearer token", request.method, shown)
            return view.json({"error": "bearer token required"}, status=401, headers=CHALLENGE)
        log.info("%s %s", request.method, shown)
        return None

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
        # The id stays out of logs; a pseudonym (with SEGMENT_WORKER_PSEUDONYM_KEY) may go in.
        who = store.names.name(customer_id) if store.names.key else "<id>"
        denied = refused(view, request, f"/customers/{who}")
        if denied is not None:
            return denied
        partitions = pipeline.input_partitions()
        if partitions is None:
            return view.json({"error": "topic metadata not available yet"}, status=503)
        try:
            show = showing(pipeline.rules, clock.now_ms())
            body = await look_up(store, partitions, customer_id, show)
        except (RedisError, OSError) as exc:  # redis-py's connection errors are RedisErrors
            return view.json({"error": f"redis unavailable: {exc}"}, status=503)
        except CorruptRecord as exc:
            return view.json({"error": str(exc)}, status=500)
        if body is None:
            return view.json({"error": "unknown customer"}, status=404)
        return view.bytes(orjson.dumps(body), content_type="application/json")

    @app.page("/segments")
    async def segments(view: Any, request: Any) -> Any:
        denied = refused(view, request, "/segments")
        if denied is not None:
            return denied
        partitions = pipeline.input_partitions()
        if partitions is None:
            return view.json({"error": "topic metadata not available yet"}, status=503)
        try:
            return view.json(await populations(store, pipeline.rules, partitions))
        except (OSError, RedisError) as exc:
            return view.json({"error": f"redis unavailable: {exc}"}, status=503)

    del metrics_page, healthz, readyz, customer, segments
