"""Tracer provider construction: resource, sampler, and the exporter chosen by settings."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping

from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    ConsoleSpanExporter,
    SpanExporter,
)
from opentelemetry.sdk.trace.sampling import ParentBased, Sampler, TraceIdRatioBased

from genwire import __version__
from genwire.settings import CommonSettings
from genwire.telemetry.kafka_exporter import KafkaSpanExporter

SCHEDULE_DELAY_MS = 250
"""How long finished spans wait to be exported together, unless OTEL_BSP_SCHEDULE_DELAY says."""

EXPORTERS = ("kafka", "otlp", "console", "none")
"""What ``OTEL_TRACES_EXPORTER`` may name (one of them); anything else is refused."""

SDK_SAMPLERS = (
    "always_on",
    "always_off",
    "traceidratio",
    "parentbased_always_on",
    "parentbased_always_off",
    "parentbased_traceidratio",
)
"""The samplers ``OTEL_TRACES_SAMPLER`` may name: the ones the SDK's ``TracerProvider`` builds
from it (it does not load the ``opentelemetry_traces_sampler`` entry points: one named there
would be replaced by sampling everything)."""


def _listed(names: tuple[str, ...]) -> str:
    return ", ".join(f"`{name}`" for name in names)


OTEL_VARIABLES: dict[str, str] = {
    "OTEL_SDK_DISABLED": "`true`: no spans are made and none exported (a record's upstream "
    "`traceparent` is passed on unchanged)",
    "OTEL_TRACES_EXPORTER": f"one of {_listed(EXPORTERS)}: `kafka` (the default) writes OTLP "
    "protobuf to `otlp_spans`, read by Jaeger and the monitor; `otlp` is the standard OTLP/gRPC "
    "exporter; `none` makes spans and exports none; any other value is refused at start",
    "OTEL_EXPORTER_OTLP_*": "the standard OTLP exporter's endpoint, headers, TLS and timeout "
    "(with `OTEL_TRACES_EXPORTER=otlp` only)",
    "OTEL_SERVICE_NAME": "replaces the service's `service.name` (Jaeger's service list); the "
    "monitor tells stages apart by their `genwire.stage` attribute, not by it",
    "OTEL_BSP_SCHEDULE_DELAY": f"ms finished spans wait to be exported together (default "
    f"{SCHEDULE_DELAY_MS})",
    "OTEL_TRACES_SAMPLER": "the standard sampler instead of `GENWIRE_TRACES_SAMPLE_RATIO`'s: "
    f"one the SDK builds ({_listed(SDK_SAMPLERS)}); setting both, or naming another, is "
    "refused at start",
    "OTEL_TRACES_SAMPLER_ARG": "the ratio of `traceidratio` / `parentbased_traceidratio`: a "
    "number in [0, 1], else refused at start",
}
"""The standard OpenTelemetry variables the services read (docs/settings.md lists them)."""


def sdk_disabled(environ: Mapping[str, str] | None = None) -> bool:
    """The standard ``OTEL_SDK_DISABLED=true`` (in ``environ``, default the process's): the
    SDK's tracers are no-ops (no span is made; a record's upstream ``traceparent`` is passed on
    unchanged), so there is nothing to export."""
    env = os.environ if environ is None else environ
    return env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true"


def build_exporter(settings: CommonSettings) -> SpanExporter | None:
    """The exporter named by the standard ``OTEL_TRACES_EXPORTER`` (default ``kafka``).

    ``kafka`` writes OTLP protobuf to ``otlp_spans``; ``otlp`` uses the standard OTLP/gRPC
    exporter and its ``OTEL_EXPORTER_OTLP_*`` variables; ``console`` prints; ``none`` disables.
    """
    kind = exporter_kind(os.environ)
    if kind == "none":
        return None
    if kind == "console":
        return ConsoleSpanExporter()
    if kind == "otlp":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

        return OTLPSpanExporter()
    return KafkaSpanExporter(settings.kafka_bootstrap_servers)


def configure_tracing(
    settings: CommonSettings,
    service_name: str,
    exporter: SpanExporter | None = None,
    *,
    set_global: bool = True,
) -> TracerProvider:
    """Build the service's tracer provider; ``OTEL_SERVICE_NAME`` still wins if set."""
    resource = Resource.create(
        {
            "service.name": os.environ.get("OTEL_SERVICE_NAME", service_name),
            "service.namespace": "genwire",
            "service.version": __version__,
        }
    )
    provider = TracerProvider(resource=resource, sampler=_sampler(settings))
    # Disabled: no exporter either (the Kafka one would hold a producer and a thread for nothing)
    chosen = (
        None if sdk_disabled() else (exporter if exporter is not None else build_exporter(settings))
    )
    if chosen is not None:
        # A short delay keeps traces visible in Jaeger within a second of the request; the
        # standard OTEL_BSP_SCHEDULE_DELAY (ms) changes it (each export is one Kafka record per
        # up to 256 spans, sent by the exporter's own thread: docs/benchmarks.md).
        delay = None if os.environ.get("OTEL_BSP_SCHEDULE_DELAY") else SCHEDULE_DELAY_MS
        provider.add_span_processor(BatchSpanProcessor(chosen, schedule_delay_millis=delay))
    if set_global:
        trace.set_tracer_provider(provider)
    return provider


