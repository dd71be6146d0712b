"""The model server behind the inference stage: Triton over gRPC streaming (decoupled model).

``TritonBackend.open`` sends a request on a ``ModelStreamInfer`` call that many requests share
(``genwire.triton_stream``; model versions that cannot be cancelled there get a call each, as does
every request when sharing is off) and yields ``ModelStep``s as responses arrive; many run at
once, so Triton's scheduler batches them.
Failures are classified by gRPC status code (``genwire.triton_stream.classify_status``, the
shared calls' rule too): "not now" codes become
``RetryableError``, the others ``PermanentError``. Errors Triton sends inside the stream carry
no status; they surface as ``ModelError`` and the handler classifies them by asking Triton
whether the model is ready (not ready: wait and retry; ready: the model refused). The handlers
only see the ``ModelBackend``/``ModelStream`` protocols, so their tests use fakes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import grpc
import numpy as np
from tritonclient.grpc import MAX_GRPC_MESSAGE_SIZE, KeepAliveOptions
from tritonclient.grpc.aio import InferenceServerClient
from tritonclient.utils import InferenceServerException

from genwire import triton_admin
from genwire.errors import RetryableError
from genwire.events import PreparedRequest
from genwire.request import ErrorCode
from genwire.settings import CommonSettings
from genwire.triton_io import (
    HOLD_FIRST_RESPONSE_PARAMETER,
    RESPONSE_GAP_PARAMETER,
    Options,
    Output,
    infer_inputs,
    scalar,
    top_alternatives,
)
from genwire.triton_stream import (
    PROBE_TIMEOUT_S,
    TRITON,
    Call,
    SharedStreams,
    StreamClosed,
    build_request,
    cancel_request,
    classify_status,
    is_final,
    result_of,
)

log = logging.getLogger(__name__)


PROBE_RETRY_S = 30.0
"""A version that refused the cancel probe with an error (loading, say) is asked again after
this long; meanwhile its requests get a call each."""

READY_POLL_S = 0.25
"""How often a request waiting for its model asks Triton whether the model is ready again.
After its own first question, a waiter shares the others' (a question in flight, a "not yet"
heard less than half a poll ago: ``_ready_now``), so an outage costs at most about 8 questions
a second per model version however many records wait."""

RECONNECT_BACKOFF_MS = (100, 1000)
"""The Triton channel's reconnect backoff, first and longest (gRPC's defaults: 1 s and 120 s).
A channel that lost Triton fails every call at once until its next attempt to connect, so
with the defaults a Triton back after a long outage stayed unreachable for up to two minutes
(and for 1–3 s after a 4 s restart); one connection attempt a second to it costs nothing."""


def channel_args() -> list[tuple[str, int]]:
    """tritonclient's own channel arguments (message sizes, keepalive), with the reconnect
    backoff above: passing any replaces all of tritonclient's. (Not gRPC's
    ``min_reconnect_backoff_ms``: despite its name it is the least time a connection attempt
    gets, 20 s, which a remote Triton's TLS handshake may need.)"""
    keepalive = KeepAliveOptions()
    return [
        ("grpc.max_send_message_length", MAX_GRPC_MESSAGE_SIZE),
        ("grpc.max_receive_message_length", MAX_GRPC_MESSAGE_SIZE),
        ("grpc.keepalive_time_ms", keepalive.keepalive_time_ms),
        ("grpc.keepalive_timeout_ms", keepalive.keepalive_timeout_ms),
        ("grpc.keepalive_permit_without_calls", int(keepalive.keepalive_permit_without_calls)),
        ("grpc.http2.max_pings_without_data", keepalive.http2_max_pings_without_data),
        ("grpc.initial_reconnect_backoff_ms", RECONNECT_BACKOFF_MS[0]),
        ("grpc.max_reconnect_backoff_ms", RECONNECT_BACKOFF_MS[1]),
    ]


SETTLING_MAX = 64
"""Answered calls whose status is read in the background at most (each for at most 5 s):
beyond it a caller waits for its call's status before going on, so calls open on the channel
stay bounded by the stage's concurrency plus this."""


