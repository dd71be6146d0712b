"""Pure async handlers of the inference service (no Kafka or HTTP imports).

PreparedRequest → GenerationChunk*: drive the model (``ModelBackend``), publish streamed
chunks (the first token at once, then every ``chunk_max_tokens`` tokens or
``chunk_interval_ms``, no closer together than the instance's chunk budget allows when many
streams share it), and always end with one final chunk carrying every generated token id,
so postprocess never depends on having seen the intermediate ones. Cancels (ControlEvent) and
deadlines stop the model's stream; the final chunk then says "cancelled" / "deadline". Which
generations run here, the cancels that came first and the gateways' heartbeats are kept in
``control.InFlight``.

Idempotence: the seed is fixed upstream, so a redelivered request regenerates the same tokens,
though not the same chunk boundaries (they follow timing): each chunk's ``offset`` places its
tokens, and postprocess applies only those past what it applied. A duplicate that arrives while
the original still runs here is dropped.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field

from opentelemetry import trace
from opentelemetry.trace import Span, SpanKind, Status, StatusCode, Tracer

from genwire.errors import GenwireError, PermanentError, Rejection, RetryableError
from genwire.events import (
    ChoiceOutput,
    ControlEvent,
    ErrorInfo,
    GenerationChunk,
    PreparedRequest,
    Timings,
    TokenLogprob,
    now_ms,
)
from genwire.policy import ARM_ATTRIBUTE, SHADOW_ATTRIBUTE
from genwire.request import ErrorCode
from genwire.telemetry import semconv as sc
from genwire.telemetry.propagation import inject
from genwire.triton_stream import TRITON
from genwire_inference.backend import (
    ModelBackend,
    ModelError,
    ModelStateLookup,
    ModelStep,
)
from genwire_inference.control import (
    FINISH_CANCELLED,
    FINISH_DEADLINE,
    FINISH_ERROR,
    InFlight,
    Run,
)


def _chunked(request: PreparedRequest) -> bool:
    """Whether a generation publishes intermediate chunks: for streaming, and also for stop
    sequences (postprocess sees the text early and cancels the generation at a stop instead
    of waiting for max_tokens). Never for a shadow copy: postprocess reads only its final
    chunk (docs/lifecycle.md)."""
    return not request.shadow and (request.stream or bool(request.sampling.stop))


def _finish_reason(choice: _Choice, run: Run) -> str:
    """Why a choice ended: the model's reason when the model ended it (stop, length), also if a
    cancel or the deadline stopped the request after that; else why the request was stopped."""
    if choice.final is not None:
        return choice.final.finish_reason or "stop"
    return run.stop_reason or "stop"


def _deadline_left_s(deadline_ms: float) -> float:
    return max(0.0, (deadline_ms - now_ms()) / 1000.0)


def _deadline_gap_s(deadline_ms: float) -> float:
    """The least gap between the model's responses asked for an unchunked request with a
    deadline (``DEADLINE_GAP_SHARE`` of the time left, within ``DEADLINE_GAP_BOUNDS_S``)."""
    low, high = DEADLINE_GAP_BOUNDS_S
    return min(high, max(low, _deadline_left_s(deadline_ms) * DEADLINE_GAP_SHARE))


def _end_failed(span: Span, exc: GenwireError) -> None:
    """End ``span`` as failed with ``exc`` (raised on, to be retried or answered)."""
    span.set_status(Status(StatusCode.ERROR, exc.message))
    span.set_attribute(sc.ERROR_CODE, exc.code)
    span.end()


def _note_cancel(span: Span, run: Run) -> None:
    """Why a cancelled generation stopped, on its span, whichever way the span ends (a cancel
    the model answers with an error, a retry, a shutdown)."""
    if run.cancel_reason:
        span.set_attribute(sc.CANCEL_REASON, run.cancel_reason)


INSTANCE_FAILURES = ("is not healthy", "is unhealthy and it will be restarted")
"""Parts of the errors Triton's Python backend answers with when the model's stub process
failed or stopped answering (starved of CPU, crashed): the request is not at fault, and the
model stays listed as ready meanwhile, so readiness cannot tell them from a refusal. Seen in
the fault suite: ``Stub process 'genwire-gpt_0_0' is not healthy.`` just before Triton 2.51
aborted (docs/reliability.md)."""

MODEL_REFUSAL = "genwire-gpt: "
"""What the model's refusals start with (tools/genwire_model/runtime/triton_model.py
``_REFUSED``, held equal by a test): a parameter out of the model's range, a prompt too long, a
constraint that does not compile, ``n`` over its batch. The request's fault: answered with a
4xx code (``refusal``), never as ``inference_failed``."""

MODEL_FAILURES = re.compile(r"\b(?:generation|prefill|request) failed: ")
"""The model's own failures (the decode loop's ``generation failed`` / ``prefill failed``,
which fail every request of the batch or of the prefill pass, and ``request failed`` before a
request was queued): not about one request's content."""

