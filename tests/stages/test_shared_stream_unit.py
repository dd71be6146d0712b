"""The shared Triton call's bookkeeping, with a fake gRPC call: routing by id, a failed call
failing every request on it (retryably), rotation, and half-closing a retired call."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from types import SimpleNamespace
from typing import Any

import grpc
import pytest

from genwire.errors import RetryableError
from genwire.triton_stream import SharedStreams, StreamClosed, is_final


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
    call = streams.call()
    a, b = call.send(_message("a"), "a"), call.send(_message("b"), "b")
    async with asyncio.timeout(2):
        ra, rb = await a.get(), await b.get()
    assert ra.infer_response.id == "a" and rb.infer_response.id == "b" and is_final(ra)
    assert streams.call() is call  # within rotate_s: the same call


async def test_a_failed_call_fails_every_request_on_it_retryably(
    streams: SharedStreams, calls: list[_FakeCall]
) -> None:
    call = streams.call()
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
    assert streams.call() is not call and len(calls) == 2  # the next request: a new call


async def test_a_call_is_retired_on_time_and_half_closed_after_its_last_request(
    streams: SharedStreams, calls: list[_FakeCall]
) -> None:
    call = streams.call()
    q = call.send(_message("long"), "long")
    await q.get()
    await asyncio.sleep(0.3)  # rotate_s passed with a request still registered: retired
    assert call.retired and not calls[0].half_closed
    assert streams.call() is not call  # new requests go to a new call
    call.forget("long")  # the last request on the old call is done: it half-closes
    async with asyncio.timeout(2):
        await call.reader
    assert calls[0].half_closed and call not in streams.calls and not calls[0].cancelled


async def test_close_half_closes_idle_calls(streams: SharedStreams, calls: list[_FakeCall]) -> None:
    streams.call()
    await streams.close(2.0)
    assert calls[0].half_closed and not streams.calls and not calls[0].cancelled
