"""Inference logic against a fake model server: chunking, finals, cancel, deadlines, retries."""

from __future__ import annotations

import asyncio
import types
from collections.abc import AsyncIterator, Mapping

import pytest
from genwire_inference import control
from genwire_inference.backend import ModelStep
from genwire_inference.control import MAX_REASON_CHARS
from genwire_inference.handlers import Inference, failure_chunk
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from genwire.errors import GenwireError, PermanentError, Rejection, RetryableError
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

    def __init__(
        self,
        n: int = 10,
        delay_s: float = 0.0,
        fail_after: int | None = None,
        stream_cls: type[FakeStream] = FakeStream,
    ) -> None:
        self.n, self.delay_s, self.fail_after = n, delay_s, fail_after
        self.stream_cls = stream_cls
        self.opened: list[tuple[PreparedRequest, dict[str, str]]] = []
        self.streams: list[FakeStream] = []
        self.waited: list[float] = []
        self.stream_flags: list[bool] = []
        self.gaps: dict[str, float] = {}  # request id → the min_gap_s it was opened with
        self.held: dict[str, bool] = {}  # request id → the hold_first it was opened with

    async def open(
        self,
        request: PreparedRequest,
        headers: Mapping[str, str],
        *,
        stream: bool = True,
        min_gap_s: float = 0.0,
        hold_first: bool = False,
    ) -> FakeStream:
        self.opened.append((request, dict(headers)))
        self.stream_flags.append(stream)
        self.gaps[request.request_id] = min_gap_s
        self.held[request.request_id] = hold_first
        if not stream:  # one final response with every token, like the real model
            ids = [100 + i for i in range(self.n)]
            step = ModelStep(token_ids=ids, logprobs=[-0.5] * self.n, model_version="3")
            step.finished, step.finish_reason = True, "length"
            step.prompt_tokens, step.completion_tokens = 3, self.n
            step.queue_ms, step.compute_ms, step.ttft_ms = 1.0, 10.0, 4.0
            fake = FakeStream([step], self.delay_s, self.fail_after)
            self.streams.append(fake)
            return fake
        steps = [
            ModelStep(token_ids=[100 + i], logprobs=[-0.5], model_version="3")
            for i in range(self.n)
        ]
        steps[-1].finished, steps[-1].finish_reason = True, "length"
        steps[-1].prompt_tokens, steps[-1].completion_tokens = 3, self.n
        steps[-1].queue_ms, steps[-1].compute_ms = 1.5, 12.0
        streamed = self.stream_cls(steps, self.delay_s, self.fail_after)
        self.streams.append(streamed)
        return streamed

    async def wait_ready(self, model: str, version: str, timeout_s: float) -> bool:
        self.waited.append(timeout_s)
        return True

    async def server_ready(self) -> bool:
        return True


