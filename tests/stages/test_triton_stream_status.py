"""A failed shared Triton call is classified by its gRPC status as a call of the request's own
is (``genwire.triton_stream.classify_status``): waiting out ``UNIMPLEMENTED`` would only hold
the stage for the outage budget."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from types import SimpleNamespace
from typing import Any

import grpc
import pytest
from genwire_inference import backend as backend_module
from genwire_inference.backend import SharedTritonStream

from genwire.errors import PermanentError, RetryableError
from genwire.request import ErrorCode
from genwire.triton_stream import SharedStreams, StreamClosed


class _FailingCall:
    """A ``ModelStreamInfer`` call that answers nothing and fails when told."""

    def __init__(self, requests: AsyncIterator[Any]) -> None:
        self.requests = requests
        self.responses: asyncio.Queue[Any] = asyncio.Queue()

    def __aiter__(self) -> _FailingCall:
        return self

    async def __anext__(self) -> Any:
        item = await self.responses.get()
        raise item

    def cancel(self) -> None:
        pass


def _error(code: grpc.StatusCode, details: str) -> grpc.aio.AioRpcError:
    return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), grpc.aio.Metadata(), details)


async def _closed(code: grpc.StatusCode, details: str) -> tuple[StreamClosed, Exception]:
    """What a request waiting on a shared call gets when the call fails with ``code``: on its
    queue, and raised to the one iterating its stream."""
    calls: list[_FailingCall] = []

    def start(requests: AsyncIterator[Any]) -> _FailingCall:
        calls.append(_FailingCall(requests))
        return calls[-1]

    streams = SharedStreams(start, rotate_s=5.0)
    call = streams.call("m", "1")
    waiter = call.send(SimpleNamespace(id="a"), "a")
    stream = SharedTritonStream(call, call.send(SimpleNamespace(id="b"), "b"), "b", "m", "1")
    calls[0].responses.put_nowait(_error(code, details))
    async with asyncio.timeout(2):
        closed = await waiter.get()
        with pytest.raises(Exception) as raised:
            async for _ in stream:
                pass
    assert isinstance(closed, StreamClosed)
    return closed, raised.value


async def test_unimplemented_on_a_shared_call_is_permanent_for_its_waiters() -> None:
    closed, raised = await _closed(grpc.StatusCode.UNIMPLEMENTED, "ModelStreamInfer")
    assert isinstance(closed.error, PermanentError)
    assert closed.error.code == ErrorCode.INFERENCE_FAILED
    assert closed.error.message == "triton: UNIMPLEMENTED: ModelStreamInfer"
    assert isinstance(raised, PermanentError) and raised.code == ErrorCode.INFERENCE_FAILED


async def test_unavailable_on_a_shared_call_stays_retryable() -> None:
    closed, raised = await _closed(grpc.StatusCode.UNAVAILABLE, "connection reset")
    assert isinstance(closed.error, RetryableError)
    assert closed.error.message == "triton: UNAVAILABLE: connection reset"
    assert isinstance(raised, RetryableError)


@pytest.mark.parametrize(
    "code", [grpc.StatusCode.UNIMPLEMENTED, grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.INTERNAL]
)
async def test_a_shared_call_and_a_call_of_its_own_read_a_status_alike(
    code: grpc.StatusCode,
) -> None:
    closed, _ = await _closed(code, "x")
    own = backend_module.classify_status(code, "x")
    assert type(closed.error) is type(own)
    assert (closed.error.code, closed.error.message) == (own.code, own.message)