TRANSIENT_FAILURES = re.compile(
    r"out of memory|memoryerror|failed to allocate|cudaerrormemoryallocation",
    re.IGNORECASE,
)
"""In a model failure (``MODEL_FAILURES``), what says memory ran short (CUDA or ONNX Runtime
out of memory, a ``MemoryError``; not any CUDA error: a device-side assert or an illegal
address fails every batch after it, while the model still reads ready): a retry may succeed, so the
request is retried (``RetryableError``) instead of dead-lettered with every request that
shared the batch. Other model failures stay permanent: a request that fails the model every
time must not hold the stage for the outage budget."""

MEMORY_TRIES = 3
"""Tries in a row of a request whose batch ran short of memory (``TRANSIENT_FAILURES``) before
it is parked on ``genwire.retry`` for a later replay: while one record retries, the stage takes
no new one, and a request too large for memory alone would otherwise hold it for the whole
outage budget at each replay. Its retries' backoff (``retry_backoff_s``, doubled) lets the
batch it shared end first."""

DEADLINE_GAP_SHARE = 0.05
"""An unchunked request with a deadline still streams from the model, its responses this share
of the time left apart (``DEADLINE_GAP_BOUNDS_S``), the tokens kept here until the final chunk:
a deadline cancels the model, which then drops what it has not sent, and the partial result is
what the deadline promises the caller (docs/api.md *Deadlines*). So it misses at most that gap's
tokens. The model holds its first response too until a gap has passed (``hold_first``,
``genwire.triton_io.HOLD_FIRST_RESPONSE_PARAMETER``), so a request that ends within a gap costs
one response, its final one with every token, as without a deadline, and a longer one a
response a gap beside it. (A model version older than that parameter sends its first token at
once: a response more.)"""
DEADLINE_GAP_BOUNDS_S = (0.05, 1.0)

CHUNK_GAP_SLACK = 0.1
"""How much earlier than its spacing a streamed chunk is still due, as a share of it: the model
spaces a stream's responses by its own clock and they arrive with some jitter; one a hair early
would otherwise wait a whole spacing more."""


@dataclass
class _Chunker:
    """Decides when buffered tokens become a published chunk."""

    max_tokens: int
    interval_s: float
    buffer: list[int] = field(default_factory=list)
    sent_chunks: int = 0
    sent_tokens: int = 0
    last_flush: float = 0.0

    def due(self, now: float, min_gap_s: float = 0.0) -> bool:
        """Whether to publish the buffer now; ``min_gap_s``: the instance's chunk budget's
        share for this stream (``Inference.stream_chunks_per_s``), which holds back a chunk
        that its size or the interval would otherwise make due."""
        if not self.buffer:
            return False
        if self.sent_chunks == 0:  # first token(s): at once, for time to first token
            return True
        elapsed = now - self.last_flush
        if elapsed < min_gap_s:
            return False
        return len(self.buffer) >= self.max_tokens or elapsed >= self.interval_s

    def take(self, now: float) -> tuple[int, int, list[int]]:
        index, offset, ids = self.sent_chunks, self.sent_tokens, self.buffer
        self.buffer = []
        self.sent_chunks += 1
        self.sent_tokens += len(ids)
        self.last_flush = now
        return index, offset, ids


