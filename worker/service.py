"""Assembles and runs one worker process: a Faust app (lifecycle, web server, sensors) hosting
the batched pipeline (our aiokafka consumer and producer, Redis) and the HTTP routes."""

from __future__ import annotations

import asyncio
import errno
import gc
import logging
import os
import signal
import tempfile
from functools import partial
from typing import Final, NoReturn

import faust
import mode
from aiokafka.coordinator.assignors.range import RangePartitionAssignor
from faust.app.base import BootStrategy

from worker import kafka, kafka_topics
from worker.clock import Clock, SimulatedClock, WallClock
from worker.core.rules import load_rules
from worker.core.timeutil import parse_rfc3339
from worker.errors import SegmentWorkerError
from worker.http import register_routes
from worker.live import Pipeline
from worker.metrics import Metrics
from worker.redis.client import connect
from worker.settings import PREFIX, PRODUCER_BATCHING, Settings, SettingsError
from worker.startup import start_steps, wait_for_servers
from worker.store import store_for

log = logging.getLogger("segment_worker")
METADATA_MAX_AGE_MS: Final = 30_000
YOUNG_GENERATION: Final = 20_000  # allocations between young collections (Python: 700)


def _unbindable(settings: Settings, exc: OSError) -> SettingsError:
    """A bind failure as the setting to change: the port when it is taken or privileged, the
    host otherwise (it does not resolve, or is not an address of this machine)."""
    port_at_fault = exc.errno in (errno.EADDRINUSE, errno.EACCES)
    name = "HTTP_PORT" if port_at_fault else "HTTP_HOST"
    return SettingsError(
        f"{PREFIX}{name}: cannot listen on {settings.http_host}:{settings.http_port}: "
        f"{exc.strerror or exc}"
    )


def _exit_unfinished(why: str) -> NoReturn:
    log.error(
        "%s: exiting without finishing the stop; the next owner of this worker's partitions "
        "reads what was not committed again from Kafka and relays the outbox from Redis",
        why,
    )
    logging.shutdown()
    os._exit(1)


