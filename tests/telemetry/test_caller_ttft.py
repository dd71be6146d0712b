"""Caller-side TTFT and end to end (issue 16, item 4), without the stack.

A stalled model (Triton paused before it even receives the call) must show in the monitor's
TTFT: the inference stage stamps when the first token was generated
(``genwire.first_token_unix_ms``), and the monitor measures from the request's entry time (the
gateway's receive, or a Kafka client's record timestamp) to that stamp.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator, Mapping

import pytest
from genwire_bench.monitor.simulate import fast_settings
from genwire_bench.monitor.synth import REFERENCE, encode, request_spans
from genwire_inference.backend import ModelStep
from genwire_inference.handlers import Inference
from genwire_monitor.config import LatencySLO
from genwire_monitor.handlers import MonitorEngine
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from genwire.events import PreparedRequest, Sampling, Timings, now_ms
from genwire.telemetry import semconv as sc

STALL_S = 0.4  # Triton paused: the call waits this long before the model receives it
MODEL_TTFT_MS = 5.0  # what the model's own clock says (it never saw the stall)
QUEUE_MS, COMPUTE_MS = 0.5, 8.0  # so the model spent 3.5 ms after its first token
T0 = 1_800_000_000.0


class _Stream:
    def __init__(self, steps: list[ModelStep]) -> None:
        self.steps = steps

    def __aiter__(self) -> AsyncIterator[ModelStep]:
        return self._run()

    async def _run(self) -> AsyncIterator[ModelStep]:
        for step in self.steps:
            yield step

    def cancel(self) -> None:
        pass


class StalledBackend:
    """A model server that is paused for ``STALL_S`` when called, then answers at once."""

    async def open(
        self,
        request: PreparedRequest,
        headers: Mapping[str, str],
        *,
        stream: bool = True,
        min_gap_s: float = 0.0,
        hold_first: bool = False,
    ) -> _Stream:
        await asyncio.sleep(STALL_S)
        if stream:
            steps = [ModelStep(token_ids=[100 + i], logprobs=[-0.5]) for i in range(3)]
        else:
            steps = [ModelStep(token_ids=[100, 101, 102], logprobs=[-0.5] * 3)]
        last = steps[-1]
        last.finished, last.finish_reason = True, "length"
        last.prompt_tokens, last.completion_tokens = 3, 3
        last.queue_ms, last.compute_ms, last.ttft_ms = QUEUE_MS, COMPUTE_MS, MODEL_TTFT_MS
        return _Stream(steps)

    async def wait_ready(self, model: str, version: str, timeout_s: float) -> bool:
        return True

    async def server_ready(self) -> bool:
        return True


@pytest.mark.parametrize("stream", [True, False])
async def test_a_stalled_triton_call_shows_in_the_first_token_stamp(stream: bool) -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    inference = Inference(StalledBackend(), tracer=provider.get_tracer("t"))
    received = now_ms()
    request = PreparedRequest(
        request_id="stalled",
        model="genwire-gpt",
        input_ids=[1, 2, 3],
        sampling=Sampling(max_tokens=3, seed=1, stop=[]),
        stream=stream,
        timings=Timings(received=received, prepared=received),
    )
    [c async for c in inference.handle(request)]
    (span,) = exporter.get_finished_spans()
    attrs = dict(span.attributes or {})
    first_token = attrs[sc.FIRST_TOKEN_UNIX_MS]
    assert isinstance(first_token, float)
    after_first = QUEUE_MS + COMPUTE_MS - MODEL_TTFT_MS if not stream else 0.0
    assert first_token - received >= STALL_S * 1000 - after_first  # waited through the stall
    assert first_token <= now_ms()
    if not stream:  # the model's own TTFT never saw it
        assert attrs[sc.TIME_TO_FIRST_TOKEN_MS] == MODEL_TTFT_MS


def _set(span: Span, key: str, value: float) -> None:
    for kv in span.attributes:
        if kv.key == key:
            kv.value.double_value = value
            return
    span.attributes.append(KeyValue(key=key, value=AnyValue(double_value=value)))


def _engine() -> MonitorEngine:
    return MonitorEngine(
        fast_settings(
            slos=[LatencySLO(name="ttft", stage="ttft", threshold_ms=1000, objective=0.95)]
        )
    )


def test_the_monitors_ttft_runs_from_the_gateways_receive_to_the_first_token() -> None:
    by_service = request_spans(REFERENCE, random.Random(5), int(T0 * 1e9))
    gateway = by_service["genwire-gateway"][0]
    inference = by_service["genwire-inference"][0]
    _set(inference, sc.TIME_TO_FIRST_TOKEN_MS, 14.0)  # the stage's own figure: fast
    # Triton stalled 2.5 s: the first token came 2.5 s after the gateway received the call.
    entry_ms = gateway.start_time_unix_nano / 1e6
    _set(inference, sc.FIRST_TOKEN_UNIX_MS, entry_ms + 2500.0)
    engine = _engine()
    engine.ingest([encode(by_service)], T0)
    engine.complete(T0 + 1)
    ttft = engine.sketch("ttft", T0 + 1)
    assert ttft.count == 1
    assert ttft.get_quantile_value(0.5) == pytest.approx(2500.0, rel=0.02)
    (slo,) = engine.slos
    good, total = slo.ring.window(T0 + 1, 3600 * fast_settings().window_scale)
    assert (good, total) == (0, 1)  # a bad event for the TTFT SLO


def test_a_kafka_clients_wait_in_the_requests_topic_counts_from_its_record_timestamp() -> None:
    by_service = request_spans(REFERENCE, random.Random(6), int(T0 * 1e9))
    del by_service["genwire-gateway"]  # a Kafka client: no gateway span
    preprocess = by_service["genwire-preprocess"][0]
    _set(preprocess, sc.WAIT_MS, 3000.0)  # the record waited 3 s before preprocess took it
    record_ms = preprocess.start_time_unix_nano / 1e6 - 3000.0
    inference = by_service["genwire-inference"][0]
    first_token_ms = inference.start_time_unix_nano / 1e6 + 10.0
    _set(inference, sc.FIRST_TOKEN_UNIX_MS, first_token_ms)
    last_end_ms = max(s.end_time_unix_nano for v in by_service.values() for s in v) / 1e6
    engine = _engine()
    engine.ingest([encode(by_service)], T0)
    engine.complete(T0 + 1)
    e2e = engine.sketch("end_to_end", T0 + 1).get_quantile_value(0.5)
    ttft = engine.sketch("ttft", T0 + 1).get_quantile_value(0.5)
    assert e2e == pytest.approx(last_end_ms - record_ms, rel=0.02)
    assert ttft == pytest.approx(first_token_ms - record_ms, rel=0.02)
    assert ttft > 3000.0
