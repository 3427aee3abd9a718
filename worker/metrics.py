"""Prometheus metrics: what an SRE needs to see the worker's health at a glance.

One registry per worker (tests run several in a process). No label ever carries a customer
id: label values are topics, partitions, reasons, dimensions and class names, all bounded.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5)
EMIT_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 300, 3600)
SIZE_BUCKETS = (1, 10, 50, 100, 250, 500, 1000, 2500, 5000, 10000)


class Metrics:
    def __init__(self) -> None:
        self.registry = r = CollectorRegistry()
        p = "segment_worker_"
        self.events = Counter(
            p + "events",
            "Input events consumed, by topic and outcome",
            ["topic", "outcome"],
            registry=r,
        )
        self.dead_letters = Counter(
            p + "dead_letters",
            "Events sent to the dead-letter topic, by reason",
            ["reason"],
            registry=r,
        )
        self.transitions = Counter(
            p + "transitions",
            "Segment changes emitted",
            ["dimension", "from_class", "to_class"],
            registry=r,
        )
        self.withheld = Counter(
            p + "suppressed_changes",
            "Segment changes withheld while a customer's consent is withdrawn ([consent])",
            ["dimension"],
            registry=r,
        )
        self.population = Gauge(
            p + "class_population",
            "Customers per class in the partitions this worker owns",
            ["dimension", "class_name"],
            registry=r,
        )
        self.batch_size = Histogram(
            p + "batch_size",
            "Records per processed partition batch",
            buckets=SIZE_BUCKETS,
            registry=r,
        )
        self.batch_seconds = Histogram(
            p + "batch_processing_seconds",
            "Time from a batch's arrival to its offsets being committed",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.emit_seconds = Histogram(
            p + "event_to_emit_seconds",
            "From an input event's broker timestamp to its segment change acknowledged",
            buckets=EMIT_BUCKETS,
            registry=r,
        )
        self.redis_seconds = Histogram(
            p + "redis_call_seconds",
            "Redis call latency",
            ["op"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.redis_errors = Counter(p + "redis_errors", "Failed Redis calls", ["op"], registry=r)
        self.kafka_errors = Counter(p + "kafka_errors", "Failed Kafka calls", ["op"], registry=r)
        self.lag = Gauge(
            p + "consumer_lag",
            "Records behind the partition end",
            ["topic", "partition"],
            registry=r,
        )
        self.timer_backlog = Gauge(
            p + "timer_backlog",
            "Customers whose class change is due and not yet processed",
            registry=r,
        )
        self.timer_delay = Histogram(
            p + "timer_delay_seconds",
            "How late due customers were processed",
            buckets=EMIT_BUCKETS,
            registry=r,
        )
        self.timers = Counter(p + "timers_fired", "Due customers re-evaluated", registry=r)
        self.fenced = Counter(
            p + "fenced_writes",
            "Commits refused because another worker owns the partition",
            registry=r,
        )
        self.reconciled = Counter(
            p + "reconciled_classes",
            "Classes set from changes found in Kafka that a Redis which lost writes forgot",
            registry=r,
        )
        self.readback_rejected = Counter(
            p + "readback_rejected",
            "Change-topic records not trusted on taking a partition (skipped), by reason",
            ["reason"],
            registry=r,
        )
        self.redelivered = Counter(
            p + "redelivered_records",
            "Input records skipped because Redis already holds their effect",
            registry=r,
        )
        self.relayed = Counter(
            p + "outbox_relayed", "Outbox records produced to Kafka", ["topic"], registry=r
        )
        self.partitions = Gauge(
            p + "assigned_partitions", "Input partitions this worker owns", registry=r
        )
        self.ready = Gauge(
            p + "ready", "1 when connected to Kafka and Redis and assigned", registry=r
        )
        self.stopped = Gauge(
            p + "stuck_partitions",
            "Owned partitions stopped on a stored state this worker cannot read",
            registry=r,
        )
        self.redis_resets = Counter(
            p + "redis_resets",
            "Redis came back as a restarted server: partitions taken again from its offsets",
            registry=r,
        )
        self.erasures = Counter(
            p + "erasures",
            "Customers erased on request (state, due entry, tombstone)",
            registry=r,
        )
        self.rules_reloads = Counter(
            p + "rules_reloads",
            "Rules file reloads, applied or rejected",
            ["outcome"],
            registry=r,
        )
        self.reevaluated = Counter(
            p + "rules_reevaluated", "Customers re-classified after a rules change", registry=r
        )
        self.reevaluation_pending = Gauge(
            p + "rules_reevaluation_pending_partitions",
            "Owned partitions whose customers are not all re-classified under the current rules",
            registry=r,
        )
        self.rules_info = Gauge(
            p + "rules_info", "The rules version in use (value 1)", ["version"], registry=r
        )

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
