"""``python -m genwire_bench.spancost``: what one span costs a service's process, in CPU.

Makes the spans a stage makes for each record (a ``process`` span with the consumer's
attributes and a ``publish`` span inside it, genwire's attribute names), then encodes them in
batches of the Kafka exporter's size with the SDK's OTLP encoder and with genwire's
(``genwire.telemetry.otlp_wire``), and prints microseconds of process CPU per span for each
step: the best of ``--repeat`` rounds, so other work on the machine inflates it least. It
exits non-zero if the two encoders' messages differ. No server is needed.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable, Sequence

from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans as sdk_encode
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind
from opentelemetry.util.types import AttributeValue

from genwire.telemetry import semconv as sc
from genwire.telemetry.kafka_exporter import MAX_SPANS_PER_MESSAGE
from genwire.telemetry.otlp_wire import encode_spans
from genwire.topics import Topic
from genwire_bench.args import positive_int


def make_spans(records: int) -> tuple[list[ReadableSpan], float]:
    """A stage's two spans per record, and the CPU seconds their making and ending took."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider(
        resource=Resource.create({"service.name": "genwire-inference", "service.version": "1"})
    )
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("genwire.kafka")
    started = time.process_time()
    for offset in range(records):
        consumed: dict[str, AttributeValue] = {
            sc.MESSAGING_SYSTEM: "kafka",
            sc.MESSAGING_DESTINATION: Topic.PREPARED,
            sc.MESSAGING_OPERATION_TYPE: "process",
            sc.MESSAGING_OPERATION_NAME: "process",
            sc.MESSAGING_PARTITION: "3",
            sc.MESSAGING_OFFSET: 1_000_000 + offset,
            sc.MESSAGING_BODY_SIZE: 412,
            sc.STAGE: "inference",
            sc.WAIT_MS: 1.25,
            sc.MESSAGING_CONSUMER_GROUP: "genwire-inference",
            sc.MESSAGING_MESSAGE_KEY: f"req-{offset:08d}",
        }
        with (
            tracer.start_as_current_span(
                sc.process_span_name(Topic.PREPARED), kind=SpanKind.CONSUMER, attributes=consumed
            ),
            tracer.start_as_current_span(
                sc.publish_span_name(Topic.GENERATIONS),
                kind=SpanKind.PRODUCER,
                attributes={
                    sc.MESSAGING_SYSTEM: "kafka",
                    sc.MESSAGING_DESTINATION: Topic.GENERATIONS,
                    sc.MESSAGING_OPERATION_TYPE: "send",
                    sc.MESSAGING_OPERATION_NAME: "publish",
                    sc.MESSAGING_BODY_SIZE: 830,
                    sc.MESSAGING_MESSAGE_KEY: f"req-{offset:08d}",
                },
            ),
        ):
            pass
    return list(exporter.get_finished_spans()), time.process_time() - started


def _batches(spans: Sequence[ReadableSpan]) -> list[Sequence[ReadableSpan]]:
    return [
        spans[i : i + MAX_SPANS_PER_MESSAGE] for i in range(0, len(spans), MAX_SPANS_PER_MESSAGE)
    ]


def per_span_us(
    encode: Callable[[Sequence[ReadableSpan]], bytes], spans: Sequence[ReadableSpan], repeat: int
) -> float:
    """Best of ``repeat`` rounds: process CPU µs per span to encode ``spans`` in batches."""
    best = float("inf")
    batches = _batches(spans)
    for _ in range(repeat):
        started = time.process_time()
        for batch in batches:
            encode(batch)
        best = min(best, time.process_time() - started)
    return best / len(spans) * 1e6


def _sdk_bytes(spans: Sequence[ReadableSpan]) -> bytes:
    return sdk_encode(spans).SerializeToString()


def same_message(spans: Sequence[ReadableSpan]) -> bool:
    """Both encoders' bytes parse to equal messages, batch by batch."""
    return all(
        ExportTraceServiceRequest.FromString(encode_spans(b)) == sdk_encode(b)
        for b in _batches(spans)
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m genwire_bench.spancost", description=__doc__)
    parser.add_argument(
        "-n", "--records", type=positive_int, default=2000, help="records (2 spans each)"
    )
    parser.add_argument(
        "--repeat", type=positive_int, default=5, help="rounds; the best is printed"
    )
    args = parser.parse_args(argv)
    making = float("inf")
    for _ in range(args.repeat):
        spans, seconds = make_spans(args.records)
        making = min(making, seconds)
    if not same_message(spans):
        print("the two encoders' messages differ", file=sys.stderr)
        return 1
    count = len(spans)
    print(f"spans: {count} ({args.records} records), best of {args.repeat} rounds, CPU per span")
    print(f"make and end (attributes, context): {making / count * 1e6:7.1f} µs")
    sdk = per_span_us(_sdk_bytes, spans, args.repeat)
    ours = per_span_us(encode_spans, spans, args.repeat)
    print(f"encode, the SDK's encode_spans:     {sdk:7.1f} µs")
    print(f"encode, genwire's otlp_wire:        {ours:7.1f} µs ({sdk / ours:.1f}x less)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