def status_of(exc: InferenceServerException) -> grpc.StatusCode | None:
    """The gRPC status of a tritonclient exception (its ``status()`` is ``"StatusCode.X"``)."""
    name = str(exc.status() or "").rsplit(".", 1)[-1]
    return grpc.StatusCode.__members__.get(name)


class ModelError(Exception):
    """An error Triton sent inside the stream (no status code): ``open``'s caller classifies it
    by asking whether the model is ready (not ready: retry; ready: the model rejected it)."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


@dataclass
class ModelStep:
    """One streamed response of the model: new tokens, and on the last one the totals."""

    token_ids: list[int]
    logprobs: list[float]
    finished: bool = False
    finish_reason: str = ""
    prompt_tokens: int = 0
    completion_tokens: int = 0
    mean_logprob: float | None = None
    queue_ms: float | None = None
    compute_ms: float | None = None
    ttft_ms: float | None = None
    """Measured inside the model: arrival to first sampled token (absent on older versions)."""
    model_version: str = ""
    """The version that served the request (Triton's response says)."""
    choice: int = 0
    """Which of the request's ``n`` choices the tokens belong to; ``finished`` ends that
    choice (the stream ends once every choice has)."""
    top_logprobs: list[list[tuple[int, float]]] = field(default_factory=list)
    """Per token (when the request asked for ``top_logprobs``): the most likely alternatives,
    ``(token id, logprob)``, most likely first."""


class ModelStream(Protocol):
    """Responses of one generation; ``cancel`` makes the server stop generating."""

    def __aiter__(self) -> AsyncIterator[ModelStep]: ...

    def cancel(self) -> None: ...


ModelStateLookup = Callable[[str, str], Awaitable[str | None]]
"""(model, version) → Triton's state of that version in its repository index: ``READY``,
``LOADING``, ``UNLOADING``, ``UNAVAILABLE``, ``""`` (listed, never loaded); None when it cannot
be told (Triton down, or the model not listed)."""


class ModelBackend(Protocol):
    """What the inference handler needs from a model server."""

    async def open(
        self,
        request: PreparedRequest,
        headers: Mapping[str, str],
        *,
        stream: bool = True,
        min_gap_s: float = 0.0,
        hold_first: bool = False,
    ) -> ModelStream:
        """Start generating ``request``; responses stream from the returned object.

        ``stream=False`` asks for a single (final) response carrying every token;
        ``min_gap_s`` > 0 asks for streamed responses at least that far apart
        (``genwire.triton_io.RESPONSE_GAP_PARAMETER``), the first one too with ``hold_first``
        (``genwire.triton_io.HOLD_FIRST_RESPONSE_PARAMETER``).
        """
        ...

    async def wait_ready(self, model: str, version: str, timeout_s: float) -> bool:
        """Wait (bounded) until the model is ready; True if it is."""
        ...

    async def server_ready(self) -> bool:
        """Whether the server itself is up and ready (whatever its models)."""
        ...


def parse_response(result: Any) -> ModelStep:
    """A response of the model contract (``genwire.triton_io``), read through ``as_numpy`` (a
    ``genwire.triton_stream.Result`` or tritonclient's ``InferResult``), as a ``ModelStep``."""
    ids = result.as_numpy(Output.TOKEN_IDS)
    lps = result.as_numpy(Output.LOGPROBS)
    finished = scalar(result, Output.FINISHED)
    reason = scalar(result, Output.FINISH_REASON)
    if isinstance(reason, bytes):
        reason = reason.decode("utf-8", "replace")
    mean = scalar(result, Output.MEAN_LOGPROB)
    queue = scalar(result, Output.QUEUE_MS)
    compute = scalar(result, Output.COMPUTE_MS)
    ttft = scalar(result, Output.TTFT_MS)
    prompt = scalar(result, Output.PROMPT_TOKENS)
    completion = scalar(result, Output.COMPLETION_TOKENS)
    choice = scalar(result, Output.CHOICE)
    tokens = [] if ids is None else ids.reshape(-1).astype(np.int64).tolist()
    return ModelStep(
        token_ids=tokens,
        logprobs=[] if lps is None else lps.reshape(-1).astype(np.float64).tolist(),
        finished=bool(finished) if finished is not None else False,
        finish_reason=str(reason or ""),
        prompt_tokens=int(prompt) if prompt is not None else 0,
        completion_tokens=int(completion) if completion is not None else 0,
        mean_logprob=float(mean) if mean is not None else None,
        queue_ms=float(queue) if queue is not None else None,
        compute_ms=float(compute) if compute is not None else None,
        ttft_ms=float(ttft) if ttft is not None else None,
        model_version=str(getattr(result.get_response(), "model_version", "") or ""),
        choice=int(choice) if choice is not None else 0,
        top_logprobs=top_alternatives(result, len(tokens)),
    )


def options_of(request: PreparedRequest) -> Options:
    """The decode-loop options of a request, as the model's optional inputs."""
    s = request.sampling
    return Options(
        n=s.n,
        top_logprobs=s.top_logprobs,
        presence_penalty=s.presence_penalty,
        frequency_penalty=s.frequency_penalty,
        repetition_penalty=s.repetition_penalty,
        min_p=s.min_p,
        logit_bias=dict(s.logit_bias),
        min_tokens=s.min_tokens,
        ignore_eos=s.ignore_eos,
        guided=s.guided.model_dump_json() if s.guided is not None else "",
        stop=tuple(s.stop),
    )


class TritonStream:
    """One ``ModelStreamInfer`` call; iterating yields steps until the final one."""

    def __init__(
        self,
        responses: Any,
        done: asyncio.Event,
        choices: int = 1,
        settle: Callable[[Callable[[], Awaitable[None]]], bool] | None = None,
    ) -> None:
        self._responses = responses
        self._done = done
        self._settle = settle  # takes the answered call's completion off the caller's path
        self._cancelled = False
        self._answered = False  # Triton sent the last response (every final, or an error)
        self._open = max(1, choices)  # choices not finished yet

    def __aiter__(self) -> AsyncIterator[ModelStep]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[ModelStep]:
        try:
            while True:
                try:
                    result, error = await self._responses.__anext__()
                except StopAsyncIteration:
                    if self._cancelled:
                        return
                    raise RetryableError(
                        "triton closed the stream before the final response",
                        code=ErrorCode.UNAVAILABLE,
                        dependency=TRITON,
                    ) from None
                except asyncio.CancelledError:
                    task = asyncio.current_task()
                    if self._cancelled and task is not None and task.cancelling() == 0:
                        return  # our own cancel() of the call, not a cancel of this task
                    raise
                except grpc.aio.AioRpcError as exc:
                    if self._cancelled:
                        return
                    raise classify_status(exc.code(), str(exc.details())) from None
                if error is not None:
                    if self._cancelled:
                        return
                    self._answered = True
                    raise ModelError(str(error.message()))
                step = parse_response(result)
                yield step
                if step.finished:
                    self._open -= 1
                    if self._open <= 0:
                        self._answered = True
                        return
        finally:
            self._done.set()  # ends the request side, so the call completes
            # An answered call's status must still be read: a call dropped before it is
            # cancelled (grpc.aio cancels unfinished calls it collects), and Triton 2.51 pins a
            # model version whose answered stream is cancelled (it then never unloads). With a
            # ``settle`` it is read in the background: the caller has every response and
            # publishes the result now instead of after the server's close (0.6–1.8 ms).
            if self._answered and (self._settle is None or not self._settle(self._complete)):
                await self._complete()

    async def _complete(self) -> None:
        """Read the answered call to its end (its status), for at most 5 s."""
        with contextlib.suppress(Exception):
            async with asyncio.timeout(5.0):
                async for _ in self._responses:
                    pass

    def cancel(self) -> None:
        """Cancel the call: Triton marks the request cancelled and the model stops."""
        if self._answered:
            return  # nothing to stop; cancelling an answered stream pins the version in Triton
        self._cancelled = True
        self._done.set()
        with contextlib.suppress(Exception):
            self._responses.cancel()


_WAKE = object()  # queued by ``cancel`` so that the iteration returns at once


class SharedTritonStream:
    """One request on a shared call (``genwire.triton_stream``); iterating yields steps until the
    final one. ``cancel`` sends a cancel message for it on the same call."""

    def __init__(
        self,
        call: Call,
        responses: asyncio.Queue[Any],
        triton_id: str,
        model: str,
        version: str,
        choices: int = 1,
        watch_cancel: Callable[[Call, asyncio.Queue[Any], str], None] | None = None,
    ) -> None:
        self._call = call
        self._responses = responses
        self._id = triton_id
        self._model, self._version = model, version
        self._watch_cancel = watch_cancel  # learns whether the model refused our cancel
        self._cancelled = False
        self._answered = False
        self._open = max(1, choices)

    def __aiter__(self) -> AsyncIterator[ModelStep]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[ModelStep]:
        try:
            while True:
                item = await self._responses.get()
                if self._cancelled:
                    return
                if isinstance(item, StreamClosed):
                    raise item.error
                if item.error_message:
                    self._answered = True
                    raise ModelError(str(item.error_message))
                if is_final(item) and not item.infer_response.outputs:
                    # The final flag alone, with choices still open: the model stopped it
                    # without a result (a send of it failed). Another attempt, as when a
                    # call of its own closed early.
                    self._answered = True
                    raise RetryableError(
                        "triton ended the request without its final response",
                        code=ErrorCode.UNAVAILABLE,
                        dependency=TRITON,
                    )
                step = parse_response(result_of(item))
                if step.finished:
                    self._open -= 1
                    # Before the yield: a caller that stops at the last step must not cancel.
                    self._answered = self._open <= 0
                yield step
                if self._answered:
                    return
        finally:
            # Left early (the task cancelled, an error here): the model must stop too. Sent
            # before the request is forgotten, which may half-close a retired call.
            self.cancel()

    def cancel(self) -> None:
        """Stop the model generating for this request; the other requests go on."""
        if not self._answered and not self._cancelled:
            self._cancelled = True
            if not self._call.ended:
                cancel_id = f"{self._id}~cancel"
                message = cancel_request(self._model, self._version, self._id, cancel_id)
                if self._watch_cancel is None:
                    self._call.send_only(message)
                else:
                    self._watch_cancel(self._call, self._call.send(message, cancel_id), cancel_id)
            self._responses.put_nowait(_WAKE)
        self._call.forget(self._id)  # also when nobody iterates: the call must not wait for it


class TritonBackend:
    """Triton over ``tritonclient.grpc.aio``: one client (one HTTP/2 channel) for every call."""

    def __init__(
        self, url: str, shared_stream_s: float = 1.0, settings: CommonSettings | None = None
    ) -> None:
        """``settings``: where the admin secret comes from (inference's own: its
        ``GENWIRE_INFERENCE_TRITON_ADMIN_KEY`` wins over the plain one); None: the plain ones."""
        self.url = url
        self.client = InferenceServerClient(url, channel_args=channel_args())
        # A secure stack's Triton restricts the model config and the repository index.
        self._admin = triton_admin.headers(settings, grpc=True)
        self._batched: dict[tuple[str, str], bool] = {}
        self._not_ready: dict[tuple[str, str], float] = {}  # when Triton last said "not yet"
        self._asking: dict[tuple[str, str], asyncio.Future[bool]] = {}  # a question in flight
        self._settling: set[asyncio.Task[None]] = set()  # answered calls being completed
        self.shared: SharedStreams | None = None
        if shared_stream_s > 0:
            # Private in tritonclient: see genwire.triton_stream's docstring for why.
            stub = self.client._client_stub
            self.shared = SharedStreams(stub.ModelStreamInfer, shared_stream_s)
        self._cancels: dict[tuple[str, str], tuple[asyncio.Future[bool | None], float]] = {}
        self._watching: set[asyncio.Task[None]] = set()  # cancels waiting for their answer

    async def close(self) -> None:
        """Let answered calls complete (each is bounded by 5 s), then close the channel."""
        if self.shared is not None:
            await self.shared.close(6.0)
        if self._settling:
            _, pending = await asyncio.wait(set(self._settling), timeout=6.0)
            if pending:
                log.warning("%d answered Triton calls had not completed at close", len(pending))
        await self.client.close()

    def _settle(self, complete: Callable[[], Awaitable[None]]) -> bool:
        """Complete an answered call in the background; False (the caller completes it) when
        ``SETTLING_MAX`` already are: a slow server then slows callers, as before."""
        if len(self._settling) >= SETTLING_MAX:
            return False
        task = asyncio.ensure_future(complete())
        self._settling.add(task)  # a reference, so the task is not collected mid-call
        task.add_done_callback(self._settling.discard)
        return True

    async def _is_batched(self, model: str, version: str) -> bool:
        # With max_batch_size > 0 every tensor carries a leading batch dimension.
        key = (model, version)
        if key not in self._batched:
            try:
                cfg = await self.client.get_model_config(  # bounded: a hung Triton is retried
                    model, version, headers=self._admin, as_json=True, client_timeout=2.0
                )
            except InferenceServerException as exc:
                if status_of(exc) in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.INVALID_ARGUMENT):
                    raise ModelError(str(exc.message())) from None  # unknown or not loaded
                raise classify_status(status_of(exc), str(exc.message())) from None
            self._batched[key] = int(cfg.get("config", {}).get("max_batch_size", 0) or 0) > 0
        return self._batched[key]

    async def _understands_cancels(self, model: str, version: str) -> bool:
        """Whether requests of this version can share a call: probed once per version (a
        version's code never changes under its number); a probe refused with an error is
        asked again after ``PROBE_RETRY_S``; a request without a version asks for whichever
        is best: never shared."""
        if self.shared is None or not version:
            return False
        key = (model, version)
        known = self._cancels.get(key)
        now = time.monotonic()
        if (
            known is None
            or (known[0].done() and known[0].exception() is not None)
            or (known[0].done() and known[0].result() is None and now - known[1] > PROBE_RETRY_S)
        ):
            known = (asyncio.ensure_future(self.shared.probe(model, version)), now)
            self._cancels[key] = known  # concurrent first requests wait for one probe
        return bool(await asyncio.shield(known[0]))

    def _watcher(self, model: str, version: str) -> Callable[[Call, asyncio.Queue[Any], str], None]:
        """What reads a cancel's answer: a refusal (the version's config changed to several
        instances since its probe, say) stops the version sharing calls from then on."""

        async def watch(call: Call, answers: asyncio.Queue[Any], cancel_id: str) -> None:
            try:
                async with asyncio.timeout(PROBE_TIMEOUT_S):
                    answer = await answers.get()
                if not isinstance(answer, StreamClosed) and answer.error_message:
                    log.warning(
                        "%s version %s refused a cancel (%s): a call per request from now on",
                        model,
                        version,
                        answer.error_message,
                    )
                    refused: asyncio.Future[bool | None] = asyncio.Future()
                    refused.set_result(False)
                    self._cancels[(model, version)] = (refused, time.monotonic())
            except TimeoutError:
                pass
            finally:
                call.forget(cancel_id)

        def start(call: Call, answers: asyncio.Queue[Any], cancel_id: str) -> None:
            task = asyncio.ensure_future(watch(call, answers, cancel_id))
            self._watching.add(task)
            task.add_done_callback(self._watching.discard)

        return start

    async def open(
        self,
        request: PreparedRequest,
        headers: Mapping[str, str],
        *,
        stream: bool = True,
        min_gap_s: float = 0.0,
        hold_first: bool = False,
    ) -> TritonStream | SharedTritonStream:
        """Start a generation of ``request``; per-token responses when ``stream``, at least
        ``min_gap_s`` apart when > 0 (the first one too with ``hold_first``).

        ``headers`` (the trace context) go with a call of its own only: a shared call has no
        metadata of a request's (Triton's own spans, when Triton traces, join the request's
        trace with ``shared_stream_s`` 0)."""
        batched = await self._is_batched(request.model, request.model_version)
        s = request.sampling
        inputs = infer_inputs(
            request.input_ids,
            max_tokens=s.max_tokens,
            temperature=s.temperature,
            top_p=s.top_p,
            top_k=s.top_k,
            seed=s.seed,
            stream=stream,
            stop_token_ids=s.stop_token_ids,
            batched=batched,
            options=options_of(request),
        )
        parameters: dict[str, Any] | None = None  # a bool goes as Triton's bool_param
        if stream and min_gap_s > 0:
            parameters = {RESPONSE_GAP_PARAMETER: f"{min_gap_s * 1000:.3f}"}
            if hold_first:
                parameters[HOLD_FIRST_RESPONSE_PARAMETER] = True
        if self.shared is not None and await self._understands_cancels(
            request.model, request.model_version
        ):
            triton_id = self.shared.next_id(request.request_id)
            call = self.shared.call(request.model, request.model_version)
            message = build_request(
                request.model,
                request.model_version,
                inputs,
                triton_id,
                parameters,
                empty_final=True,
            )
            return SharedTritonStream(
                call,
                call.send(message, triton_id),
                triton_id,
                request.model,
                request.model_version,
                choices=s.n,
                watch_cancel=self._watcher(request.model, request.model_version),
            )
        done = asyncio.Event()

        async def requests() -> AsyncIterator[dict[str, Any]]:
            yield {
                "model_name": request.model,
                "model_version": request.model_version,
                "inputs": inputs,
                "request_id": request.request_id,
                "parameters": parameters,
            }
            # Keep our side open until the generation ends: some servers end the stream on
            # the client's half-close.
            await done.wait()

        try:
            responses = self.client.stream_infer(requests(), headers=dict(headers))
        except InferenceServerException as exc:
            raise classify_status(status_of(exc), str(exc.message())) from None
        return TritonStream(responses, done, choices=s.n, settle=self._settle)

    async def model_state(self, model: str, version: str) -> str | None:
        """The state of ``model`` (``version``; "": its best one) in Triton's repository index
        (``ModelStateLookup``)."""
        try:
            index = await self.client.get_model_repository_index(
                headers=self._admin, as_json=True, client_timeout=2.0
            )
        except InferenceServerException:
            return None
        states = [
            str(m.get("state", ""))
            for m in index.get("models", [])
            if m.get("name") == model and (not version or m.get("version", version) == version)
        ]
        if not states:
            return None
        for best in ("READY", "LOADING", "UNLOADING", "UNAVAILABLE"):
            if best in states:
                return best
        return ""

    async def server_ready(self) -> bool:
        """Whether Triton itself answers and is ready (whatever its models)."""
        try:
            return bool(await self.client.is_server_ready(client_timeout=2.0))
        except InferenceServerException:
            return False

    async def wait_ready(self, model: str, version: str, timeout_s: float) -> bool:
        """Poll model readiness every ``READY_POLL_S`` for up to ``timeout_s``. The first
        question is always Triton's own answer (a caller decides on it whether the model
        refused a request); the later ones share what another waiter heard just before."""
        deadline = time.monotonic() + timeout_s
        shared = False
        while True:
            if await self._ready_now(model, version, shared):
                self._batched.pop((model, version), None)  # it may have been reloaded
                return True
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            await asyncio.sleep(min(READY_POLL_S, left))
            shared = True

    async def _ready_now(self, model: str, version: str, shared: bool) -> bool:
        """Whether Triton serves ``model`` ``version``. With ``shared``: the answer to a
        question another waiter has in flight, or a "not yet" heard less than half a poll ago
        (a "ready" is never kept)."""
        key = (model, version)
        if shared:
            asking = self._asking.get(key)
            if asking is not None:
                return await asyncio.shield(asking)
            if time.monotonic() - self._not_ready.get(key, -READY_POLL_S) < READY_POLL_S / 2:
                return False
        asking = asyncio.ensure_future(self._ask_ready(key))
        self._asking[key] = asking
        asking.add_done_callback(lambda done: self._asked(key, done))
        return await asyncio.shield(asking)

    def _asked(self, key: tuple[str, str], done: asyncio.Future[bool]) -> None:
        if self._asking.get(key) is done:
            del self._asking[key]
        if not done.cancelled():
            done.exception()  # retrieved: a waiter that left must not leave it unread

    async def _ask_ready(self, key: tuple[str, str]) -> bool:
        try:
            if await self.client.is_model_ready(*key, client_timeout=2.0):
                self._not_ready.pop(key, None)
                return True
        except InferenceServerException:
            pass
        self._not_ready[key] = time.monotonic()
        return False