def _sampler(settings: CommonSettings) -> Sampler | None:
    """``GENWIRE_TRACES_SAMPLE_RATIO``'s, or None where ``OTEL_TRACES_SAMPLER`` is set (the SDK
    builds that one; ``sampler_name`` refuses what it would not build as asked)."""
    ratio_set = "traces_sample_ratio" in settings.model_fields_set
    if not sampler_name(os.environ, ratio_set=ratio_set):
        return ParentBased(TraceIdRatioBased(settings.traces_sample_ratio))
    return None


def exporter_kind(environ: Mapping[str, str]) -> str:
    """The exporter ``OTEL_TRACES_EXPORTER`` names in ``environ`` (default ``kafka``);
    ValueError for one genwire does not take (it would export elsewhere without a word)."""
    kind = environ.get("OTEL_TRACES_EXPORTER", "kafka").strip().lower() or "kafka"
    if kind not in EXPORTERS:
        raise ValueError(
            f"OTEL_TRACES_EXPORTER={kind!r}: genwire's services take one of {', '.join(EXPORTERS)}"
        )
    return kind


def sampler_name(environ: Mapping[str, str], *, ratio_set: bool) -> str:
    """The sampler ``OTEL_TRACES_SAMPLER`` names in ``environ`` ('': none, the service's
    ``GENWIRE_TRACES_SAMPLE_RATIO`` samples; ``ratio_set``: that ratio is set). ValueError:
    both set (one would be ignored), a sampler nobody provides, a ratio that is no number in
    [0, 1] (the SDK would fall back to sampling everything)."""
    name = environ.get("OTEL_TRACES_SAMPLER", "").strip().lower()
    if not name:
        return ""
    if ratio_set:
        raise ValueError(
            "OTEL_TRACES_SAMPLER and GENWIRE_TRACES_SAMPLE_RATIO are both set: set one of them"
        )
    if name not in SDK_SAMPLERS:
        raise ValueError(
            f"OTEL_TRACES_SAMPLER={name!r}: no such sampler (the SDK's: "
            f"{', '.join(sorted(SDK_SAMPLERS))})"
        )
    if name.endswith("traceidratio"):
        arg = environ.get("OTEL_TRACES_SAMPLER_ARG", "1.0").strip()
        try:
            ratio = float(arg)
        except ValueError:
            ratio = -1.0
        if not 0.0 <= ratio <= 1.0:
            raise ValueError(f"OTEL_TRACES_SAMPLER_ARG={arg!r}: a ratio in [0, 1]")
    return name


def otel_refusals(environ: Mapping[str, str], *, ratio_set: bool) -> list[str]:
    """What a service would stop at, at start, in the OpenTelemetry variables of ``environ``
    (``exporter_kind``, ``sampler_name``): ``genwire up`` checks them before it starts anything."""
    refused: list[str] = []
    checks: list[Callable[[], str]] = [lambda: sampler_name(environ, ratio_set=ratio_set)]
    if not sdk_disabled(environ):  # disabled: no exporter is built, none named is refused
        checks.insert(0, lambda: exporter_kind(environ))
    for check in checks:
        try:
            check()
        except ValueError as exc:
            refused.append(str(exc))
    return refused