def _req(
    rid: str = "r1",
    *,
    stream: bool = True,
    deadline_ms: float | None = None,
    stop: tuple[str, ...] = ("\n",),
) -> PreparedRequest:
    return PreparedRequest(
        request_id=rid,
        model="genwire-gpt",
        input_ids=[1, 2, 3],
        sampling=Sampling(max_tokens=10, seed=42, stop=list(stop)),
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


class _StepClock:
    """``time`` for the handlers module: every reading is one model response later (1/64 s,
    exact in binary), so the chunk budget's arithmetic is deterministic."""

    def __init__(self) -> None:
        self.t = 0.0

    def perf_counter(self) -> float:
        self.t += 1 / 64
        return self.t


@pytest.mark.parametrize(
    ("budget", "stream", "sizes"),
    [
        (0.0, True, [1] * 9),
        (16.0, True, [1, 4, 4]),
        # A response 5 % early (4 readings of a 4.2-reading spacing) is due: the model spaces
        # them by its clock, and one a hair early must not wait a whole spacing more.
        (64 / 4.2, True, [1, 4, 4]),
        # Unstreamed, chunked for its stop sequence only: never held (the stop is found
        # sooner, and the model cancelled sooner).
        (16.0, False, [1] * 9),
    ],
)
async def test_the_chunk_budget_makes_each_chunk_carry_more(
    monkeypatch: pytest.MonkeyPatch, budget: float, stream: bool, sizes: list[int]
) -> None:
    from genwire_inference import handlers

    monkeypatch.setattr(handlers, "time", _StepClock())
    inf = Inference(
        FakeBackend(n=10), chunk_max_tokens=1, chunk_interval_ms=0, stream_chunks_per_s=budget
    )
    *mid, final = await _collect(inf, _req(stream=stream, stop=("x",)))
    # One stream alone gets the whole budget: 16 per second = 4 responses of 1/64 s apart.
    # The first token still goes at once; nothing is lost (the final carries the rest).
    assert [len(c.token_ids) for c in mid] == sizes
    assert [t for c in [*mid, final] for t in c.token_ids] == final.output_ids
    assert [c.index for c in [*mid, final]] == list(range(len(mid) + 1))


@pytest.mark.parametrize(
    ("live_before", "joining", "budget", "tokens", "sizes"),
    [
        # Opened with 6 others generating (7/112 s: 4 responses apart), 8 streams later
        # (share 8/112 s, 4.6 responses): each response is due, not every other one.
        (6, 1, 112.0, 14, [1, 4, 4, 4]),
        # Opened alone (1/64 s: every response), 8 streams later (share 8/64 s): held for 8
        # responses, the share, not for the spacing asked when it started.
        (0, 7, 64.0, 18, [1, 8, 8]),
    ],
)
async def test_a_streams_chunks_keep_to_whole_spacings_of_its_model_responses(
    monkeypatch: pytest.MonkeyPatch,
    live_before: int,
    joining: int,
    budget: float,
    tokens: int,
    sizes: list[int],
) -> None:
    """The model spaces the responses by the gap asked when the request started; the budget's
    share moves with the streams generating. A chunk waits for the whole number of those
    spacings nearest the share (less the slack)."""
    from genwire_inference import handlers

    monkeypatch.setattr(handlers, "time", _StepClock())
    inf = Inference(
        FakeBackend(n=tokens), chunk_max_tokens=1, chunk_interval_ms=0, stream_chunks_per_s=budget
    )
    inf.live_streams = live_before  # other streams generating when it starts
    gen = inf.handle(_req(stop=("x",)))
    first = await anext(gen)
    inf.live_streams += joining  # more start generating
    assert inf.chunk_gap_s() == pytest.approx((live_before + 1 + joining) / budget)
    rest = [c async for c in gen]
    assert [len(c.token_ids) for c in [first, *rest[:-1]]] == sizes
    assert rest[-1].final and rest[-1].output_ids == [100 + i for i in range(tokens)]


def test_the_chunk_budget_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    from genwire_inference.config import InferenceSettings

    assert InferenceSettings().stream_chunks_per_s == 100.0
    monkeypatch.setenv("GENWIRE_INFERENCE_STREAM_CHUNKS_PER_S", "0")
    assert InferenceSettings().stream_chunks_per_s == 0.0  # off
    monkeypatch.setenv("GENWIRE_INFERENCE_STREAM_CHUNKS_PER_S", "-1")
    with pytest.raises(ValueError):
        InferenceSettings()


async def test_the_live_streams_share_the_chunk_budget() -> None:
    inf = Inference(FakeBackend(n=200, delay_s=0.002), stream_chunks_per_s=50)
    assert inf.chunk_gap_s() == 0.0
    chunks = {rid: asyncio.Event() for rid in ("one", "two", "stops", "plain")}

    async def run(req: PreparedRequest) -> None:
        async for _ in inf.handle(req):
            chunks[req.request_id].set()

    tasks = [
        asyncio.create_task(run(_req("one", stop=()))),
        asyncio.create_task(run(_req("two", stop=()))),
        asyncio.create_task(run(_req("stops", stream=False, stop=("x",)))),  # chunked
        asyncio.create_task(run(_req("plain", stream=False, stop=()))),  # one final chunk
    ]
    await asyncio.wait_for(asyncio.gather(*(chunks[r].wait() for r in ("one", "two"))), 5)
    await asyncio.wait_for(chunks["stops"].wait(), 5)
    assert inf.live_streams == 2  # the streamed ones: what the budget spaces
    assert inf.chunk_gap_s() == pytest.approx(2 / 50)
    await inf.control(ControlEvent(request_id="one", action="cancel"))
    await asyncio.wait_for(asyncio.gather(*tasks), 10)
    assert inf.live_streams == 0 and inf.chunk_gap_s() == 0.0


@pytest.mark.parametrize("budget", [50.0, 0.0])
async def test_the_model_is_asked_to_space_a_streams_responses_as_the_budget_would(
    budget: float,
) -> None:
    """Streamed: the spacing the budget gives with the new request's choices counted too (the
    model would otherwise send responses merged here into one chunk); others: none asked."""
    backend = FakeBackend(n=200, delay_s=0.002)
    inf = Inference(backend, stream_chunks_per_s=budget)
    first = asyncio.Event()

    async def run(req: PreparedRequest) -> None:
        async for _ in inf.handle(req):
            first.set()

    tasks = [asyncio.create_task(run(_req("one", stop=())))]
    await asyncio.wait_for(first.wait(), 5)  # "one" generates: one live stream
    two = _req("two", stop=())
    two.sampling.n = 2
    tasks += [
        asyncio.create_task(run(two)),
        asyncio.create_task(run(_req("stops", stream=False, stop=("x",)))),
        asyncio.create_task(run(_req("plain", stream=False, stop=()))),
    ]
    await asyncio.sleep(0.05)
    for rid in ("one", "two", "stops", "plain"):
        await inf.control(ControlEvent(request_id=rid, action="cancel"))
    await asyncio.wait_for(asyncio.gather(*tasks), 10)
    expected = {"one": 1 / 50, "two": (1 + 2) / 50} if budget else {"one": 0.0, "two": 0.0}
    assert backend.gaps == {**expected, "stops": 0.0, "plain": 0.0}


async def test_each_choice_counts_from_its_first_chunk() -> None:
    inf = Inference(slow_first(), stream_chunks_per_s=50)
    req = _req("n2", stop=())
    req.sampling.n = 2
    gen = inf.handle(req)
    first = await anext(gen)
    assert first.choice == 0 and inf.live_streams == 1  # choice 1 has no token yet
    second = await anext(gen)
    assert second.choice == 1 and inf.live_streams == 2
    await gen.aclose()  # type: ignore[attr-defined]
    assert inf.live_streams == 0


async def test_a_finished_choice_leaves_the_budget_before_its_request_ends() -> None:
    inf = Inference(one_ends_first(), stream_chunks_per_s=1e6, chunk_max_tokens=1)
    req = _req("n2-end", stop=())
    req.sampling.n = 2
    gen = inf.handle(req)
    chunks = [await anext(gen) for _ in range(3)]
    assert [(c.choice, c.index) for c in chunks] == [(0, 0), (1, 0), (0, 1)]
    assert inf.live_streams == 1  # choice 1 ended: only choice 0 still generates
    rest = [c async for c in gen]
    assert rest[-1].final and inf.live_streams == 0


async def test_a_request_waiting_for_its_first_token_is_not_counted() -> None:
    backend = FakeBackend(n=3, delay_s=30.0)  # no token until it is cancelled
    inf = Inference(backend, stream_chunks_per_s=50)
    task = asyncio.create_task(_collect(inf, _req("queued", stop=())))
    await asyncio.sleep(0.1)
    assert backend.opened and inf.live_streams == 0  # in Triton's queue, not generating
    await inf.control(ControlEvent(request_id="queued", action="cancel"))
    (final,) = await asyncio.wait_for(task, 5)
    assert final.finish_reason == "cancelled" and inf.live_streams == 0


async def test_a_stream_waiting_for_its_model_leaves_the_budget() -> None:
    """Triton restarting mid-stream: the generation waits for the model (up to triton_wait_s)
    before its retry, and is not one of the streams the budget is shared by meanwhile."""
    seen: list[int] = []

    class Restarting(FakeBackend):
        async def wait_ready(self, model: str, version: str, timeout_s: float) -> bool:
            seen.append(inf.live_streams)
            return True

    inf = Inference(Restarting(n=5, fail_after=2), chunk_max_tokens=1, stream_chunks_per_s=50)
    with pytest.raises(RetryableError):
        await _collect(inf, _req("restart", stop=()))
    assert seen == [0] and inf.live_streams == 0


async def test_a_stream_closed_early_leaves_the_budget() -> None:
    """The consumer closes the generator when a publish fails or its partition is revoked."""
    inf = Inference(FakeBackend(n=200, delay_s=0.002), stream_chunks_per_s=50)
    gen = inf.handle(_req("closed", stop=()))
    first = await anext(gen)
    assert first.index == 0 and inf.live_streams == 1
    await gen.aclose()  # type: ignore[attr-defined]
    assert inf.live_streams == 0 and "closed" not in inf.inflight


async def test_a_failed_stream_leaves_the_budget() -> None:
    inf = Inference(FakeBackend(n=5, fail_after=2), triton_wait_s=0, stream_chunks_per_s=50)
    with pytest.raises(RetryableError):
        await _collect(inf, _req("u"))
    assert inf.live_streams == 0


async def test_non_streaming_sends_only_the_final() -> None:
    backend = FakeBackend(n=5)
    (final,) = await _collect(Inference(backend), _req(stream=False, stop=()))
    assert final.final and final.index == 0 and final.token_ids == final.output_ids
    assert final.output_ids == [100, 101, 102, 103, 104]
    assert backend.stream_flags == [False]  # one response from the model, not one per token
    # The model's own clock says when the first token was sampled: 10 - 4 + 1 = 7 ms of the
    # call came after it, so the caller-side TTFT of a unary request is known too.
    t = final.timings
    assert t.first_token is not None and t.inference_end is not None
    assert t.first_token == max(t.inference_start or 0.0, t.inference_end - 7.0)


async def test_stop_sequences_get_chunks_even_without_streaming() -> None:
    # postprocess needs the text early to cancel at a stop sequence
    inf = Inference(FakeBackend(n=5), chunk_max_tokens=2)
    *mid, final = await _collect(inf, _req(stream=False, stop=("x",)))
    assert mid and not any(c.stream for c in [*mid, final])
    assert [t for c in [*mid, final] for t in c.token_ids] == final.output_ids


async def test_cancel_stops_the_model(
    spans: tuple[InMemorySpanExporter, TracerProvider],
) -> None:
    exporter, provider = spans
    backend = FakeBackend(n=1000, delay_s=0.005)
    inf = Inference(backend, tracer=provider.get_tracer("t"), chunk_max_tokens=1)
    chunks: list[GenerationChunk] = []

    async def consume() -> None:
        async for c in inf.handle(_req("c1")):
            chunks.append(c)
            if len(chunks) == 3:
                why = "user closed tab " + "x" * 300  # the caller's free text: kept bounded
                await inf.control(ControlEvent(request_id="c1", action="cancel", reason=why))

    await asyncio.wait_for(consume(), 5)
    (span,) = exporter.get_finished_spans()  # triton.generate says why it stopped
    reason = str((span.attributes or {})[sc.CANCEL_REASON])
    assert reason.startswith("user closed tab xx") and len(reason) == MAX_REASON_CHARS
    final = chunks[-1]
    assert final.final and final.finish_reason == "cancelled"
    assert backend.streams[0].cancelled.is_set()
    assert 3 <= final.completion_tokens < 1000
    assert "c1" not in inf.inflight


async def test_cancel_before_the_request_arrives(
    spans: tuple[InMemorySpanExporter, TracerProvider],
) -> None:
    exporter, provider = spans
    backend = FakeBackend()
    inf = Inference(backend)
    await inf.control(ControlEvent(request_id="early", action="cancel", reason="stop string"))
    with provider.get_tracer("t").start_as_current_span("genwire.prepared process"):
        (final,) = await _collect(inf, _req("early"))
    assert final.finish_reason == "cancelled" and final.output_ids == []
    assert backend.opened == []
    (process,) = exporter.get_finished_spans()  # the process span says why
    assert (process.attributes or {})[sc.CANCEL_REASON] == "stop string"


async def test_deadline_stops_and_expired_never_starts() -> None:
    # 10,000 tokens 2 ms apart outlast the deadline; 2 s leaves room for a stall before the
    # first (500 ms did not, once, in CI on two busy cores: the deadline passed before it).
    backend = FakeBackend(n=10_000, delay_s=0.002)
    inf = Inference(backend)
    chunks = await asyncio.wait_for(_collect(inf, _req("d", deadline_ms=now_ms() + 2_000)), 20)
    assert chunks[-1].finish_reason == "deadline" and 0 < chunks[-1].completion_tokens < 10_000
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


async def test_metrics_observe_the_final_chunk() -> None:
    from genwire_inference.metrics import InferenceMetrics
    from prometheus_client import CollectorRegistry

    registry = CollectorRegistry()
    inf = Inference(FakeBackend(n=4), on_final=InferenceMetrics(registry).observe)
    await _collect(inf, _req("m"))
    labels = {"model": "genwire-gpt", "finish_reason": "length"}
    assert registry.get_sample_value("genwire_tokens_total", labels) == 4
    count = registry.get_sample_value(
        "genwire_time_to_first_token_seconds_count", {"model": "genwire-gpt"}
    )
    assert count == 1


class _Result:
    """Stands in for tritonclient's InferResult (as_numpy by output name)."""

    def __init__(self, outputs: dict[str, object], version: str = "4") -> None:
        import numpy as np

        self._outputs = {k: np.asarray(v) for k, v in outputs.items()}
        self._version = version

    def as_numpy(self, name: str) -> object:
        return self._outputs.get(name)

    def get_response(self) -> object:
        from types import SimpleNamespace

        return SimpleNamespace(model_version=self._version)


def test_parse_response_reads_the_model_contract() -> None:
    from genwire_inference.backend import parse_response

    step = parse_response(
        _Result(
            {
                "token_ids": [[5, 6]],  # a batch dimension is tolerated
                "logprobs": [[-0.1, -0.2]],
                "finished": [True],
                "finish_reason": [b"stop"],
                "prompt_tokens": [7],
                "completion_tokens": [2],
                "mean_logprob": [-0.15],
                "queue_ms": [0.5],
                "compute_ms": [3.0],
            }
        )
    )
    assert step.token_ids == [5, 6] and step.logprobs == pytest.approx([-0.1, -0.2])
    assert step.finished and step.finish_reason == "stop" and step.model_version == "4"
    assert (step.prompt_tokens, step.completion_tokens) == (7, 2)
    assert step.queue_ms == 0.5 and step.compute_ms == 3.0
    mid = parse_response(_Result({"token_ids": [9], "finished": [False], "finish_reason": [b""]}))
    assert mid.token_ids == [9] and not mid.finished and mid.finish_reason == ""


def test_triton_failures_are_classified_by_status_code() -> None:
    import grpc
    from genwire_inference.backend import classify_status, status_of
    from tritonclient.utils import InferenceServerException

    from genwire.triton_stream import TRITON

    for code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, None):
        err = classify_status(code, "x")
        assert isinstance(err, RetryableError) and err.dependency == TRITON
    bad = classify_status(grpc.StatusCode.INVALID_ARGUMENT, "input 'top_k' has wrong dtype")
    assert isinstance(bad, PermanentError) and bad.code == "inference_failed"
    exc = InferenceServerException("unknown model", status="StatusCode.NOT_FOUND")
    assert status_of(exc) == grpc.StatusCode.NOT_FOUND
    assert status_of(InferenceServerException("no status")) is None


