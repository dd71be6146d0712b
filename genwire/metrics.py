"""Prometheus metrics shared by the Kafka wrapper; each app owns its registry (no globals)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from genwire.telemetry import semconv as sc

LATENCY_BUCKETS: tuple[float, ...] = (
    *(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
    *(60, 120, 300, 600),  # past 30 s: the gateway's default and longest deadlines
)
"""Histogram edges in seconds. The SLO thresholds are edges (0.5, 1, 10: the rules read those
buckets, never an interpolation). The top reaches the gateway's ``max_timeout_s`` (600; its
default deadline is 60): with 30 as the last edge, ``histogram_quantile`` answered 30 s for
every p99 past it, hiding how slow requests got during an incident."""


class ConsumerMetrics:
    """Counters and histograms of one service's consumers."""

    def __init__(self, registry: CollectorRegistry) -> None:
        labels = ["topic", "stage", "outcome"]
        self.messages = Counter(
            sc.METRIC_MESSAGES, "Records processed, by outcome.", labels, registry=registry
        )
        self.duration = Histogram(
            sc.METRIC_PROCESS_SECONDS,
            "Time to process one record, outputs published.",
            ["topic", "stage"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.dlq = Counter(
            sc.METRIC_DLQ,
            "Records sent to the DLQ, by the topic they were read from and reason.",
            ["topic", "stage", "code"],
            registry=registry,
        )
        self.retries = Counter(sc.METRIC_RETRIES, "Handler retries.", ["stage"], registry=registry)
        self.inflight = Gauge(
            sc.METRIC_INFLIGHT, "Records being processed now.", ["stage"], registry=registry
        )
        self.parked = Counter(
            sc.METRIC_RETRY_TOPIC,
            "Records parked on genwire.retry after the outage budget, by reason.",
            ["stage", "code"],
            registry=registry,
        )
        self.dropped = Counter(
            sc.METRIC_OUTPUTS_DROPPED,
            "Outputs of a failure path (a DLQ record even with its value cut, an error result) "
            "that can never be published (Kafka refused them for good as too large, or they "
            'cannot be encoded; topic "(error events)": not even built): logged and dropped, '
            "their record committed.",
            ["stage", "topic"],
            registry=registry,
        )
        self.stalled = Gauge(
            sc.METRIC_PARTITION_STALLED,
            "1 while a partition has work but made no progress for the stall timeout.",
            ["topic", "partition", "stage"],
            registry=registry,
        )
        self.progress_age = Gauge(
            sc.METRIC_COMMIT_AGE,
            "Seconds a partition with work has waited for progress (0: nothing pending).",
            ["topic", "partition", "stage"],
            registry=registry,
        )
        self.producer_unacknowledged = Gauge(
            sc.METRIC_PRODUCER_UNACKED,
            "Seconds the oldest record handed to the service's Kafka producer has waited for "
            "the broker's acknowledgement (0: none waits).",
            ["stage"],
            registry=registry,
        )
        self.producer_stuck = Gauge(
            sc.METRIC_PRODUCER_STUCK,
            "1 while a record handed to the service's Kafka producer has waited the stall "
            "timeout for the broker's acknowledgement (the instance is unready).",
            ["stage"],
            registry=registry,
        )
        self.producer_resets = Counter(
            sc.METRIC_PRODUCER_RESETS,
            "Kafka producer clients replaced after a fatal error (e.g. OutOfOrderSequenceNumber).",
            ["stage"],
            registry=registry,
        )
