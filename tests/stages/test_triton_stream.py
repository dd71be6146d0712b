"""TritonStream's end of call: the final step reaches the caller before the call's status does."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
from genwire_inference import backend as backend_module
from genwire_inference.backend import TritonBackend, TritonStream

from genwire.triton_io import Output


class _Result:
    """The one final response of an unstreamed generation (what ``parse_response`` reads)."""

    def __init__(self) -> None:
        self._out = {
            Output.TOKEN_IDS: np.array([5, 6, 7], dtype=np.int64),
            Output.FINISHED: np.array([True]),
            Output.FINISH_REASON: np.array([b"length"], dtype=object),
        }

    def as_numpy(self, name: str) -> Any:
        return self._out.get(name)

    def get_response(self) -> Any:
        return SimpleNamespace(model_version="1")


class _Call:
    """A ``stream_infer`` call whose status comes only when ``status`` is set."""

    def __init__(self) -> None:
        self.status = asyncio.Event()
        self.sent = False
        self.completed = False
        self.cancelled = False

    def __aiter__(self) -> _Call:
        return self

    async def __anext__(self) -> tuple[Any, Any]:
        if not self.sent:
            self.sent = True
            return _Result(), None
        await self.status.wait()
        self.completed = True
        raise StopAsyncIteration

    def cancel(self) -> None:
        self.cancelled = True  # an answered call must complete instead


async def test_the_final_step_does_not_wait_for_the_calls_status() -> None:
    backend = TritonBackend("127.0.0.1:1")  # no call is made: the channel connects lazily
    call, done = _Call(), asyncio.Event()
    stream = TritonStream(call, done, settle=backend._settle)
    async with asyncio.timeout(2.0):  # fails here if the status were awaited inline
        steps = [step async for step in stream]
    assert [s.token_ids for s in steps] == [[5, 6, 7]] and steps[0].finished
    assert done.is_set()  # our side of the call is closed
    assert not call.completed and len(backend._settling) == 1  # its status is read behind us
    call.status.set()
    await backend.close()  # waits for the answered call to complete
    assert call.completed and not call.cancelled and not backend._settling


async def test_beyond_the_bound_a_caller_waits_for_its_calls_status(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(backend_module, "SETTLING_MAX", 1)
    backend = TritonBackend("127.0.0.1:1")
    first, second = _Call(), _Call()
    assert [s.finished async for s in TritonStream(first, asyncio.Event(), settle=backend._settle)]
    assert not first.completed and len(backend._settling) == 1  # in the background
    asyncio.get_running_loop().call_later(0.05, second.status.set)
    assert [s.finished async for s in TritonStream(second, asyncio.Event(), settle=backend._settle)]
    assert second.completed and len(backend._settling) == 1  # read inline: the bound was full
    first.status.set()
    await backend.close()
    assert first.completed and not backend._settling


async def test_without_settle_the_status_is_read_inline() -> None:
    call, done = _Call(), asyncio.Event()
    stream = TritonStream(call, done)
    asyncio.get_running_loop().call_later(0.05, call.status.set)
    steps = [step async for step in stream]
    assert steps[0].finished and call.completed
