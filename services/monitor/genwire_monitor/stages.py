"""Which latency a span contributes, and to which stage.

- a Kafka ``process`` span: the stage's handling time (its duration) and the record's wait in
  the topic before it was picked up (``genwire.kafka.wait_ms``) as stage ``kafka <topic>``;
- ``triton.generate``: Triton's queue and compute times (attributes) and the call itself;
- the gateway's SERVER span: the request as the gateway saw it;
- a SERVER or CONSUMER span of any other service: its duration, under its stage name.
"""

from __future__ import annotations

from genwire.telemetry import semconv as sc
from genwire_monitor.spans import KIND_CONSUMER, KIND_SERVER, SpanView

TRITON = "triton"
TRITON_QUEUE = "triton queue"
TRITON_COMPUTE = "triton compute"
KAFKA_PREFIX = "kafka "

# Display order of the request path; other stages follow alphabetically.
PIPELINE_ORDER: tuple[str, ...] = (
    sc.STAGE_GATEWAY,
    f"{KAFKA_PREFIX}genwire.requests",
    sc.STAGE_PREPROCESS,
    f"{KAFKA_PREFIX}genwire.prepared",
    sc.STAGE_INFERENCE,
    TRITON,
    TRITON_QUEUE,
    TRITON_COMPUTE,
    f"{KAFKA_PREFIX}genwire.generations",
    sc.STAGE_POSTPROCESS,
)


def genwire_stage(stage: str) -> bool:
    """Whether genwire's own spans report ``stage`` (a request-path stage, a ``genwire.*``
    topic's wait): a stage by any other name is a service of the user's own, or a typo."""
    return stage in PIPELINE_ORDER or stage.startswith(f"{KAFKA_PREFIX}genwire.")


def _number(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def observations(span: SpanView) -> list[tuple[str, float]]:
    """``(stage, milliseconds)`` pairs this span contributes (often none)."""
    attrs = span.attrs
    if span.name == sc.SPAN_TRITON_GENERATE:
        out = [(TRITON, span.duration_ms)]
        queue = _number(attrs.get(sc.QUEUE_MS))
        compute = _number(attrs.get(sc.COMPUTE_MS))
        if queue is not None:
            out.append((TRITON_QUEUE, queue))
        if compute is not None:
            out.append((TRITON_COMPUTE, compute))
        return out
    if attrs.get(sc.MESSAGING_OPERATION_TYPE) == "process":
        out = [(span.stage, span.duration_ms)]
        wait = _number(attrs.get(sc.WAIT_MS))
        topic = attrs.get(sc.MESSAGING_DESTINATION)
        if wait is not None and isinstance(topic, str):
            out.append((KAFKA_PREFIX + topic, wait))
        return out
    if span.kind in (KIND_SERVER, KIND_CONSUMER):
        return [(span.stage, span.duration_ms)]
    return []


def ordered(stages: list[str]) -> list[str]:
    """Stages in request-path order, unknown ones after, alphabetically."""
    rank = {name: i for i, name in enumerate(PIPELINE_ORDER)}
    return sorted(stages, key=lambda s: (rank.get(s, len(rank)), s))
