"""A small tritonclient gRPC (asyncio) client of the genwire model, for tests and benchmarks.

The inference service has its own client; this one exists to exercise the model contract
(``genwire.triton_io``: inputs and outputs as config.pbtxt declares them) directly.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

from genwire.triton_io import (
    RESPONSE_GAP_PARAMETER,
    Options,
    Output,
    infer_inputs,
    scalar,
    top_alternatives,
)
from genwire.triton_stream import SharedStreams, StreamClosed, build_request, result_of


class GenerationError(RuntimeError):
    """Triton answered the request with an error."""


@dataclasses.dataclass
class Generation:
    """Everything one request produced, plus client-side timings."""

    token_ids: list[int] = dataclasses.field(default_factory=list)
    logprobs: list[float] = dataclasses.field(default_factory=list)
    finish_reason: str = ""
    prompt_tokens: int = 0
    completion_tokens: int = 0
    mean_logprob: float = 0.0
    queue_ms: float = 0.0
    compute_ms: float = 0.0
    ttft_ms: float = 0.0  # measured inside the model: arrival to first sampled token
    responses: int = 0
    started: float = 0.0
    first_token_s: float | None = None  # time to the first response carrying tokens
    finished_s: float = 0.0
    arrivals: list[tuple[float, int]] = dataclasses.field(default_factory=list)
    top_logprobs: list[list[tuple[int, float]]] = dataclasses.field(default_factory=list)
    choices: dict[int, Generation] = dataclasses.field(default_factory=dict)
    """With ``n`` > 1: every choice's own figures (choice 0 is also this object's own)."""


async def generate(
    client: Any,
    model: str,
    input_ids: list[int],
    max_tokens: int,
    *,
    temperature: float = 0.0,
    top_p: float = 1.0,
    top_k: int = 0,
    seed: int = 0,
    stop_token_ids: list[int] | None = None,
    stream: bool = True,
    request_id: str = "",
    cancel_after_tokens: int | None = None,
    on_response: Callable[[Generation], None] | None = None,
    options: Options | None = None,
    min_gap_ms: float = 0.0,
) -> Generation:
    """Run one request over a bidirectional gRPC stream and collect its responses.

    ``client`` is a ``tritonclient.grpc.aio.InferenceServerClient``. With
    ``cancel_after_tokens`` the stream is cancelled once that many tokens arrived
    (finish_reason is then "cancelled" on the client side); ``min_gap_ms`` > 0 asks for
    streamed responses at least that far apart (``RESPONSE_GAP_PARAMETER``).
    """
    inputs = infer_inputs(
        input_ids,
        max_tokens=max_tokens,
        temperature=temperature,
        top_p=top_p,
        top_k=top_k,
        seed=seed,
        stream=stream,
        stop_token_ids=stop_token_ids or (),
        options=options,
    )
    choices = options.n if options is not None else 1

    parameters = _gap_parameters(min_gap_ms)

    async def requests() -> AsyncIterator[dict[str, Any]]:
        yield {
            "model_name": model,
            "inputs": inputs,
            "request_id": request_id,
            "parameters": parameters,
        }

    out = Generation(started=time.perf_counter())
    out.choices[0] = out
    open_choices = choices
    responses = client.stream_infer(inputs_iterator=requests())
    ended = False  # the server sent the request's last response (final or error)
    try:
        async for result, error in responses:
            if error is not None:
                ended = True
                raise GenerationError(str(error))
            if _take(out, result):
                open_choices -= 1
            if on_response is not None:
                on_response(out)
            if open_choices <= 0:
                if out.finished_s == 0.0:
                    out.finished_s = time.perf_counter() - out.started
                ended = True
                break
            if cancel_after_tokens is not None and len(out.token_ids) >= cancel_after_tokens:
                out.finish_reason = "cancelled"
                out.finished_s = time.perf_counter() - out.started
                break
    finally:
        await end_call(responses, cancel=not ended)
    return out


async def generate_shared(
    streams: SharedStreams,
    model: str,
    input_ids: list[int],
    max_tokens: int,
    *,
    temperature: float = 0.0,
    top_p: float = 1.0,
    seed: int = 0,
    stop_token_ids: list[int] | None = None,
    min_gap_ms: float = 0.0,
) -> Generation:
    """Run one request on a gRPC stream shared with others (``genwire.triton_stream``: how the
    inference service talks to Triton) and collect its responses (``min_gap_ms``: as in
    ``generate``)."""
    inputs = infer_inputs(
        input_ids,
        max_tokens=max_tokens,
        temperature=temperature,
        top_p=top_p,
        top_k=0,
        seed=seed,
        stream=True,
        stop_token_ids=stop_token_ids or (),
    )
    out = Generation(started=time.perf_counter())
    out.choices[0] = out
    triton_id = streams.next_id("bench")
    call = streams.call(model, "")
    message = build_request(model, "", inputs, triton_id, _gap_parameters(min_gap_ms))
    responses = call.send(message, triton_id)
    try:
        while True:
            response = await responses.get()
            if isinstance(response, StreamClosed):
                raise GenerationError(response.error.message)
            if response.error_message:
                raise GenerationError(str(response.error_message))
            if _take(out, result_of(response)):
                return out
    finally:
        call.forget(triton_id)


def _gap_parameters(min_gap_ms: float) -> dict[str, str] | None:
    return {RESPONSE_GAP_PARAMETER: f"{min_gap_ms:g}"} if min_gap_ms > 0 else None


def _take(out: Generation, result: Any) -> bool:
    """Add one response to its choice of ``out``; True when it ended that choice."""
    now = time.perf_counter() - out.started
    choice = scalar(result, Output.CHOICE)
    index = int(choice) if choice is not None else 0
    target = out.choices.setdefault(index, Generation(started=out.started))
    out.responses += 1 if target is not out else 0
    return _absorb(target, result, now)


async def end_call(responses: Any, *, cancel: bool, timeout_s: float = 5.0) -> None:
    """End the gRPC call: cancel it when stopping early (the cancellation the model watches
    for); after the request's last response, let it complete instead.

    Cancelling a stream Triton already answered in full is not a no-op: Triton 2.51's gRPC
    frontend then "issues a cancellation" for the finished request, waits for a callback that
    never comes and keeps the stream's state, which pins the model version: once unloaded it
    stays UNLOADING and its Python stub never ends (tests/model/test_unload.py)."""
    if not cancel:
        with contextlib.suppress(Exception):
            async with asyncio.timeout(timeout_s):
                async for _ in responses:  # nothing is left but the call's status
                    pass
                return
    responses.cancel()


def _absorb(out: Generation, result: Any, now: float) -> bool:
    """Add one response to ``out``; True when it was the final one (of its choice)."""
    out.responses += 1
    tokens = result.as_numpy(Output.TOKEN_IDS).tolist()
    if tokens:
        if out.first_token_s is None:
            out.first_token_s = now
        out.arrivals.append((now, len(tokens)))
    out.token_ids.extend(int(t) for t in tokens)
    out.logprobs.extend(float(x) for x in result.as_numpy(Output.LOGPROBS).tolist())
    out.top_logprobs.extend(top_alternatives(result, len(tokens)))
    # The totals ride on a choice's final response (older versions send them every time).
    for name, attr, cast in (
        (Output.PROMPT_TOKENS, "prompt_tokens", int),
        (Output.COMPLETION_TOKENS, "completion_tokens", int),
        (Output.MEAN_LOGPROB, "mean_logprob", float),
        (Output.QUEUE_MS, "queue_ms", float),
        (Output.COMPUTE_MS, "compute_ms", float),
        (Output.TTFT_MS, "ttft_ms", float),
    ):
        value = scalar(result, name)
        if value is not None:
            setattr(out, attr, cast(value))
    if not bool(scalar(result, Output.FINISHED)):
        return False
    reason = scalar(result, Output.FINISH_REASON)
    out.finish_reason = reason.decode() if isinstance(reason, bytes) else str(reason or "")
    out.finished_s = now
    return True
