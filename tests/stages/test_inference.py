"""Inference logic against a fake model server: chunking, finals, cancel, deadlines, retries."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping

import pytest
from genwire_inference.backend import ModelStep
from genwire_inference.handlers import Inference, failure_chunk
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from genwire.errors import PermanentError, RetryableError
from genwire.events import ControlEvent, GenerationChunk, PreparedRequest, Sampling, now_ms
from genwire.telemetry import semconv as sc


class FakeStream:
    def __init__(self, steps: list[ModelStep], delay_s: float, fail_after: int | None) -> None:
        self.steps, self.delay_s, self.fail_after = steps, delay_s, fail_after
        self.cancelled = asyncio.Event()

    def __aiter__(self) -> AsyncIterator[ModelStep]:
        return self._run()

    async def _run(self) -> AsyncIterator[ModelStep]:
        for n, step in enumerate(self.steps):
            if self.fail_after is not None and n == self.fail_after:
                raise RetryableError("triton: UNAVAILABLE")
            try:
                await asyncio.wait_for(self.cancelled.wait(), self.delay_s)
                return  # cancelled: the server stops generating
            except TimeoutError:
                pass
            yield step

    def cancel(self) -> None:
        self.cancelled.set()


class FakeBackend:
    """Streams ``n`` tokens, one per response, the last response flagged final."""

    def __init__(self, n: int = 10, delay_s: float = 0.0, fail_after: int | None = None) -> None:
        self.n, self.delay_s, self.fail_after = n, delay_s, fail_after
        self.opened: list[tuple[PreparedRequest, dict[str, str]]] = []
        self.streams: list[FakeStream] = []
        self.waited: list[float] = []

    async def open(self, request: PreparedRequest, headers: Mapping[str, str]) -> FakeStream:
        self.opened.append((request, dict(headers)))
        steps = [
            ModelStep(token_ids=[100 + i], logprobs=[-0.5], model_version="3")
            for i in range(self.n)
        ]
        steps[-1].finished, steps[-1].finish_reason = True, "length"
        steps[-1].prompt_tokens, steps[-1].completion_tokens = 3, self.n
        steps[-1].queue_ms, steps[-1].compute_ms = 1.5, 12.0
        stream = FakeStream(steps, self.delay_s, self.fail_after)
        self.streams.append(stream)
        return stream

    async def wait_ready(self, model: str, version: str, timeout_s: float) -> bool:
        self.waited.append(timeout_s)
        return True


def _req(
    rid: str = "r1", *, stream: bool = True, deadline_ms: float | None = None
) -> PreparedRequest:
    return PreparedRequest(
        request_id=rid,
        model="genwire-gpt",
        input_ids=[1, 2, 3],
        sampling=Sampling(max_tokens=10, seed=42, stop=["\n"]),
        stream=stream,
        deadline_ms=deadline_ms,
    )


async def _collect(inf: Inference, req: PreparedRequest) -> list[GenerationChunk]:
    return [c async for c in inf.handle(req)]


@pytest.fixture
def spans() -> tuple[InMemorySpanExporter, TracerProvider]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return exporter, provider


async def test_first_token_at_once_then_every_k(
    spans: tuple[InMemorySpanExporter, TracerProvider],
) -> None:
    exporter, provider = spans
    backend = FakeBackend(n=10)
    inf = Inference(
        backend, tracer=provider.get_tracer("t"), chunk_max_tokens=4, chunk_interval_ms=1e6
    )
    chunks = await _collect(inf, _req())
    *mid, final = chunks
    assert [c.token_ids for c in mid] == [[100], [101, 102, 103, 104], [105, 106, 107, 108]]
    assert [c.offset for c in mid] == [0, 1, 5]
    assert [c.index for c in chunks] == [0, 1, 2, 3]
    assert mid[0].sampling is not None and mid[1].sampling is None
    assert final.final and final.token_ids == [109] and final.offset == 9
    assert final.output_ids == [100 + i for i in range(10)]  # everything, for a stateless result
    assert final.finish_reason == "length" and final.completion_tokens == 10
    assert final.model_version == "3" and mid[0].model_version == "3"  # as served
    assert final.prompt_tokens == 3 and final.mean_logprob == pytest.approx(-0.5)
    assert final.timings.triton_queue_ms == 1.5 and final.timings.triton_compute_ms == 12.0
    assert final.timings.first_token is not None and final.timings.inference_end is not None
    (span,) = exporter.get_finished_spans()
    assert span.name == sc.SPAN_TRITON_GENERATE and span.kind == SpanKind.CLIENT
    attrs = dict(span.attributes or {})
    assert attrs[sc.GEN_AI_REQUEST_MODEL] == "genwire-gpt"
    assert attrs[sc.GEN_AI_OUTPUT_TOKENS] == 10 and attrs[sc.GEN_AI_INPUT_TOKENS] == 3
    assert tuple(attrs[sc.GEN_AI_FINISH_REASONS]) == ("length",)  # type: ignore[arg-type]
    assert attrs[sc.QUEUE_MS] == 1.5 and sc.TIME_TO_FIRST_TOKEN_MS in attrs
    # Triton's own trace joins ours: the call carries the span's traceparent
    assert backend.opened[0][1]["traceparent"].split("-")[2] == format(span.context.span_id, "016x")


async def test_time_based_chunking() -> None:
    inf = Inference(FakeBackend(n=6, delay_s=0.01), chunk_max_tokens=100, chunk_interval_ms=0)
    chunks = await _collect(inf, _req())
    assert [len(c.token_ids) for c in chunks[:-1]] == [1] * 5  # interval 0: every response


async def test_non_streaming_sends_only_the_final() -> None:
    (final,) = await _collect(Inference(FakeBackend(n=5)), _req(stream=False))
    assert final.final and final.index == 0 and final.token_ids == final.output_ids
    assert final.output_ids == [100, 101, 102, 103, 104]


async def test_cancel_stops_the_model() -> None:
    backend = FakeBackend(n=1000, delay_s=0.005)
    inf = Inference(backend, chunk_max_tokens=1)
    chunks: list[GenerationChunk] = []

    async def consume() -> None:
        async for c in inf.handle(_req("c1")):
            chunks.append(c)
            if len(chunks) == 3:
                await inf.control(ControlEvent(request_id="c1", action="cancel"))

    await asyncio.wait_for(consume(), 5)
    final = chunks[-1]
    assert final.final and final.finish_reason == "cancelled"
    assert backend.streams[0].cancelled.is_set()
    assert 3 <= final.completion_tokens < 1000
    assert "c1" not in inf.inflight


async def test_cancel_before_the_request_arrives() -> None:
    backend = FakeBackend()
    inf = Inference(backend)
    await inf.control(ControlEvent(request_id="early", action="cancel"))
    (final,) = await _collect(inf, _req("early"))
    assert final.finish_reason == "cancelled" and final.output_ids == []
    assert backend.opened == []


async def test_deadline_stops_and_expired_never_starts() -> None:
    backend = FakeBackend(n=1000, delay_s=0.002)
    inf = Inference(backend)
    chunks = await asyncio.wait_for(_collect(inf, _req("d", deadline_ms=now_ms() + 100)), 5)
    assert chunks[-1].finish_reason == "deadline" and 0 < chunks[-1].completion_tokens < 1000
    (expired,) = await _collect(inf, _req("e", deadline_ms=now_ms() - 1))
    assert expired.error is not None and expired.error.code == "deadline_exceeded"
    assert len(backend.opened) == 1


async def test_unavailable_waits_for_the_model_then_retries() -> None:
    backend = FakeBackend(n=5, fail_after=2)
    inf = Inference(backend, triton_wait_s=7.0, chunk_max_tokens=1)
    got: list[GenerationChunk] = []
    with pytest.raises(RetryableError):
        async for c in inf.handle(_req("u")):
            got.append(c)
    assert backend.waited == [7.0] and "u" not in inf.inflight
    assert [c.index for c in got] == [0, 1]  # a retry regenerates the same indices


async def test_duplicate_in_flight_is_dropped() -> None:
    inf = Inference(FakeBackend(n=20, delay_s=0.005))
    first = asyncio.create_task(_collect(inf, _req("same")))
    await asyncio.sleep(0.02)
    assert await _collect(inf, _req("same")) == []
    assert (await first)[-1].final


def test_failure_chunk() -> None:
    err = PermanentError("triton: bad input", code="inference_failed")
    (chunk,) = failure_chunk(_req("f"), None, err)
    assert chunk.final and chunk.stream and chunk.error is not None
    assert chunk.error.code == "inference_failed"
    assert failure_chunk(None, "k", err)[0].request_id == "k"
    assert failure_chunk(None, None, err) == []
