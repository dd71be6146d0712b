"""Topic names and their broker configuration, defined once for every service and the stack."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class Topic(StrEnum):
    """Every Kafka topic genwire uses. Values are the names on the broker."""

    REQUESTS = "genwire.requests"
    """User requests (JSON, schema ``schemas/request.v2.json``; v1 read), keyed by request id."""
    PREPARED = "genwire.prepared"
    """Validated, tokenized requests: preprocess → inference."""
    GENERATIONS = "genwire.generations"
    """Token-id chunks and the final generation: inference → postprocess."""
    TOKENS = "genwire.tokens"
    """Detokenized text chunks of streamed requests, ending with a final event."""
    RESULTS = "genwire.results"
    """Final results or errors, keyed by request id."""
    REPLIES = "genwire.replies"
    """Direct replies: a request's token chunks and result, on the partition its gateway
    instance owns and named in the request's ``genwire_reply_to`` header (not keyed by
    partitioner: each record goes to the partition the header names)."""
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
    ALERT_STATE = "genwire.alert-state"
    """Compacted: the monitor's latest alert event per alert id (firing or resolved, never a
    tombstone), read back when it starts."""
    CONFIG = "genwire.config"
    """Compacted: each model's serving policy (aliases, routing weights, sticky key, shadow),
    keyed by model name (``genwire.policy.ModelPolicy``); every stage follows it live."""
    SHADOW = "genwire.shadow"
    """Results of shadow copies of requests (same request id), kept apart from
    ``genwire.results``: they never reach a caller."""
    FEEDBACK = "genwire.feedback"
    """Caller feedback (rating, label, correction) keyed by request id."""
    USAGE = "genwire.usage"
    """One usage event per completed request (key name, model, version, tokens, latency)."""
    SPANS = "otlp_spans"
    """OTLP ``ExportTraceServiceRequest`` protobufs (the OTel Collector kafka exporter's format)."""


@dataclass(frozen=True)
class TopicSpec:
    """Partitions and retention of one topic, applied when the stack creates it."""

    name: str
    partitions: int
    retention_ms: int
    compact: bool = False  # cleanup.policy=compact: the latest record per key is kept


MAX_RECORD_BYTES = 16 * 1024 * 1024
"""Every topic's ``max.message.bytes`` and the producers' largest request (long prompts)."""

HOUR_MS = 3_600_000
REPLY_PARTITIONS = 24
"""Partitions of ``genwire.replies``: the most gateway instances that each own one."""
DAY_MS = 24 * HOUR_MS

# Three partitions: enough for two or three consumers per stage on a small machine; keyed by
# request id, so every event of a request stays ordered on one partition.
TOPIC_SPECS: tuple[TopicSpec, ...] = (
    TopicSpec(Topic.REQUESTS, 3, 7 * DAY_MS),
    TopicSpec(Topic.PREPARED, 3, DAY_MS),
    TopicSpec(Topic.GENERATIONS, 3, DAY_MS),
    TopicSpec(Topic.TOKENS, 3, DAY_MS),
    TopicSpec(Topic.RESULTS, 3, 7 * DAY_MS),
    # One partition per gateway instance at least: the gateways' reply readers share them in
    # one consumer group, so this is the most gateway instances that get direct replies.
    # Replies are worth seconds; an hour is plenty for a reader that lags.
    TopicSpec(Topic.REPLIES, REPLY_PARTITIONS, HOUR_MS),
    TopicSpec(Topic.CONTROL, 1, HOUR_MS),
    TopicSpec(Topic.DLQ, 1, 14 * DAY_MS),
    TopicSpec(Topic.RETRY, 3, 7 * DAY_MS),
    TopicSpec(Topic.ALERTS, 1, 30 * DAY_MS),
    TopicSpec(Topic.ALERT_STATE, 1, 30 * DAY_MS, compact=True),
    TopicSpec(Topic.CONFIG, 1, 3650 * DAY_MS, compact=True),
    TopicSpec(Topic.SHADOW, 3, 7 * DAY_MS),
    TopicSpec(Topic.FEEDBACK, 3, 90 * DAY_MS),
    TopicSpec(Topic.USAGE, 3, 90 * DAY_MS),
    TopicSpec(Topic.SPANS, 3, DAY_MS),
)


REPLY_TO_MAX_BYTES = 256
"""Longest ``genwire_reply_to`` value read; a longer one is malformed."""


@dataclass(frozen=True)
class ReplyTo:
    """Where a request's replies go: a partition of a reply topic (``<topic>:<partition>``)."""

    topic: str
    partition: int

    def encode(self) -> bytes:
        """The header value."""
        return f"{self.topic}:{self.partition}".encode()

    @classmethod
    def parse(cls, raw: bytes) -> ReplyTo:
        """Read a ``genwire_reply_to`` value; ``ValueError`` when it is not ``<topic>:<n>``."""
        if len(raw) > REPLY_TO_MAX_BYTES:
            raise ValueError(f"longer than {REPLY_TO_MAX_BYTES} bytes")
        try:
            text = raw.decode("ascii")
        except UnicodeDecodeError:
            raise ValueError("not ASCII") from None
        topic, sep, partition = text.rpartition(":")
        if not sep or not topic or not partition.isdigit() or len(partition) > 9:
            raise ValueError(f"not <topic>:<partition>: {text[:80]!r}")
        if not all(c.isalnum() or c in "._-" for c in topic):
            raise ValueError(f"not a topic name: {topic[:80]!r}")
        return cls(topic, int(partition))