def _settle_garbage_collector() -> None:
    """The app, clients and modules live as long as the process: freeze them, so that full
    collections (measured at ~50 ms each, a latency tail) stop re-scanning them. A batch
    allocates and frees hundreds of thousands of objects; a larger young generation lets
    them die before a collection promotes them."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(YOUNG_GENERATION, 10, 10)


def clock_of(settings: Settings) -> Clock:
    if settings.clock_start is None:
        if settings.clock_speed != 1.0:
            raise SettingsError("SEGMENT_WORKER_CLOCK_SPEED: needs SEGMENT_WORKER_CLOCK_START")
        return WallClock()
    try:
        start = parse_rfc3339(settings.clock_start)
    except ValueError as exc:
        raise SettingsError(f"SEGMENT_WORKER_CLOCK_START: {exc}") from None
    return SimulatedClock(start, settings.clock_speed)


class _NoFaustKafka(BootStrategy):
    """Faust hosts the services, the web server and the sensors; Kafka is ours (batched
    aiokafka consumer, producer with our SASL/TLS/idempotence settings), because Faust's
    per-event stream costs ~100 us an event on the hot path."""

    enable_kafka = False


class WorkerCrashed(SegmentWorkerError, RuntimeError):
    """Raised when the pipeline stopped on an error it has no handling for (transient Kafka and
    Redis faults are retried, an unreadable state stops only its partition); nothing past it
    was committed, so a restart resumes where it stopped."""


class SegmentApp(faust.App):
    BootStrategy = _NoFaustKafka

    async def on_start(self) -> None:
        # The stock on_start wires Faust's consumer, which this app does not have.
        self.finalize()


class _PipelineService(mode.Service):
    """The consumer loop as a service of the Faust app; stops it gracefully before mode
    cancels anything: the batch in flight finishes, is relayed and committed."""

    def __init__(self, worker: Worker) -> None:
        super().__init__()
        self.worker = worker
        self.done = asyncio.Event()
        self.failure: Exception | None = None

    @mode.Service.task
    async def _serve(self) -> None:
        try:
            await self.worker.serve()
        except SettingsError as exc:  # one line, by the CLI; a traceback would add nothing
            self.failure = exc
        except Exception as exc:  # mode logs it; the process must still exit non-zero
            self.failure = exc
            raise
        finally:
            self.done.set()

    async def on_stop(self) -> None:
        self.worker.pipeline.stop()
        await asyncio.wait_for(self.done.wait(), 60)


class Worker:
    """One worker process: a Faust app hosting the pipeline service and the HTTP port."""

    def __init__(self, settings: Settings, clock: Clock | None = None) -> None:
        self.settings = settings
        self.clock = clock or clock_of(settings)
        self.rules = load_rules(settings.rules)
        self.metrics = Metrics()
        self.redis = connect(settings)
        self.store = store_for(settings, self.redis)
        self.producer = kafka.producer(
            settings, max_request_size=4 * 1024 * 1024, **PRODUCER_BATCHING
        )
        self.consumer = kafka.consumer(
            settings,
            group_id=settings.group_id,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            partition_assignment_strategy=(RangePartitionAssignor,),
            session_timeout_ms=settings.session_timeout_ms,
            heartbeat_interval_ms=settings.heartbeat_interval_ms,
            rebalance_timeout_ms=settings.rebalance_timeout_ms,
            max_poll_interval_ms=settings.max_poll_interval_ms,
            # The broker holds a fetch open until data arrives or this passes; some brokers
            # (Tansu) hold it the full time, so it bounds event-to-change latency.
            fetch_max_wait_ms=max(10, settings.batch_wait_ms),
            # aiokafka asks a partition's old leader where to start until its next metadata
            # refresh (5 min by default) after the leader moved (docs/chaos.md): refresh often.
            metadata_max_age_ms=METADATA_MAX_AGE_MS,
        )
        self.pipeline = Pipeline(
            settings,
            self.rules,
            self.store,
            consumer=self.consumer,
            producer=self.producer,
            reader=partial(
                kafka.consumer, settings, enable_auto_commit=False, fetch_max_wait_ms=50
            ),
            metrics=self.metrics,
            clock=self.clock,
        )
        self._datadir = tempfile.TemporaryDirectory(prefix="segment-worker-")
        self.app = SegmentApp(
            settings.group_id,
            broker=f"kafka://{settings.kafka_bootstrap.split(',')[0]}",
            store="memory://",
            datadir=self._datadir.name,
            autodiscover=False,
            web_enabled=True,
            web_host=settings.http_host,
            web_bind=settings.http_host,
            web_port=settings.http_port,
            topic_disable_leader=True,
            topic_allow_declare=False,
        )
        register_routes(
            self.app,
            self.pipeline,
            metrics=self.metrics,
            store=self.store,
            clock=self.clock,
            token=settings.http_token,
        )
        self.service = _PipelineService(self)
        self.app.service(self.service)  # type: ignore[arg-type]

    async def run(self) -> None:
        """Serve until :meth:`stop` (or SIGTERM/SIGINT when installed), then shut down
        gracefully: finish the batch in flight, relay, commit, leave the group."""
        try:
            await self.app.start()
        except OSError as exc:  # Faust binds the HTTP port first, before any server is asked
            await self.app.stop()
            await self._shutdown()
            self._datadir.cleanup()
            raise _unbindable(self.settings, exc) from None
        _settle_garbage_collector()
        log.info("HTTP on %s:%d", self.settings.http_host, self.settings.http_port)
        try:
            await self.service.done.wait()
        finally:
            await self.app.stop()
            self._datadir.cleanup()
            log.info("stopped")
        if isinstance(self.service.failure, SettingsError):
            raise self.service.failure
        if self.service.failure is not None:
            raise WorkerCrashed(str(self.service.failure)) from self.service.failure

    async def serve(self) -> None:
        try:
            await self._start_clients()
            if not self.pipeline.stopping:
                self.consumer.subscribe(
                    [
                        self.settings.topic_orders,
                        self.settings.topic_visits,
                        self.settings.topic_profiles,
                        self.settings.topic_erasures,
                    ],
                    listener=self.pipeline.listener(),
                )
                await self.pipeline.run()
        finally:
            await self._shutdown()

    def stop(self) -> None:
        self.pipeline.stop()

    def install_signal_handlers(self) -> None:
        """For `run` alone, because a stop that cannot finish ends the process: SIGTERM and
        SIGINT stop gracefully, bounded by SHUTDOWN_TIMEOUT_MS (a Kafka or Redis call that
        keeps failing would otherwise hold the process for good); a second one exits at once.
        Exiting then loses nothing: the next owner starts from the outbox and the input
        offsets in Redis, as after a crash."""
        loop = asyncio.get_running_loop()
        limit = self.settings.shutdown_timeout_ms / 1000

        def on_signal(sig: signal.Signals) -> None:
            if self.pipeline.stopping:
                _exit_unfinished(f"{sig.name} again")
            self.stop()
            loop.call_later(limit, _exit_unfinished, f"still stopping after {limit:g} s")

        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, on_signal, sig)
        loop.add_signal_handler(signal.SIGHUP, self.pipeline.request_reload)

    async def _start_clients(self) -> None:
        """Start Redis and the Kafka clients, waiting for servers that are down; topics that
        are not co-partitioned, or whose partition count is not the one the state in Redis is
        built with, stop the start before anything is consumed or written."""
        counts: dict[str, int] = {}

        async def count_partitions() -> None:
            counts.update(await kafka_topics.partition_counts(self.producer, self.settings))

        async def check_partition_count() -> None:
            if counts:  # co-partitioned: one count (else the topics do not exist yet)
                await self.pipeline.check_partition_count(next(iter(counts.values())))

        steps = start_steps(
            self.settings,
            self.store.library.ensure,
            partial(kafka.start_producer, self.settings, self.producer),
            count_partitions,
            partial(kafka.start_checked, self.settings, self.consumer.start),
            then=check_partition_count,
        )
        await wait_for_servers(
            steps, self.pipeline.stop_requested, lambda: self.metrics.ready.set(0)
        )

    async def _shutdown(self) -> None:
        await self.pipeline.shut_down()  # no batch in flight past this point, its output out
        for step in (self.consumer.stop, self.producer.stop, self.redis.aclose):
            try:
                await step()
            except Exception as exc:  # shutting down: report and go on
                log.warning("shutdown: %s", exc)