@dataclass
class _Choice:
    """One of a request's ``n`` choices as the model streams it: its own chunks (index and
    offset count per choice), tokens, log-probabilities and final step."""

    chunker: _Chunker
    generated: list[int] = field(default_factory=list)
    logprobs: list[TokenLogprob] = field(default_factory=list)
    pending: list[TokenLogprob] = field(default_factory=list)  # those of chunker.buffer
    logprob_sum: float = 0.0
    final: ModelStep | None = None
    counted: bool = False  # in ``Inference.live_streams``: from its first chunk to its end

    def add(self, step: ModelStep, keep_logprobs: bool, chunked: bool) -> None:
        self.generated.extend(step.token_ids)
        self.logprob_sum += sum(step.logprobs)
        if chunked:
            self.chunker.buffer.extend(step.token_ids)
        if keep_logprobs:
            tops = step.top_logprobs or [[] for _ in step.token_ids]
            lps = [
                TokenLogprob(token_id=t, logprob=lp, top=top)
                for t, lp, top in zip(step.token_ids, step.logprobs, tops, strict=False)
            ]
            self.logprobs.extend(lps)
            if chunked:
                self.pending.extend(lps)

    def take(self, now: float) -> tuple[int, int, list[int], list[TokenLogprob]]:
        index, offset, ids = self.chunker.take(now)
        lps, self.pending = self.pending, []
        return index, offset, ids, lps

    @property
    def completion_tokens(self) -> int:
        """The model's count (an ending end-of-sequence token included), else the tokens."""
        model = self.final.completion_tokens if self.final is not None else 0
        return max(model, len(self.generated))


