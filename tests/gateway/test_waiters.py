"""The waiter registry: results and tokens reach every local waiter of their request."""

from __future__ import annotations

import pytest
from genwire_gateway.errors import GatewayError
from genwire_gateway.replies import Failure, Moved, WaiterRegistry

from genwire.events import GenerationResult, TokenEvent


async def test_result_reaches_every_waiter_of_its_request_only() -> None:
    registry = WaiterRegistry()
    a1 = registry.register("a")
    a2 = registry.register("a", stream=True)
    b = registry.register("b")
    assert registry.resolve(GenerationResult(request_id="a", text="hi")) == 2
    assert (await a1.result).text == "hi"
    assert (await a2.result).text == "hi"
    assert a2.chunks is not None and (await a2.chunks.get()).text == "hi"  # type: ignore[union-attr]
    assert not b.result.done()


async def test_tokens_go_to_streaming_waiters_in_order() -> None:
    registry = WaiterRegistry()
    streaming = registry.register("r", stream=True)
    plain = registry.register("r")
    for i in range(3):
        registry.push(TokenEvent(request_id="r", index=i, text=str(i)))
    assert streaming.chunks is not None
    got = [streaming.chunks.get_nowait() for _ in range(3)]
    assert [t.text for t in got if isinstance(t, TokenEvent)] == ["0", "1", "2"]
    assert plain.chunks is None and not plain.result.done()


async def test_unregister_forgets_the_request() -> None:
    registry = WaiterRegistry()
    with registry.waiting("x") as waiter:
        assert registry.wants("x")
    assert not registry.wants("x")
    assert registry.resolve(GenerationResult(request_id="x")) == 0
    assert not waiter.result.done()
    registry.unregister(waiter)  # idempotent
    assert len(registry) == 0


async def test_fail_all_ends_plain_and_streaming_waits() -> None:
    registry = WaiterRegistry()
    plain = registry.register("p")
    streaming = registry.register("s", stream=True)
    registry.fail_all(GatewayError("stopping", code="unavailable"))
    with pytest.raises(GatewayError):
        await plain.result
    assert streaming.chunks is not None
    item = streaming.chunks.get_nowait()
    assert isinstance(item, Failure) and isinstance(item.exc, GatewayError)


async def test_move_wakes_only_the_waiters_of_the_lost_partitions() -> None:
    registry = WaiterRegistry()
    lost = registry.register("a", reply_partition=1)
    lost_stream = registry.register("b", stream=True, reply_partition=1)
    kept = registry.register("c", reply_partition=2)
    polled = registry.register("d")  # not direct: nothing to move
    assert registry.move({1}) == 2
    assert lost.moved.done() and not lost.direct
    assert lost_stream.chunks is not None and isinstance(lost_stream.chunks.get_nowait(), Moved)
    assert kept.direct and not kept.moved.done()
    assert not polled.moved.done()
    assert registry.move({1}) == 0  # already moved
