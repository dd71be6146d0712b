"""The shared Triton call's bookkeeping, with a fake gRPC call: routing by id, a failed call
failing every request on it (retryably), rotation, and half-closing a retired call."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, AsyncIterator
from types import SimpleNamespace
from typing import Any, cast

import grpc
import pytest
from genwire_inference import backend as backend_module
from genwire_inference.backend import ModelStep, SharedTritonStream, TritonBackend, TritonStream

from genwire.errors import RetryableError
from genwire.events import PreparedRequest, Sampling
from genwire.triton_io import CANCEL_ACK_PROBE, CANCEL_PARAMETER, infer_inputs
from genwire.triton_stream import SharedStreams, StreamClosed, build_request, is_final


def _response(rid: str, final: bool) -> Any:
    flag = SimpleNamespace(bool_param=final)
    return SimpleNamespace(
        error_message="",
        infer_response=SimpleNamespace(
            id=rid, outputs=[], parameters={"triton_final_response": flag}
        ),
    )


class _FakeCall:
    """A ``ModelStreamInfer`` call: echoes each request's id as one final response, or fails
    with ``fail`` once set; records whether the client half-closed it."""

    def __init__(self, requests: AsyncIterator[Any]) -> None:
        self.requests = requests
        self.responses: asyncio.Queue[Any] = asyncio.Queue()
        self.half_closed = False
        self.cancelled = False
        self.hold = True  # answer nothing until released
        self._pump = asyncio.ensure_future(self._read_requests())

    async def _read_requests(self) -> None:
        async for message in self.requests:
            await self.responses.put(message)
        self.half_closed = True
        await self.responses.put(None)

    def __aiter__(self) -> _FakeCall:
        return self

    async def __anext__(self) -> Any:
        item = await self.responses.get()
        if isinstance(item, BaseException):
            raise item
        if item is None:
            raise StopAsyncIteration
        return _response(item.id, final=True)

    def cancel(self) -> None:
        self.cancelled = True


def _message(rid: str) -> Any:
    return SimpleNamespace(id=rid)


@pytest.fixture
def calls() -> list[_FakeCall]:
    return []


@pytest.fixture
def streams(calls: list[_FakeCall]) -> SharedStreams:
    def start(requests: AsyncIterator[Any]) -> _FakeCall:
        calls.append(_FakeCall(requests))
        return calls[-1]

    return SharedStreams(start, rotate_s=0.2)


async def test_responses_go_to_their_own_request(streams: SharedStreams) -> None:
    call = streams.call("m", "1")
    a, b = call.send(_message("a"), "a"), call.send(_message("b"), "b")
    async with asyncio.timeout(2):
        ra, rb = await a.get(), await b.get()
    assert ra.infer_response.id == "a" and rb.infer_response.id == "b" and is_final(ra)
    assert streams.call("m", "1") is call  # within rotate_s: the same call


async def test_a_failed_call_fails_every_request_on_it_retryably(
    streams: SharedStreams, calls: list[_FakeCall]
) -> None:
    call = streams.call("m", "1")
    queues = [call.send(_message(f"r{i}"), f"r{i}") for i in range(3)]
    for q in queues:  # their echoes first
        await q.get()
    error = grpc.aio.AioRpcError(
        grpc.StatusCode.UNAVAILABLE, grpc.aio.Metadata(), grpc.aio.Metadata(), "connection reset"
    )
    calls[0].responses.put_nowait(error)
    async with asyncio.timeout(2):
        closed = [await q.get() for q in queues]
    assert all(isinstance(c, StreamClosed) for c in closed)
    assert all(isinstance(c.error, RetryableError) for c in closed)
    assert "UNAVAILABLE" in closed[0].error.message
    async with asyncio.timeout(2):  # what writes the requests (grpc.aio's task) ends too
        await calls[0]._pump
    assert streams.call("m", "1") is not call and len(calls) == 2  # the next request: a new call


async def test_a_call_is_retired_on_time_and_half_closed_after_its_last_request(
    streams: SharedStreams, calls: list[_FakeCall]
) -> None:
    call = streams.call("m", "1")
    q = call.send(_message("long"), "long")
    await q.get()
    await asyncio.sleep(0.3)  # rotate_s passed with a request still registered: retired
    assert call.retired and not calls[0].half_closed
    assert streams.call("m", "1") is not call  # new requests go to a new call
    call.forget("long")  # the last request on the old call is done: it half-closes
    async with asyncio.timeout(2):
        await call.reader
    assert calls[0].half_closed and call not in streams.calls and not calls[0].cancelled


async def test_close_half_closes_idle_calls(streams: SharedStreams, calls: list[_FakeCall]) -> None:
    streams.call("m", "1")
    await streams.close(2.0)
    assert calls[0].half_closed and not streams.calls and not calls[0].cancelled


class _SilentCall:
    """A call that takes every message and answers nothing (the model still generating);
    records what the client sent and whether it half-closed."""

    def __init__(self, requests: AsyncIterator[Any]) -> None:
        self.sent: list[Any] = []
        self.answers: asyncio.Queue[Any] = asyncio.Queue()
        self.half_closed = asyncio.Event()
        self._pump = asyncio.ensure_future(self._read(requests))

    async def _read(self, requests: AsyncIterator[Any]) -> None:
        async for message in requests:
            self.sent.append(message)
        self.half_closed.set()

    def __aiter__(self) -> _SilentCall:
        return self

    async def __anext__(self) -> Any:
        item = await self.answers.get()
        if item is None:
            raise StopAsyncIteration
        return item

    def cancel(self) -> None:
        self.answers.put_nowait(None)

    def cancels(self) -> list[str]:
        return [
            m.parameters[CANCEL_PARAMETER].string_param
            for m in self.sent
            if CANCEL_PARAMETER in m.parameters
        ]


def _silent_streams(rotate_s: float) -> tuple[SharedStreams, list[_SilentCall]]:
    calls: list[_SilentCall] = []

    def start(requests: AsyncIterator[Any]) -> _SilentCall:
        calls.append(_SilentCall(requests))
        return calls[-1]

    return SharedStreams(start, rotate_s), calls


def _open(streams: SharedStreams, rid: str) -> SharedTritonStream:
    inputs = infer_inputs(
        [1, 2], max_tokens=9, temperature=0, top_p=1, top_k=0, seed=0, stream=True
    )
    tid = streams.next_id(rid)
    call = streams.call("m", "1")
    queue = call.send(build_request("m", "1", inputs, tid, empty_final=True), tid)
    return SharedTritonStream(call, queue, tid, "m", "1")


async def test_a_task_cancelled_on_a_retired_call_cancels_its_request_in_the_model() -> None:
    # The consumer cancels the handler (rebalance, stop) while it waits for the model, on a
    # call already retired: the cancel message must go out before the call half-closes.
    streams, calls = _silent_streams(rotate_s=0.05)
    stream = _open(streams, "r1")

    async def read() -> None:
        async for _ in stream:
            pass

    task = asyncio.ensure_future(read())
    await asyncio.sleep(0.2)  # the call is retired meanwhile
    assert next(iter(streams.calls)).retired
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    async with asyncio.timeout(2):
        await calls[0].half_closed.wait()
    assert calls[0].cancels() == [stream._id]


async def test_the_same_request_gets_different_triton_ids_in_two_instances() -> None:
    # The model cancels by id whoever sent it: a request running in two instances at once
    # (redelivered after a rebalance) must not share one.
    a, _ = _silent_streams(1.0)
    b, _ = _silent_streams(1.0)
    assert a.next_id("req-1") != b.next_id("req-1")
    assert a.next_id("req-1") != a.next_id("req-1")


async def test_a_final_flag_alone_ends_the_request_retryably() -> None:
    # The model ended it without a result (a failed send): not a wait for ever.
    streams, calls = _silent_streams(5.0)
    stream = _open(streams, "r1")
    calls[0].answers.put_nowait(_response(stream._id, final=True))
    with pytest.raises(RetryableError, match="without its final response"):
        async with asyncio.timeout(2):
            async for _ in stream:
                pass
    assert not next(iter(streams.calls)).waiters  # forgotten: the call may half-close
    await streams.close(1.0)


async def test_each_model_version_has_its_own_call() -> None:
    # A retired call stays open until its last request ends: it must not hold another
    # version's unload.
    streams, _ = _silent_streams(5.0)
    assert streams.call("m", "1") is streams.call("m", "1")
    assert streams.call("m", "1") is not streams.call("m", "2")
    assert streams.call("m", "1") is not streams.call("n", "1")
    await streams.close(1.0)


class _OldModelCall(_SilentCall):
    """A model from before cancel messages that sends a token, then the final flag alone."""

    async def _read(self, requests: AsyncIterator[Any]) -> None:
        async for message in requests:
            self.sent.append(message)
            token = _response(message.id, final=False)
            token.infer_response.outputs = [object()]
            self.answers.put_nowait(token)
            self.answers.put_nowait(_response(message.id, final=True))
        self.half_closed.set()
        self.answers.put_nowait(None)


async def test_the_probe_says_no_to_a_generation_whatever_carries_its_final_flag() -> None:
    streams = SharedStreams(_OldModelCall, rotate_s=5.0)
    assert await streams.probe("old", "1") is False
    await streams.close(1.0)


def _with_tokens(rid: str, final: bool) -> Any:
    response = _response(rid, final=final)
    response.infer_response.outputs = [object()]
    return response


@pytest.fixture
def plain_steps(monkeypatch: pytest.MonkeyPatch) -> None:
    """Responses read as steps without tritonclient (a final response: a finished step)."""
    monkeypatch.setattr(backend_module, "result_of", lambda response: response)
    monkeypatch.setattr(
        backend_module,
        "parse_response",
        lambda r: ModelStep(token_ids=[1], logprobs=[], finished=is_final(r)),
    )


@pytest.mark.usefixtures("plain_steps")
async def test_a_caller_that_stops_at_the_last_step_sends_no_cancel() -> None:
    streams, calls = _silent_streams(5.0)
    stream = _open(streams, "r1")
    calls[0].answers.put_nowait(_with_tokens(stream._id, final=True))
    steps = cast(AsyncGenerator[ModelStep, None], stream.__aiter__())
    async with asyncio.timeout(2):
        assert (await anext(steps)).finished
    await steps.aclose()  # ``async for ...: if step.finished: break``
    await asyncio.sleep(0.05)
    assert calls[0].cancels() == []  # the model had ended it: nothing to cancel
    await streams.close(1.0)


class _RefusingModel(_SilentCall):
    """Acknowledges the probe; then (reloaded with two instances, say) refuses cancels."""

    async def _read(self, requests: AsyncIterator[Any]) -> None:
        async for message in requests:
            self.sent.append(message)
            if CANCEL_PARAMETER not in message.parameters:
                continue  # a generation: goes on
            answer = _response(message.id, final=True)
            if message.parameters[CANCEL_PARAMETER].string_param != CANCEL_ACK_PROBE:
                answer.error_message = "genwire-gpt: cancel requests need a single model instance"
            self.answers.put_nowait(answer)
        self.half_closed.set()


async def test_a_refused_cancel_stops_the_version_sharing_calls() -> None:
    backend = TritonBackend("127.0.0.1:1", shared_stream_s=5.0)  # the channel is never used
    backend.shared = SharedStreams(_RefusingModel, 5.0)
    backend._batched[("m", "1")] = False  # no config lookup
    request = PreparedRequest(
        request_id="a", model="m", model_version="1", input_ids=[5], sampling=Sampling()
    )
    try:
        first = await backend.open(request, {})
        assert isinstance(first, SharedTritonStream)
        first.cancel()  # refused: the model goes on generating it
        async with asyncio.timeout(2):
            await asyncio.gather(*backend._watching)  # the cancel's answer was read
        second = await backend.open(request.model_copy(update={"request_id": "b"}), {})
        assert isinstance(second, TritonStream)  # a call of its own: its cancel will work
        second.cancel()
    finally:
        await backend.shared.close(0.5)
        await backend.client.close()
