"""How a service's spans are batched for export (``configure_tracing``): the default delay, and
the standard ``OTEL_BSP_SCHEDULE_DELAY`` that changes it."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from genwire.settings import ServiceSettings
from genwire.telemetry import setup
from genwire.telemetry.propagation import extract, inject
from genwire.telemetry.setup import (
    OTEL_VARIABLES,
    SCHEDULE_DELAY_MS,
    build_exporter,
    configure_tracing,
)


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


PARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


def test_with_no_exporter_spans_are_still_made_and_only_not_exported(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``OTEL_TRACES_EXPORTER=none`` keeps the SDK: every record still pays for its spans (the
    floor measured 0.16–0.32 core-ms per record per stage at c=1, docs/benchmarks.md)."""
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "none")
    monkeypatch.delenv("OTEL_SDK_DISABLED", raising=False)
    provider = configure_tracing(ServiceSettings(), "t", set_global=False)
    try:
        with provider.get_tracer("t").start_as_current_span("s") as span:
            assert span.is_recording()
        assert provider._active_span_processor._span_processors == ()  # made, sent nowhere
    finally:
        provider.shutdown()


def test_a_disabled_sdk_makes_no_spans_and_passes_the_trace_on(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``OTEL_SDK_DISABLED=true``: no span is made, and what the stage publishes carries the
    upstream ``traceparent`` unchanged, so the stages after it still join the request's trace."""
    monkeypatch.setenv("OTEL_SDK_DISABLED", "true")
    exporter = InMemorySpanExporter()
    provider = configure_tracing(ServiceSettings(), "t", exporter, set_global=False)
    try:
        parent = extract([("traceparent", PARENT.encode())])
        with provider.get_tracer("t").start_as_current_span("s", context=parent) as span:
            assert not span.is_recording()
            headers = dict(inject([]))
        assert headers["traceparent"].decode() == PARENT
        provider.force_flush()
        assert exporter.get_finished_spans() == ()
        # and nothing is set up to export (the Kafka exporter's producer and thread)
        assert provider._active_span_processor._span_processors == ()
    finally:
        provider.shutdown()


def test_an_unknown_exporter_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    """Before, any other value (``otlp,console``, a typo) silently exported to Kafka."""
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "otlp,console")
    with pytest.raises(ValueError, match="OTEL_TRACES_EXPORTER='otlp,console'"):
        build_exporter(ServiceSettings())


def test_otel_traces_sampler_is_honoured_and_not_beside_genwires_ratio(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("OTEL_TRACES_SAMPLER", "always_off")
    provider = configure_tracing(ServiceSettings(), "t", InMemorySpanExporter(), set_global=False)
    try:
        assert not provider.get_tracer("t").start_span("s").get_span_context().trace_flags.sampled
    finally:
        provider.shutdown()
    with pytest.raises(ValueError, match="both set"):
        configure_tracing(
            ServiceSettings(traces_sample_ratio=0.5), "t", InMemorySpanExporter(), set_global=False
        )


def test_every_otel_variable_read_is_in_the_settings_doc() -> None:
    doc = (Path(__file__).parents[2] / "docs" / "settings.md").read_text()
    source = Path(setup.__file__).read_text()
    read = set(re.findall(r'environ\.get\("(OTEL_[A-Z_]+)"', source))
    assert read and read <= set(OTEL_VARIABLES)
    assert all(f"`{name}`" in doc for name in OTEL_VARIABLES)


@pytest.mark.parametrize(
    ("sampler", "arg", "refused"),
    [
        ("traceidratio_typo", None, "no such sampler"),
        ("parentbased_traceidratio", "abc", "a ratio in"),
        ("traceidratio", "1.5", "a ratio in"),
    ],
)
def test_a_sampler_the_sdk_would_replace_by_sampling_everything_is_refused(
    monkeypatch: pytest.MonkeyPatch, sampler: str, arg: str | None, refused: str
) -> None:
    monkeypatch.setenv("OTEL_TRACES_SAMPLER", sampler)
    if arg is None:
        monkeypatch.delenv("OTEL_TRACES_SAMPLER_ARG", raising=False)
    else:
        monkeypatch.setenv("OTEL_TRACES_SAMPLER_ARG", arg)
    with pytest.raises(ValueError, match=refused):
        configure_tracing(ServiceSettings(), "t", InMemorySpanExporter(), set_global=False)