class ErrorBackend(FakeBackend):
    """Triton answering with an in-stream error (no status code), model readiness scripted."""

    def __init__(
        self,
        ready: list[bool],
        server_ready: bool,
        message: str = "Request for unknown model: 'genwire-gpt' version 7 is not found",
    ) -> None:
        super().__init__()
        self.ready, self.server, self.message = list(ready), server_ready, message

    async def open(
        self,
        request: PreparedRequest,
        headers: Mapping[str, str],
        *,
        stream: bool = True,
        min_gap_s: float = 0.0,
        hold_first: bool = False,
    ) -> FakeStream:
        raise await self.failure(request)

    async def failure(self, request: PreparedRequest) -> Exception:
        """What the call fails with (a subclass may act first: a cancel landing meanwhile)."""
        from genwire_inference.backend import ModelError

        return ModelError(self.message)

    async def wait_ready(self, model: str, version: str, timeout_s: float) -> bool:
        self.waited.append(timeout_s)
        return self.ready.pop(0) if self.ready else False

    async def server_ready(self) -> bool:
        return self.server


@pytest.mark.parametrize(
    ("ready", "server", "kind"),
    [
        ([True], True, PermanentError),  # the model is there and refused the request
        ([False, True], True, RetryableError),  # it was loading: retry at once
        ([False, False], True, Rejection),  # Triton is up, the model stays away: an answer
        ([False, False], False, RetryableError),  # Triton itself is down: wait it out
    ],
)
async def test_in_stream_errors_are_classified_by_model_readiness(
    ready: list[bool], server: bool, kind: type[Exception]
) -> None:
    inf = Inference(ErrorBackend(ready, server), triton_wait_s=0.01)
    with pytest.raises(GenwireError) as caught:
        await _collect(inf, _req())
    assert type(caught.value) is kind
    if kind is not RetryableError:  # poison goes to the DLQ, an outcome does not
        assert caught.value.dead_letter == (kind is PermanentError)


