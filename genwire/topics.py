"""Topic names and their broker configuration, defined once for every service and the stack."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class Topic(StrEnum):
    """Every Kafka topic genwire uses. Values are the names on the broker."""

    REQUESTS = "genwire.requests"
    """User requests (JSON, schema in ``schemas/request.v1.json``), keyed by request id."""
    PREPARED = "genwire.prepared"
    """Validated, tokenized requests: preprocess → inference."""
    GENERATIONS = "genwire.generations"
    """Token-id chunks and the final generation: inference → postprocess."""
    TOKENS = "genwire.tokens"
    """Detokenized text chunks of streamed requests, ending with a final event."""
    RESULTS = "genwire.results"
    """Final results or errors, keyed by request id."""
    CONTROL = "genwire.control"
    """Cancellations and other commands that every inference instance reads."""
    DLQ = "genwire.dlq"
    """Dead letters: poison input (undecodable, invalid), the original bytes, the reason in
    headers. Never an outage: those go to ``genwire.retry``."""
    RETRY = "genwire.retry"
    """Records whose dependency stayed down past the outage budget: the original bytes and
    headers plus ``genwire_retry_*``; their stage replays them after a delay."""
    ALERTS = "genwire.alerts"
    """Alerts raised and resolved by the monitor."""
    SPANS = "otlp_spans"
    """OTLP ``ExportTraceServiceRequest`` protobufs (the OTel Collector kafka exporter's format)."""


@dataclass(frozen=True)
class TopicSpec:
    """Partitions and retention of one topic, applied when the stack creates it."""

    name: str
    partitions: int
    retention_ms: int


HOUR_MS = 3_600_000
DAY_MS = 24 * HOUR_MS

# Three partitions: enough for two or three consumers per stage on a small machine; keyed by
# request id, so every event of a request stays ordered on one partition.
TOPIC_SPECS: tuple[TopicSpec, ...] = (
    TopicSpec(Topic.REQUESTS, 3, 7 * DAY_MS),
    TopicSpec(Topic.PREPARED, 3, DAY_MS),
    TopicSpec(Topic.GENERATIONS, 3, DAY_MS),
    TopicSpec(Topic.TOKENS, 3, DAY_MS),
    TopicSpec(Topic.RESULTS, 3, 7 * DAY_MS),
    TopicSpec(Topic.CONTROL, 1, HOUR_MS),
    TopicSpec(Topic.DLQ, 1, 14 * DAY_MS),
    TopicSpec(Topic.RETRY, 3, 7 * DAY_MS),
    TopicSpec(Topic.ALERTS, 1, 30 * DAY_MS),
    TopicSpec(Topic.SPANS, 3, DAY_MS),
)
