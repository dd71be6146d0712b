"""How a service's spans are batched for export (``configure_tracing``): the default delay, and
the standard ``OTEL_BSP_SCHEDULE_DELAY`` that changes it."""

from __future__ import annotations

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from genwire.settings import ServiceSettings
from genwire.telemetry.setup import SCHEDULE_DELAY_MS, configure_tracing


def _delay_ms(provider: TracerProvider) -> float:
    processors = provider._active_span_processor._span_processors
    (batch,) = [p for p in processors if isinstance(p, BatchSpanProcessor)]
    return float(batch._batch_processor._schedule_delay_millis)


def test_spans_wait_the_default_delay_to_be_exported_together(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("OTEL_BSP_SCHEDULE_DELAY", raising=False)
    provider = configure_tracing(ServiceSettings(), "t", InMemorySpanExporter(), set_global=False)
    try:
        assert _delay_ms(provider) == SCHEDULE_DELAY_MS
    finally:
        provider.shutdown()


def test_otel_bsp_schedule_delay_overrides_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", "1000")
    provider = configure_tracing(ServiceSettings(), "t", InMemorySpanExporter(), set_global=False)
    try:
        assert _delay_ms(provider) == 1000
    finally:
        provider.shutdown()