class Inference:
    """The inference stage's logic: one generation per request, chunked; what stops one early
    (cancels, dead gateways) is kept by ``InFlight`` (``control``)."""

    def __init__(
        self,
        backend: ModelBackend,
        *,
        tracer: Tracer | None = None,
        chunk_max_tokens: int = 8,
        chunk_interval_ms: float = 20.0,
        stream_chunks_per_s: float = 0.0,
        triton_wait_s: float = 30.0,
        cancelled_memory_s: float = 600.0,
        max_remembered_cancels: int = 10_000,
        origin_timeout_s: float = 15.0,
        kafka_down: Callable[[], bool] = lambda: False,
        on_final: Callable[[GenerationChunk], None] | None = None,
        model_state: ModelStateLookup | None = None,
    ) -> None:
        self.backend = backend
        self.model_state = model_state
        self.served_here: set[tuple[str, str]] = set()
        """(model, version) pairs this process generated with: one Triton later lists with no
        state was not unloaded but lost by a Triton restart, and is waited for."""
        self.tracer = tracer or trace.get_tracer("genwire.inference")
        self.chunk_max_tokens = chunk_max_tokens
        self.chunk_interval_s = chunk_interval_ms / 1000.0
        self.stream_chunks_per_s = stream_chunks_per_s
        self.live_streams = 0
        """Streams generating here now, each counted from its first chunk to its end (a
        request's choices each count; one waiting in Triton's queue does not): what the
        chunk budget is shared by."""
        self.triton_wait_s = triton_wait_s
        self.on_final = on_final
        self.tracking = InFlight(
            cancelled_memory_s=cancelled_memory_s,
            max_remembered_cancels=max_remembered_cancels,
            origin_timeout_s=origin_timeout_s,
            kafka_down=kafka_down,
        )

    # -- control (InFlight) ----------------------------------------------------------------

    @property
    def inflight(self) -> dict[str, Run]:
        """The generations running here, by request id."""
        return self.tracking.runs

    async def control(self, event: ControlEvent) -> None:
        """``genwire.control``: a cancel stops its generation (or is remembered until it
        comes); a heartbeat keeps its gateway's unnamed generations alive."""
        await self.tracking.control(event)

    def cancel_orphans(self) -> list[str]:
        """Stop the unnamed generations whose gateway died; returns their request ids."""
        return self.tracking.cancel_orphans()

    async def watch_origins(self, interval_s: float = 1.0) -> None:
        """Every ``interval_s``: ``cancel_orphans``."""
        await self.tracking.watch_origins(interval_s)

    # -- generation -------------------------------------------------------------------------

    async def handle(self, request: PreparedRequest) -> AsyncIterator[GenerationChunk]:
        """Generate ``request``; yield streamed chunks, then the final chunk."""
        # A shadow copy shares its request's id: tracked apart, so neither drops the other.
        rid = request.request_id + SHADOW_RUN_SUFFIX if request.shadow else request.request_id
        # The process span (current here) names the version: a request that fails before
        # generating (not loaded, deadline) still counts for its version in the monitor, and a
        # shadow copy's span says it is one (the monitor keeps it out of every figure).
        process = trace.get_current_span()
        if request.model_version:
            process.set_attribute(sc.MODEL_VERSION, request.model_version)
            process.set_attribute(sc.GEN_AI_REQUEST_MODEL, request.model)
        if request.shadow:
            process.set_attribute(SHADOW_ATTRIBUTE, True)
        if rid in self.inflight:  # a duplicate of a generation still running here
            return
        start = now_ms()
        timings = request.timings.model_copy(update={"inference_start": start})
        cancelled = self.tracking.was_cancelled(rid)
        if cancelled is not None:
            process.set_attribute(sc.CANCEL_REASON, cancelled)
            yield self._final(request, [], FINISH_CANCELLED, timings, index=0)
            return
        if request.deadline_ms is not None and start >= request.deadline_ms:
            yield self._final(
                request,
                [],
                FINISH_ERROR,
                timings,
                index=0,
                error=ErrorInfo(
                    code=ErrorCode.DEADLINE_EXCEEDED,
                    message="the request's deadline passed before generation started",
                ),
            )
            return
        run = Run(origin=request.origin, keep=request.keep)
        self.inflight[rid] = run
        if request.deadline_ms is not None:
            delay = (request.deadline_ms - start) / 1000.0
            run.timer = asyncio.get_running_loop().call_later(delay, run.stop, FINISH_DEADLINE)
        try:
            async for chunk in self._generate(request, run, timings):
                yield chunk
        finally:
            self.live_streams -= run.streams
            if run.timer is not None:
                run.timer.cancel()
            if self.inflight.get(rid) is run:
                del self.inflight[rid]

    async def _generate(
        self, request: PreparedRequest, run: Run, timings: Timings
    ) -> AsyncIterator[GenerationChunk]:
        s = request.sampling
        attributes: dict[str, str | int | float | bool | Sequence[str]] = {
            sc.GEN_AI_SYSTEM: "triton",
            sc.GEN_AI_OPERATION: "text_completion",
            sc.GEN_AI_REQUEST_MODEL: request.model,
            sc.MODEL_VERSION: request.model_version,
            ARM_ATTRIBUTE: request.arm,
            SHADOW_ATTRIBUTE: request.shadow,
            sc.GEN_AI_REQUEST_MAX_TOKENS: s.max_tokens,
            sc.GEN_AI_REQUEST_TEMPERATURE: s.temperature,
            sc.GEN_AI_REQUEST_TOP_P: s.top_p,
            sc.GEN_AI_REQUEST_TOP_K: s.top_k,
            sc.GEN_AI_REQUEST_SEED: s.seed,
            sc.REQUEST_ID: request.request_id,
            sc.GEN_AI_INPUT_TOKENS: len(request.input_ids),
        }
        # A child of the consumer's process span (current here); not made current itself,
        # because this generator yields to the consumer between chunks.
        span = self.tracer.start_span(
            sc.SPAN_TRITON_GENERATE, kind=SpanKind.CLIENT, attributes=attributes
        )
        choices = [
            _Choice(_Chunker(self.chunk_max_tokens, self.chunk_interval_s))
            for _ in range(max(1, s.n))
        ]
        keep_logprobs = s.logprobs or s.top_logprobs > 0
        chunked = _chunked(request)
        # The budget spaces streamed chunks only: a request chunked for its stop sequences
        # alone needs them early (postprocess cancels at the stop).
        budgeted = request.stream
        opened_gap_s = self.opening_gap_s(s.n) if budgeted else 0.0
        # Unchunked: one response with every token, unless a deadline may stop it (a cancel
        # drops the model's unsent tokens): then responses far apart (DEADLINE_GAP_SHARE).
        streamed = chunked or request.deadline_ms is not None
        held = False
        if not chunked and request.deadline_ms is not None:
            opened_gap_s = _deadline_gap_s(request.deadline_ms)
            # Its first response is held for that gap too (its first token is nobody's to see
            # early), unless the gap is the floor, not the share: so close to the deadline a
            # held first response could come due after it, and a cancel would leave nothing.
            held = (
                _deadline_left_s(request.deadline_ms) * DEADLINE_GAP_SHARE
                >= (DEADLINE_GAP_BOUNDS_S[0])
            )
        any_token = answered = False
        owned = True  # ``span`` is the call's own (False: the process span, after a failed call)
        try:
            headers: list[tuple[str, bytes]] = []
            inject(headers, trace.set_span_in_context(span))  # Triton's own trace joins ours
            # Unchunked requests without a deadline ask the model for one response with every
            # token: no per-token responses to send, receive and parse (what direct Triton
            # clients do, too).
            stream = await self.backend.open(
                request,
                {k: v.decode("latin-1") for k, v in headers},
                stream=streamed,
                min_gap_s=opened_gap_s,
                hold_first=held,
            )
            run.stream = stream
            if run.stop_reason is not None:  # cancelled while the call was being set up
                stream.cancel()
            async for step in stream:
                now = time.perf_counter()
                if step.model_version and not request.model_version:
                    request = request.model_copy(update={"model_version": step.model_version})
                    span.set_attribute(sc.MODEL_VERSION, step.model_version)
                if not answered:  # the model served this version here (even if it fails later)
                    answered = True
                    self.served_here.add((request.model, request.model_version))
                choice = choices[step.choice] if 0 <= step.choice < len(choices) else choices[0]
                if step.token_ids:
                    if not any_token and streamed:  # unstreamed: every token comes at the end
                        timings.first_token = now_ms()
                        span.set_attribute(
                            sc.TIME_TO_FIRST_TOKEN_MS,
                            timings.first_token - (timings.inference_start or 0.0),
                        )
                        span.set_attribute(sc.FIRST_TOKEN_UNIX_MS, timings.first_token)
                    any_token = True
                    choice.add(step, keep_logprobs, chunked)
                if step.finished:
                    choice.final = step
                    if choice.counted:  # done generating: the others share the budget
                        choice.counted = False
                        run.streams -= 1
                        self.live_streams -= 1
                    # Not ``break``: the stream ends by itself after the final response, which
                    # also closes our side of the call at once (no reliance on GC).
                    continue
                gap = self.stream_gap_s(opened_gap_s) if budgeted else 0.0
                if chunked and choice.chunker.due(now, gap):
                    index, offset, ids, lps = choice.take(now)
                    if index == 0 and budgeted:  # generating now: it shares the budget
                        choice.counted = True
                        run.streams += 1
                        self.live_streams += 1
                    yield GenerationChunk(
                        request_id=request.request_id,
                        index=index,
                        offset=offset,
                        token_ids=ids,
                        stream=request.stream,
                        model=request.model,
                        model_version=request.model_version,
                        sampling=s if index == 0 else None,  # every choice's first: postprocess
                        choice=step.choice,
                        logprobs=lps if keep_logprobs else None,
                        arm=request.arm,
                        shadow=request.shadow,
                        principal=request.principal,
                    )
        except RetryableError as exc:
            if run.stop_reason is None:
                _end_failed(span, exc)  # the call's span: not the wait below
                not_loaded = await self._not_loaded(request)  # unloaded: no outage to wait out
                if not_loaded is not None and run.stop_reason is None:
                    raise not_loaded from None
                # Triton restarting or the model reloading: wait for it here (bounded), then
                # let the consumer retry; the same seed regenerates the same tokens (chunked
                # anew from index 0: postprocess places them by offset). Not generating
                # meanwhile: its streams leave the chunk budget to the others.
                self.live_streams -= run.streams
                run.streams = 0
                if not_loaded is None:
                    await self._wait_for_model(request, run)
                if run.stop_reason is None:
                    raise
                # Stopped while waiting (a cancel, the deadline): ended with the stop, below,
                # on the process span (the call's has ended, failed).
                span, owned = trace.get_current_span(), False
            else:
                span.record_exception(exc)
            # Stopped here (a cancel, the deadline) before the call failed or while waiting
            # for Triton after it: the stop decides, as when the stream ends quietly after it
            # (the final below). A retry would start the generation again, and nothing
            # remembers the cancel for it.
        except ModelError as exc:
            _note_cancel(span, run)
            span.set_status(Status(StatusCode.ERROR, exc.message))
            if exc.message.startswith(MODEL_REFUSAL):
                # The caller's fault, and the span says so: the monitor reads a span without
                # a code as a server failure (the answer is a 4xx).
                span.set_attribute(sc.ERROR_CODE, refusal(exc.message).code)
            span.end()  # the call's span: not the wait for the model that may follow
            failure = await self._classify(request, exc, run)
            # Stopped meanwhile: the stop decides (as above), unless the model refused the
            # request itself (poison: its dead letter says so).
            if isinstance(failure, PermanentError) or run.stop_reason is None:
                raise failure from None
            span, owned = trace.get_current_span(), False
        except GenwireError as exc:
            _note_cancel(span, run)
            _end_failed(span, exc)
            raise
        except BaseException:  # stopped (shutdown, a consumer dropping us): stop the model too
            if run.stream is not None:
                run.stream.cancel()
            _note_cancel(span, run)
            span.end()
            raise

        timings.inference_end = now_ms()
        first = choices[0]
        final_step = first.final
        if any(c.final is None for c in choices) and run.stop_reason is None:
            run.stop_reason = FINISH_ERROR  # should not happen: be explicit
        # Choice 0's reason is the request's; a choice the model ended keeps its own.
        reason = FINISH_ERROR if run.stop_reason == FINISH_ERROR else _finish_reason(first, run)
        if final_step is not None:
            timings.triton_queue_ms = final_step.queue_ms
            timings.triton_compute_ms = final_step.compute_ms
        generated = first.generated
        mean = (
            final_step.mean_logprob
            if final_step and final_step.mean_logprob is not None
            else (first.logprob_sum / len(generated) if generated else None)
        )
        span.set_attribute(sc.GEN_AI_FINISH_REASONS, [reason])
        _note_cancel(span, run)
        span.set_attribute(sc.GEN_AI_OUTPUT_TOKENS, sum(c.completion_tokens for c in choices))
        if mean is not None:
            span.set_attribute(sc.MEAN_LOGPROB, mean)
        if timings.triton_queue_ms is not None:
            span.set_attribute(sc.QUEUE_MS, timings.triton_queue_ms)
        if timings.triton_compute_ms is not None:
            span.set_attribute(sc.COMPUTE_MS, timings.triton_compute_ms)
        if (not streamed or held) and final_step is not None and final_step.ttft_ms:
            # Unstreamed: every token arrives at the end (held: the first response a gap
            # late), so the model's own clock says when the first one was sampled.
            timings.first_token = first_token_unix_ms(timings, final_step)
            span.set_attribute(sc.TIME_TO_FIRST_TOKEN_MS, final_step.ttft_ms)
            span.set_attribute(sc.FIRST_TOKEN_UNIX_MS, timings.first_token)
        if len(generated) > 1 and timings.first_token is not None:
            tpot = (timings.inference_end - timings.first_token) / (len(generated) - 1)
            span.set_attribute(sc.TIME_PER_OUTPUT_TOKEN_MS, tpot)
        if owned:
            span.end()
        final = self._final(
            request,
            generated,
            reason,
            timings,
            index=first.chunker.sent_chunks,
            offset=first.chunker.sent_tokens,
            tail=first.chunker.buffer if chunked else generated,
            prompt_tokens=(final_step.prompt_tokens if final_step else 0) or len(request.input_ids),
            mean_logprob=mean,
            error=(
                ErrorInfo(
                    code=ErrorCode.INFERENCE_FAILED,
                    message="the model stream ended without a final response",
                )
                if reason == FINISH_ERROR
                else None
            ),
            completion_tokens=sum(c.completion_tokens for c in choices),
            logprobs=first.logprobs if keep_logprobs else None,
            choices=(
                [
                    ChoiceOutput(
                        index=i,
                        output_ids=list(c.generated),
                        finish_reason=_finish_reason(c, run),
                        logprobs=c.logprobs if keep_logprobs else None,
                        completion_tokens=c.completion_tokens,
                    )
                    for i, c in enumerate(choices)
                ]
                if len(choices) > 1
                else None
            ),
        )
        if self.on_final is not None:
            self.on_final(final)
        yield final

    def chunk_gap_s(self) -> float:
        """The least time between two chunks of one stream under the chunk budget: the live
        streams share ``stream_chunks_per_s`` (0: no budget). With few streams it is within
        ``chunk_interval_ms``; under load it makes each record carry more tokens."""
        if self.stream_chunks_per_s <= 0:
            return 0.0
        return self.live_streams / self.stream_chunks_per_s

    def stream_gap_s(self, opened_gap_s: float) -> float:
        """The least time between two chunks of a stream that asked the model for responses
        ``opened_gap_s`` apart (``opening_gap_s``): the budget's share now, rounded to a whole
        number of those spacings (the responses come that far apart: holding for 80 ms where
        they come 70 ms apart would merge every other one and space the chunks 140 ms), less
        ``CHUNK_GAP_SLACK`` for their jitter: 0.6–1.2× the share when more streams generate
        than when it started; when fewer do, the model's spacing (it sends no more often)."""
        share = self.chunk_gap_s()
        if share <= 0 or opened_gap_s <= 0:
            return share * (1 - CHUNK_GAP_SLACK)
        spacings = max(1, round(share / opened_gap_s))
        return spacings * opened_gap_s * (1 - CHUNK_GAP_SLACK)

    def opening_gap_s(self, choices: int) -> float:
        """The chunk budget's spacing with a new request's ``choices`` generating too: what the
        model is asked to space that request's responses by (``min_gap_s``), so it does not
        send responses this service would only merge into its next chunk. Taken when the
        request starts (the model cannot see this instance's count): a stream that started
        under load keeps that spacing, at most what the budget asked for then."""
        if self.stream_chunks_per_s <= 0:
            return 0.0
        return (self.live_streams + max(1, choices)) / self.stream_chunks_per_s

    async def _not_loaded(self, request: PreparedRequest) -> Rejection | None:
        """``model_not_loaded`` when Triton lists the version but neither serves nor loads it:
        nothing will load it by itself, so say so now instead of waiting (docs/lifecycle.md)."""
        if self.model_state is None:
            return None
        state = await self.model_state(request.model, request.model_version)
        if state is None or state in WAIT_STATES:
            return None
        if not state and (request.model, request.model_version) in self.served_here:
            # No state: Triton (re)started and has not loaded it yet (the stack loads again
            # what it served); an unloaded version says UNAVAILABLE.
            return None
        what = f"{request.model} version {request.model_version or '(current)'}"
        return Rejection(
            f"model {what} is not loaded on Triton (state {state or 'never loaded'}): "
            f"serve it with `genwire model load {request.model}"
            f"{':' + request.model_version if request.model_version else ''}`",
            code=ErrorCode.MODEL_NOT_LOADED,
        )

    async def _wait_for_model(self, request: PreparedRequest, run: Run) -> bool:
        """Wait (bounded by ``triton_wait_s`` and the deadline) until the model is ready, or
        until ``run`` is stopped (then False): a cancel during the wait ends it."""
        wait = self.triton_wait_s
        if request.deadline_ms is not None:
            wait = min(wait, max(0.0, (request.deadline_ms - now_ms()) / 1000.0))
        if run.stop_reason is not None:
            return False
        ready = asyncio.ensure_future(
            self.backend.wait_ready(request.model, request.model_version, wait)
        )
        stopped = asyncio.ensure_future(run.stopped().wait())
        try:
            await asyncio.wait((ready, stopped), return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopped.cancel()
            if not ready.done():
                ready.cancel()
        if run.stop_reason is not None:  # the stop decides, whatever the wait came to
            if ready.done() and not ready.cancelled():
                ready.exception()  # retrieved: not logged as never read
            return False
        if ready.result():
            return True
        if request.deadline_ms is not None and now_ms() >= request.deadline_ms:
            # The wait ended at the deadline (the wall clock's) just before the run's timer
            # (the loop's) would have: the deadline decides, not a retry.
            run.stop(FINISH_DEADLINE)
        return False

    async def _classify(self, request: PreparedRequest, exc: ModelError, run: Run) -> GenwireError:
        """An error Triton sent without a status code: whose fault is it? A retryable one when
        ``run`` was stopped meanwhile (its caller ends the generation with the stop)."""
        what = f"{request.model} version {request.model_version or '(current)'}"
        if any(marker in exc.message for marker in INSTANCE_FAILURES):
            # The model's process failed, not the request: Triton restarts it (or itself).
            return RetryableError(f"triton: {exc.message}", dependency=TRITON)
        if exc.message.startswith(MODEL_REFUSAL):
            # The model ran and refused the request's content: the caller's fault (4xx).
            return refusal(exc.message)
        if await self.backend.wait_ready(request.model, request.model_version, 0.0):
            if MODEL_FAILURES.search(exc.message) and TRANSIENT_FAILURES.search(exc.message):
                # Memory ran short for the batch this request was in: not its fault, and it
                # may pass (a smaller batch, memory freed). Retried, as an outage is, but only
                # MEMORY_TRIES times in a row: one that runs short alone is parked.
                return RetryableError(
                    f"triton: {exc.message}", dependency=TRITON, max_tries=MEMORY_TRIES
                )
            # The model is there and failed this request: it never will take it.
            return PermanentError(f"triton: {exc.message}", code=ErrorCode.INFERENCE_FAILED)
        not_loaded = await self._not_loaded(request)
        if not_loaded is not None:
            return not_loaded
        # It was loading: retry now; or stopped while waiting: no answer needed.
        if await self._wait_for_model(request, run) or run.stop_reason is not None:
            return RetryableError(f"triton: {exc.message}", dependency=TRITON)
        if await self.backend.server_ready():
            # Triton is up and the model stayed away: not an outage to wait out for minutes.
            return Rejection(
                f"model {what} is not loaded on Triton (waited {self.triton_wait_s:.0f} s): "
                f"{exc.message}",
                code=ErrorCode.UNAVAILABLE,
            )
        return RetryableError(f"triton: {exc.message}", dependency=TRITON)

    def _final(
        self,
        request: PreparedRequest,
        generated: list[int],
        reason: str,
        timings: Timings,
        *,
        index: int,
        offset: int = 0,
        tail: list[int] | None = None,
        prompt_tokens: int | None = None,
        mean_logprob: float | None = None,
        error: ErrorInfo | None = None,
        completion_tokens: int | None = None,
        logprobs: list[TokenLogprob] | None = None,
        choices: list[ChoiceOutput] | None = None,
    ) -> GenerationChunk:
        if timings.inference_end is None:
            timings.inference_end = now_ms()
        return GenerationChunk(
            request_id=request.request_id,
            index=index,
            offset=offset,
            token_ids=list(tail or []),
            final=True,
            stream=request.stream,
            model=request.model,
            model_version=request.model_version,
            finish_reason=reason,
            prompt_tokens=len(request.input_ids) if prompt_tokens is None else prompt_tokens,
            completion_tokens=len(generated) if completion_tokens is None else completion_tokens,
            mean_logprob=mean_logprob,
            sampling=request.sampling,
            error=error,
            metadata=request.metadata,
            timings=timings,
            output_ids=list(generated),
            logprobs=logprobs,
            choices=choices,
            arm=request.arm,
            shadow=request.shadow,
            principal=request.principal,
        )


SHADOW_RUN_SUFFIX = "~shadow"
"""The in-flight key of a shadow copy: its request id plus this."""
WAIT_STATES = frozenset({"READY", "LOADING"})
"""Triton model states worth waiting for (loading: it will be ready soon)."""


_REFUSED_PARAM = re.compile(r"^(\w+)(?:\[\d+\])?(?: \([^)]*\))? must ")
_API_NAMES = {"input_ids": "prompt_token_ids"}  # the model's input → the request's field


def refusal(message: str) -> PermanentError:
    """The error of a request the model refused (``MODEL_REFUSAL``): ``context_length_exceeded``
    for a prompt the context cannot take, ``out_of_range`` (naming the parameter, as the model's
    message does) for a value out of the model's range, else ``invalid_request``."""
    text = message[len(MODEL_REFUSAL) :] if message.startswith(MODEL_REFUSAL) else message
    if "longer than the context window" in text:
        return PermanentError(f"triton: {message}", code=ErrorCode.CONTEXT_LENGTH_EXCEEDED)
    named = _REFUSED_PARAM.match(text)
    if named is not None or " out of range" in text:
        param = named.group(1) if named is not None else text.split(" ", 1)[0]
        param = _API_NAMES.get(param, param)
        return PermanentError(f"triton: {message}", code=ErrorCode.OUT_OF_RANGE, param=param)
    return PermanentError(f"triton: {message}", code=ErrorCode.INVALID_REQUEST)


def first_token_unix_ms(timings: Timings, final: ModelStep) -> float:
    """When an unstreamed generation's first token was sampled, on this host's clock.

    The model's own TTFT runs from when it received the call, so a stall before that (Triton
    paused, its queue full) would not show in it; counting back from the end of the call by
    what the model spent after its first token does show it.
    """
    end = timings.inference_end or now_ms()
    after_first = (final.queue_ms or 0.0) + (final.compute_ms or 0.0) - (final.ttft_ms or 0.0)
    return max(timings.inference_start or 0.0, end - max(0.0, after_first))


def failure_chunk(
    request: PreparedRequest | None, request_id: str | None, err: GenwireError
) -> list[GenerationChunk]:
    """The final error chunk sent when a PreparedRequest fails for good (after the DLQ record)."""
    rid = request.request_id if request is not None else request_id
    if not rid:
        return []
    return [
        GenerationChunk(
            request_id=rid,
            index=0,
            final=True,
            stream=request.stream if request is not None else False,
            model=request.model if request is not None else "",
            model_version=request.model_version if request is not None else "",
            finish_reason=FINISH_ERROR,
            error=ErrorInfo(code=err.code, message=err.message),
            metadata=request.metadata if request is not None else {},
            timings=request.timings if request is not None else Timings(),
            arm=request.arm if request is not None else "",
            shadow=request.shadow if request is not None else False,
            principal=request.principal if request is not None else "",
        )
    ]
