"""W3C trace context in Kafka headers: inject on publish, extract on consume."""

from __future__ import annotations

from collections.abc import Sequence

from opentelemetry import context as otel_context
from opentelemetry.propagate import extract as otel_extract
from opentelemetry.propagate import inject as otel_inject

KafkaHeaders = list[tuple[str, bytes]]


def inject(headers: KafkaHeaders, ctx: otel_context.Context | None = None) -> KafkaHeaders:
    """Add ``traceparent`` (and ``tracestate``/``baggage``) of ``ctx`` or the current context."""
    carrier: dict[str, str] = {}
    otel_inject(carrier, context=ctx)
    existing = {k for k, _ in headers}
    headers.extend((k, v.encode()) for k, v in carrier.items() if k not in existing)
    return headers


def extract(headers: Sequence[tuple[str, bytes | None]] | None) -> otel_context.Context:
    """The remote context carried by a record's headers (empty context when none); a header
    without a value (Kafka allows it) carries nothing."""
    carrier = {k: v.decode("latin-1") for k, v in headers or () if v is not None}
    return otel_extract(carrier)