@pytest.mark.parametrize(
    "message",
    [
        "Stub process 'genwire-gpt_0_0' is not healthy.",
        "Stub process 'genwire-gpt_0_0' is unhealthy and it will be restarted.",
    ],
)
async def test_a_failed_model_process_is_retried_though_the_model_looks_ready(
    message: str,
) -> None:
    """Seen in the fault suite: the stub starved of CPU, Triton answering this while it still
    listed the model as ready (then aborting)."""
    backend = ErrorBackend([True], True, message)
    inf = Inference(backend, triton_wait_s=0.01)
    with pytest.raises(RetryableError) as caught:
        await _collect(inf, _req())
    assert caught.value.message == f"triton: {message}"
    assert backend.waited == []  # not asked: readiness would have said "refused"


async def test_a_dead_gateways_unnamed_requests_are_cancelled(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The heartbeats' clock, moved by hand: on the real one, a stall of a loaded machine
    # longer than the timeout between two beats would take the live gateway for dead too.
    clock = [1000.0]
    monkeypatch.setattr(control, "time", types.SimpleNamespace(monotonic=lambda: clock[0]))
    backend = FakeBackend(n=1000, delay_s=0.01)
    inf = Inference(backend, origin_timeout_s=0.2)
    orphan = _req("orphan").model_copy(update={"origin": "gw-dead"})
    named = _req("named").model_copy(update={"origin": "gw-dead", "keep": True})
    alive = _req("alive").model_copy(update={"origin": "gw-alive"})
    runs = [asyncio.create_task(_collect(inf, r)) for r in (orphan, named, alive)]
    for _ in range(8):  # the live gateway keeps beating, the dead one never does
        await inf.control(ControlEvent(request_id="", action="heartbeat", origin="gw-alive"))
        assert inf.cancel_orphans() in ([], ["orphan"])
        clock[0] += 0.05
        await asyncio.sleep(0.05)  # the generations go on meanwhile
    finished = await asyncio.wait_for(runs[0], 5)
    assert finished[-1].finish_reason == "cancelled"
    assert not runs[1].done() and not runs[2].done()  # named: kept for a retry; alive: running
    for run in runs[1:]:
        run.cancel()
    await asyncio.gather(*runs[1:], return_exceptions=True)


async def test_no_gateway_is_taken_as_dead_while_our_own_kafka_link_is_down() -> None:
    backend = FakeBackend(n=1000, delay_s=0.01)
    broker_down = True
    inf = Inference(backend, origin_timeout_s=0.1, kafka_down=lambda: broker_down)
    run = asyncio.create_task(_collect(inf, _req("r").model_copy(update={"origin": "gw"})))
    await asyncio.sleep(0.3)  # no heartbeat for 3x the timeout, but none could arrive
    assert inf.cancel_orphans() == [] and not run.done()
    broker_down = False
    assert inf.cancel_orphans() == []  # its clock started again when the link came back
    await asyncio.sleep(0.15)
    assert inf.cancel_orphans() == ["r"]
    assert (await asyncio.wait_for(run, 5))[-1].finish_reason == "cancelled"


class ChoicesBackend(FakeBackend):
    """Two choices interleaved, with logprobs and alternatives; choice 1 ended by an eos the
    model counted (completion_tokens one more than the tokens it sent)."""

    async def open(
        self,
        request: PreparedRequest,
        headers: Mapping[str, str],
        *,
        stream: bool = True,
        min_gap_s: float = 0.0,
        hold_first: bool = False,
    ) -> FakeStream:
        self.opened.append((request, dict(headers)))
        steps = []
        for i in range(3):
            for choice in (0, 1):
                if choice == 1 and i == 2:
                    continue
                steps.append(
                    ModelStep(
                        token_ids=[10 * choice + i],
                        logprobs=[-0.25 * (i + 1)],
                        choice=choice,
                        top_logprobs=[[(10 * choice + i, -0.25 * (i + 1)), (99, -3.0)]],
                    )
                )
        end0 = ModelStep(token_ids=[], logprobs=[], choice=0, finished=True)
        end0.finish_reason, end0.completion_tokens, end0.prompt_tokens = "length", 3, 3
        end1 = ModelStep(token_ids=[], logprobs=[], choice=1, finished=True)
        end1.finish_reason, end1.completion_tokens, end1.prompt_tokens = "stop", 3, 3
        stream_ = FakeStream([*steps, end1, end0], 0.0, None)
        self.streams.append(stream_)
        return stream_


def _tok(choice: int, token: int) -> ModelStep:
    return ModelStep(token_ids=[token], logprobs=[-0.5], choice=choice)


def _end(choice: int) -> ModelStep:
    return ModelStep(token_ids=[], logprobs=[], choice=choice, finished=True)


class ScriptedBackend(FakeBackend):
    """Sends ``steps`` as they are (choices interleaved as the test needs)."""

    def __init__(self, steps: list[ModelStep]) -> None:
        super().__init__()
        self.steps = steps

    async def open(
        self,
        request: PreparedRequest,
        headers: Mapping[str, str],
        *,
        stream: bool = True,
        min_gap_s: float = 0.0,
        hold_first: bool = False,
    ) -> FakeStream:
        stream_ = FakeStream(list(self.steps), 0.0, None)
        self.streams.append(stream_)
        return stream_


def slow_first() -> ScriptedBackend:
    """Two choices: choice 0's first token, then choice 1's, then both end."""
    return ScriptedBackend([_tok(0, 1), _tok(1, 2), _end(1), _end(0)])


def one_ends_first() -> ScriptedBackend:
    """Two choices: both start, choice 1 ends, choice 0 goes on, then ends."""
    return ScriptedBackend([_tok(0, 1), _tok(1, 2), _end(1), _tok(0, 3), _end(0)])


async def test_n_choices_logprobs_and_the_models_token_count() -> None:
    inf = Inference(ChoicesBackend(), chunk_max_tokens=1, chunk_interval_ms=1e6)
    req = _req(stop=())
    req.sampling.n, req.sampling.logprobs, req.sampling.top_logprobs = 2, True, 2
    chunks = await _collect(inf, req)
    *mid, final = chunks
    by_choice = {c: [m for m in mid if m.choice == c] for c in (0, 1)}
    # Every choice is its own stream: index and offset count per choice.
    assert [m.index for m in by_choice[1]] == [0, 1] and [m.offset for m in by_choice[1]] == [0, 1]
    assert [t for m in by_choice[1] for t in m.token_ids] == [10, 11]
    assert all(m.logprobs is not None and len(m.logprobs) == len(m.token_ids) for m in mid)
    assert by_choice[1][1].logprobs is not None
    assert by_choice[1][1].logprobs[0].top == [(11, -0.5), (99, -3.0)]
    assert final.final and final.choices is not None and len(final.choices) == 2
    assert final.choices[1].output_ids == [10, 11] and final.choices[1].finish_reason == "stop"
    assert final.choices[0].output_ids == [0, 1, 2] and final.choices[0].finish_reason == "length"
    assert final.output_ids == [0, 1, 2] and final.finish_reason == "length"
    assert final.logprobs is not None and [lp.token_id for lp in final.logprobs] == [0, 1, 2]
    # Usage: the model's counts, the eos that ended choice 1 included (3 + 3, not 3 + 2).
    assert final.completion_tokens == 6


async def test_without_logprobs_the_chunks_carry_none() -> None:
    inf = Inference(FakeBackend(n=3), chunk_max_tokens=1, chunk_interval_ms=1e6)
    chunks = await _collect(inf, _req(stop=()))
    assert all(c.logprobs is None for c in chunks) and chunks[-1].choices is None


def test_parse_response_reads_choice_and_alternatives() -> None:
    from genwire_inference.backend import parse_response

    step = parse_response(
        _Result(
            {
                "token_ids": [5, 6],
                "logprobs": [-0.1, -0.2],
                "finished": [False],
                "choice": [2],
                "top_token_ids": [5, 1, 6, 1],
                "top_token_logprobs": [-0.1, -2.0, -0.2, -3.0],
            }
        )
    )
    assert step.choice == 2
    assert step.top_logprobs == [
        [(5, pytest.approx(-0.1)), (1, -2.0)],
        [(6, pytest.approx(-0.2)), (1, -3.0)],
    ]


def test_the_backend_sends_only_the_options_that_are_set() -> None:
    from genwire_inference.backend import options_of

    from genwire.events import Guided
    from genwire.triton_io import Input

    plain = options_of(_req())
    assert {name for name, _ in plain.values()} == {Input.STOP}  # the request's "\n"
    req = _req(stop=())
    req.sampling.n, req.sampling.top_logprobs, req.sampling.min_p = 2, 3, 0.1
    req.sampling.logit_bias = {5: 1.5}
    req.sampling.guided = Guided(kind="regex", spec="[a-z]+")
    sent = dict(options_of(req).values())
    assert sent[Input.N] == [2] and sent[Input.TOP_LOGPROBS] == [3] and sent[Input.MIN_P] == [0.1]
    assert sent[Input.LOGIT_BIAS_IDS] == [5] and sent[Input.LOGIT_BIAS_VALUES] == [1.5]
    assert b'"regex"' in sent[Input.GUIDED][0]


class _GoneOnCancel(FakeStream):
    """A stream whose server goes away as it is cancelled (Triton restarting then): the call
    fails retryably instead of ending with a final response."""

    async def _run(self) -> AsyncIterator[ModelStep]:
        for step in self.steps:
            if self.cancelled.is_set():
                raise RetryableError("triton: UNAVAILABLE")
            await asyncio.sleep(self.delay_s)
            yield step


async def test_a_cancelled_generation_whose_call_then_fails_ends_cancelled_not_retried(
    spans: tuple[InMemorySpanExporter, TracerProvider],
) -> None:
    """The stop decides, as when the stream ends quietly after it: a retry would generate the
    request again (a stop string's cancel is not remembered for it) and end it otherwise."""
    exporter, provider = spans
    backend = FakeBackend(n=1000, delay_s=0.005, stream_cls=_GoneOnCancel)
    inf = Inference(backend, tracer=provider.get_tracer("t"), chunk_max_tokens=1)
    chunks: list[GenerationChunk] = []
    async for chunk in inf.handle(_req("c2")):
        chunks.append(chunk)
        if len(chunks) == 2:
            await inf.control(ControlEvent(request_id="c2", action="cancel", reason="tab"))
    final = chunks[-1]
    assert final.final and final.finish_reason == "cancelled" and final.error is None
    assert final.output_ids[:2] == [100, 101] and len(backend.opened) == 1
    assert backend.waited == []  # no wait for a model nobody needs any more
    (span,) = exporter.get_finished_spans()
    assert (span.attributes or {})[sc.CANCEL_REASON] == "tab"
    assert [e.name for e in span.events] == ["exception"]  # the failure is kept, not raised
    assert span.status.status_code != StatusCode.ERROR
    assert inf.tracking.was_cancelled("c2") is None  # nothing remembered for later deliveries


class _StaysAway(FakeBackend):
    """Fails its call after ``fail_after`` tokens, then Triton stays away: ``wait_ready`` only
    returns when cancelled (or after its full wait)."""

    def __init__(self, **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self.waiting = asyncio.Event()
        self.wait_cancelled = False

    async def wait_ready(self, model: str, version: str, timeout_s: float) -> bool:
        self.waited.append(timeout_s)
        self.waiting.set()
        try:
            await asyncio.sleep(timeout_s)
        except asyncio.CancelledError:
            self.wait_cancelled = True
            raise
        return False


async def test_a_cancel_while_waiting_for_triton_ends_the_wait_and_the_generation(
    spans: tuple[InMemorySpanExporter, TracerProvider],
) -> None:
    """The call failed (Triton restarting) and the generation waits for the model before its
    retry: a cancel then ends the wait at once and the request with `cancelled`, keeping what
    it streamed; the retry would have generated it whole again."""
    exporter, provider = spans
    backend = _StaysAway(n=5, fail_after=2)
    tracer = provider.get_tracer("t")
    inf = Inference(backend, tracer=tracer, triton_wait_s=3600.0, chunk_max_tokens=1)

    async def consume() -> list[GenerationChunk]:
        with tracer.start_as_current_span("genwire.prepared process"):
            return [c async for c in inf.handle(_req("w"))]

    task = asyncio.create_task(consume())
    await asyncio.wait_for(backend.waiting.wait(), 5)
    await inf.control(ControlEvent(request_id="w", action="cancel", reason="closed"))
    chunks = await asyncio.wait_for(task, 5)  # not the hour's wait
    final = chunks[-1]
    assert final.final and final.finish_reason == "cancelled" and final.error is None
    assert final.output_ids == [100, 101] and [c.index for c in chunks] == [0, 1, 2]
    assert backend.wait_cancelled and len(backend.opened) == 1
    assert "w" not in inf.inflight and inf.live_streams == 0
    assert inf.tracking.was_cancelled("w") is None
    generate, process = exporter.get_finished_spans()
    assert generate.name == sc.SPAN_TRITON_GENERATE
    assert generate.status.status_code == StatusCode.ERROR  # the call did fail
    # The call's span ended when it failed (not after the wait): the outcome is on the
    # request's process span.
    assert generate.end_time is not None and generate.end_time < process.end_time  # type: ignore[operator]
    attrs = process.attributes or {}
    assert attrs[sc.CANCEL_REASON] == "closed"
    assert list(attrs[sc.GEN_AI_FINISH_REASONS]) == ["cancelled"]  # type: ignore[arg-type]
    assert attrs[sc.GEN_AI_OUTPUT_TOKENS] == 2
    assert inf.served_here == {("genwire-gpt", "3")}  # it did answer, before the failure


async def test_a_deadline_while_waiting_for_triton_ends_the_generation() -> None:
    backend = _StaysAway(n=5, fail_after=1)
    inf = Inference(backend, triton_wait_s=3600.0, chunk_max_tokens=1)
    # The first token must come before the deadline: 2 s leaves room for a stall before it
    # (as in ``test_deadline_stops_and_expired_never_starts``).
    chunks = await asyncio.wait_for(_collect(inf, _req("dl", deadline_ms=now_ms() + 2_000)), 20)
    assert chunks[-1].finish_reason == "deadline" and chunks[-1].output_ids == [100]
    assert len(backend.opened) == 1


class _RefusedThenAway(ErrorBackend):
    """An in-stream error with no status code, Triton then away: classifying it waits."""

    def __init__(self) -> None:
        super().__init__([False], server_ready=False)
        self.waiting = asyncio.Event()

    async def wait_ready(self, model: str, version: str, timeout_s: float) -> bool:
        self.waited.append(timeout_s)
        if timeout_s == 0.0:  # "is it there now?"
            return False
        self.waiting.set()
        await asyncio.sleep(timeout_s)
        return False


async def test_a_cancel_while_an_error_is_classified_ends_the_generation(
    spans: tuple[InMemorySpanExporter, TracerProvider],
) -> None:
    exporter, provider = spans
    backend = _RefusedThenAway()
    inf = Inference(backend, tracer=provider.get_tracer("t"), triton_wait_s=3600.0)
    task = asyncio.create_task(_collect(inf, _req("m")))
    await asyncio.wait_for(backend.waiting.wait(), 5)
    # The call's span ended when the model answered with its error, before the wait: a
    # shutdown cancelling the wait loses no span.
    (generate,) = exporter.get_finished_spans()
    assert generate.status.status_code == StatusCode.ERROR
    await inf.control(ControlEvent(request_id="m", action="cancel"))
    (final,) = await asyncio.wait_for(task, 5)
    assert final.finish_reason == "cancelled" and final.error is None


async def test_a_wait_that_ends_past_the_deadline_ends_with_it() -> None:
    """The wait is bounded by the deadline on the wall clock, the run's timer on the loop's:
    a wait that gives up first ends the request with ``deadline``, not with a retry."""
    inf: Inference

    # The first token must come before the deadline: 2 s leaves room for a stall before it
    # (100 ms did not, on two busy cores); the wait below lasts until the deadline has passed.
    deadline_ms = now_ms() + 2_000

    class LateTimer(_StaysAway):
        async def wait_ready(self, model: str, version: str, timeout_s: float) -> bool:
            run = inf.inflight["late"]
            assert run.timer is not None
            run.timer.cancel()  # not due yet on the loop's clock
            await asyncio.sleep((deadline_ms - now_ms()) / 1000 + 0.1)  # past it on the wall clock
            return False

    backend = LateTimer(n=5, fail_after=1)
    inf = Inference(backend, triton_wait_s=3600.0, chunk_max_tokens=1)
    chunks = await asyncio.wait_for(_collect(inf, _req("late", deadline_ms=deadline_ms)), 20)
    assert chunks[-1].finish_reason == "deadline" and chunks[-1].output_ids == [100]


class _CancelledAsItOpens(ErrorBackend):
    """The cancel lands while the call is set up, and the call then fails."""

    inference: Inference

    async def failure(self, request: PreparedRequest) -> Exception:
        await self.inference.control(ControlEvent(request_id=request.request_id, action="cancel"))
        return RetryableError("triton: UNAVAILABLE")


async def test_a_version_is_served_here_only_once_the_model_answered() -> None:
    """``served_here`` makes a version Triton lists with no state be waited for (lost by a
    restart, not unloaded): a call that never reached the model proves nothing."""
    backend = _CancelledAsItOpens([], server_ready=True)
    inf = backend.inference = Inference(backend)
    (final,) = await _collect(inf, _req("o"))
    assert final.finish_reason == "cancelled" and inf.served_here == set()
    answered = Inference(FakeBackend(n=2))
    await _collect(answered, _req("p"))
    assert answered.served_here == {("genwire-gpt", "3")}  # the version the model named
    # A stream that answered, then failed (Triton restarting): served here all the same.
    failed = Inference(FakeBackend(n=5, fail_after=2), triton_wait_s=0)
    with pytest.raises(RetryableError):
        await _collect(failed, _req("q"))
    assert failed.served_here == {("genwire-gpt", "3")}


class _FailsThenNotLoaded(ErrorBackend):
    """The call fails (retryably, or with a model error), Triton stays away, and then says the
    version is not loaded: an answer (model_not_loaded) for a request nobody cancelled."""

    def __init__(self, model_error: bool) -> None:
        super().__init__([], server_ready=True, message="'genwire-gpt' version 2 is not found")
        self.model_error = model_error

    async def failure(self, request: PreparedRequest) -> Exception:
        if self.model_error:
            return await super().failure(request)
        return RetryableError("triton: UNAVAILABLE")


@pytest.mark.parametrize("model_error", [False, True])
async def test_a_cancel_while_the_version_is_looked_up_ends_cancelled_not_refused(
    model_error: bool,
) -> None:
    """The stop decides over the lookup's answer too: the caller no longer wants one."""
    backend = _FailsThenNotLoaded(model_error)

    async def model_state(model: str, version: str) -> str | None:
        await inf.control(ControlEvent(request_id="nl", action="cancel", reason="gone"))
        return "UNAVAILABLE"

    inf = Inference(backend, triton_wait_s=3600.0, model_state=model_state)
    request = _req("nl").model_copy(update={"model_version": "2"})
    (final,) = await asyncio.wait_for(_collect(inf, request), 5)
    assert final.finish_reason == "cancelled" and final.error is None

    # Not cancelled: the same lookup answers model_not_loaded at once.
    async def not_cancelled(model: str, version: str) -> str | None:
        return "UNAVAILABLE"

    inf.model_state = not_cancelled
    with pytest.raises(Rejection):
        await asyncio.wait_for(_collect(inf, request.model_copy(update={"request_id": "n2"})), 5)


# -- deadlines and finish reasons ---------------------------------------------------------------
class PacedStream(FakeStream):
    """The model as its decode loop behaves: a token every ``delay_s``; streamed, the first
    response at once (``hold_first``: no sooner than ``min_gap_s`` after the call), then the
    tokens since the last one no closer than ``min_gap_s``; not streamed, every token in the
    final response (with the model's timings); cancelled, nothing more is sent (what was not
    sent is lost, as the model drops it). ``responses``: how many it sent."""

    def __init__(
        self, n: int, delay_s: float, stream: bool, min_gap_s: float, hold_first: bool = False
    ) -> None:
        super().__init__([], delay_s, None)
        self.n, self.stream, self.min_gap_s = n, stream, min_gap_s
        self.hold_first = hold_first
        self.responses = 0

    async def _run(self) -> AsyncIterator[ModelStep]:
        loop = asyncio.get_running_loop()
        tokens: list[int] = []
        received = last = loop.time()
        sent, first_at = 0, 0.0
        for i in range(self.n):
            try:
                await asyncio.wait_for(self.cancelled.wait(), self.delay_s)
                return
            except TimeoutError:
                pass
            tokens.append(100 + i)
            first_at = first_at or loop.time()
            final = i == self.n - 1
            spaced = sent or self.hold_first
            due = self.stream and (not spaced or loop.time() - last >= self.min_gap_s)
            if final or due:
                step = ModelStep(token_ids=tokens[sent:], logprobs=[-0.5] * (len(tokens) - sent))
                step.finished, step.finish_reason = final, "length" if final else ""
                if final:
                    step.queue_ms, step.compute_ms = 0.0, (loop.time() - received) * 1e3
                    step.ttft_ms = (first_at - received) * 1e3
                sent, last = len(tokens), loop.time()
                self.responses += 1
                yield step


class PacedBackend(FakeBackend):
    async def open(
        self,
        request: PreparedRequest,
        headers: Mapping[str, str],
        *,
        stream: bool = True,
        min_gap_s: float = 0.0,
        hold_first: bool = False,
    ) -> FakeStream:
        self.opened.append((request, dict(headers)))
        self.stream_flags.append(stream)
        self.gaps[request.request_id] = min_gap_s
        self.held[request.request_id] = hold_first
        paced = PacedStream(self.n, self.delay_s, stream, min_gap_s, hold_first)
        self.streams.append(paced)
        return paced


async def test_an_unstreamed_request_stopped_by_its_deadline_keeps_what_it_generated() -> None:
    """docs/api.md *Deadlines*: inference publishes what it has with ``deadline``. The model
    drops what it has not sent when cancelled, so such a request streams from it, responses far
    apart, and the tokens wait here for the final chunk."""
    backend = PacedBackend(n=10_000, delay_s=0.002)
    inf = Inference(backend)
    request = _req("ud", stream=False, stop=(), deadline_ms=now_ms() + 1_000)
    chunks = await asyncio.wait_for(_collect(inf, request), 20)
    (final,) = chunks  # unchunked: the final chunk alone
    assert final.finish_reason == "deadline"
    assert final.output_ids and final.output_ids == list(range(100, 100 + len(final.output_ids)))
    assert final.token_ids == final.output_ids and final.completion_tokens == len(final.output_ids)
    assert backend.stream_flags == [True]
    assert backend.gaps["ud"] == pytest.approx(0.05, abs=0.01)  # 5 % of the time left
    # Without a deadline: one response from the model, as before (the fast path).
    short = PacedBackend(n=5, delay_s=0.001)
    (whole,) = await _collect(Inference(short), _req("nd", stream=False, stop=()))
    assert whole.output_ids == [100, 101, 102, 103, 104]
    assert short.stream_flags == [False] and short.gaps["nd"] == 0.0


async def test_an_unstreamed_request_with_a_deadline_asks_for_few_responses() -> None:
    backend = PacedBackend(n=5, delay_s=0.001)
    inf = Inference(backend)
    (final,) = await _collect(inf, _req("far", stream=False, stop=(), deadline_ms=now_ms() + 60e3))
    assert final.finish_reason == "length" and final.output_ids == [100, 101, 102, 103, 104]
    assert backend.gaps["far"] == 1.0  # the most: 5 % of a minute would be 3 s
    (final,) = await _collect(inf, _req("near", stream=False, stop=(), deadline_ms=now_ms() + 500))
    assert final.output_ids == [100, 101, 102, 103, 104] and backend.gaps["near"] == 0.05
    # Far: its first response held too, so ended within the gap it cost one response. Near
    # (under 1 s left, the gap at its 50 ms floor): not held, since a held first response
    # could come due after the deadline, whose cancel would then leave nothing.
    assert backend.held == {"far": True, "near": False}
    far, near = (paced.responses for paced in backend.streams)  # type: ignore[attr-defined]
    assert far == 1 and 2 <= near <= 3  # near: its first at once, a gap more when loaded


async def test_only_an_unstreamed_request_with_a_deadline_holds_the_first_response() -> None:
    """``hold_first`` (``genwire_hold_first_response``): asked for the deadline path only;
    streamed requests get their first token at once. A held request's first token time is
    the model's own (its final response's ``ttft_ms``), not the held response's arrival."""
    backend = PacedBackend(n=150, delay_s=0.004)
    inf = Inference(backend)
    deadline = now_ms() + 10e3  # 5 % of 10 s: 0.5 s between the model's responses
    (final,) = await asyncio.wait_for(
        _collect(inf, _req("held", stream=False, stop=(), deadline_ms=deadline)), 20
    )
    assert final.output_ids == list(range(100, 250)) and final.finish_reason == "length"
    assert backend.held["held"] is True and backend.gaps["held"] == pytest.approx(0.5, abs=0.01)
    held = backend.streams[0]
    # 0.6 s of tokens: the held first at 0.5 s, the final (a loaded machine: a gap or two more)
    assert 2 <= held.responses <= 5, held.responses  # type: ignore[attr-defined]
    t = final.timings
    assert t.first_token is not None and t.inference_start is not None
    assert t.first_token - t.inference_start < 250  # ~4 ms; its first response came at 500
    for rid, stream, deadline_ms in (
        ("streamed", True, now_ms() + 10e3),
        ("stops", False, now_ms() + 10e3),  # chunked for its stop sequence
        ("free", True, None),
        ("whole", False, None),
    ):
        stop = ("\n",) if rid == "stops" else ()
        await _collect(inf, _req(rid, stream=stream, stop=stop, deadline_ms=deadline_ms))
        assert backend.held[rid] is False, rid


async def test_an_unstreamed_request_cancelled_by_its_caller_ends_cancelled() -> None:
    backend = PacedBackend(n=10_000, delay_s=0.002)
    inf = Inference(backend)
    request = _req("uc", stream=False, stop=(), deadline_ms=now_ms() + 60e3)
    loop = asyncio.get_running_loop()
    cancel = ControlEvent(request_id="uc", action="cancel", reason="caller")
    loop.call_later(0.3, lambda: asyncio.ensure_future(inf.control(cancel)))
    (final,) = await asyncio.wait_for(_collect(inf, request), 20)
    assert final.finish_reason == "cancelled" and final.error is None
    assert backend.streams[0].cancelled.is_set()


class _OneChoiceEndsFirst(FakeBackend):
    """Two choices: ``early`` ends by itself ("stop") at once; the other goes on until
    cancelled."""

    def __init__(self, early: int) -> None:
        super().__init__(delay_s=0.01)
        self.early = early

    async def open(
        self,
        request: PreparedRequest,
        headers: Mapping[str, str],
        *,
        stream: bool = True,
        min_gap_s: float = 0.0,
        hold_first: bool = False,
    ) -> FakeStream:
        end = ModelStep(token_ids=[6], logprobs=[-1.0], choice=self.early, finished=True)
        end.finish_reason, end.completion_tokens = "stop", 3
        later = 1 - self.early
        steps = [_tok(self.early, 5), end, *(_tok(later, 10 + i) for i in range(1000))]
        stream_ = FakeStream(steps, self.delay_s, None)
        self.streams.append(stream_)
        return stream_


@pytest.mark.parametrize("early", [0, 1])
@pytest.mark.parametrize("stop", ["deadline", "cancelled"])
async def test_a_choice_the_model_ended_keeps_its_own_finish_reason(early: int, stop: str) -> None:
    inf = Inference(_OneChoiceEndsFirst(early))
    request = _req("two", stop=(), deadline_ms=now_ms() + 600 if stop == "deadline" else None)
    request.sampling.n = 2
    if stop == "cancelled":
        cancel = ControlEvent(request_id="two", action="cancel", reason="caller")
        asyncio.get_running_loop().call_later(
            0.6, lambda: asyncio.ensure_future(inf.control(cancel))
        )
    final = (await asyncio.wait_for(_collect(inf, request), 20))[-1]
    assert final.choices is not None
    reasons = {c.index: c.finish_reason for c in final.choices}
    assert reasons == {early: "stop", 1 - early: stop}
    assert final.choices[early].output_ids == [5, 6]
    assert final.finish_reason == reasons[0]  # the request's is choice 0's
