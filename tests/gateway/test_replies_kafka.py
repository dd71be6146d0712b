"""Direct replies against the real broker: each gateway instance reads only its own reply
partitions; a gateway starting or stopping mid-traffic loses no result."""

from __future__ import annotations

import asyncio
import contextlib
import uuid

from genwire_gateway.client import GenwireClient, GenwireClientError

from genwire.settings import CommonSettings
from genwire.telemetry import semconv as sc
from tests.common.support import eventually

from .harness import FakePipeline, GatewayInstance, Script, start_gateway, stop_gateway

Gateways = tuple[GatewayInstance, GatewayInstance]


def _records(instance: GatewayInstance) -> float:
    """Reply records this instance's reader has read, whatever became of them."""
    registry = instance.app.state.runtime.registry
    return sum(
        registry.get_sample_value(sc.METRIC_REPLIES, {"outcome": o}) or 0.0
        for o in ("delivered", "unclaimed", "unreadable")
    )


async def test_a_reply_goes_to_the_publishing_instance_only(
    gateways: Gateways, pipeline: FakePipeline
) -> None:
    for mine, other in (gateways, gateways[::-1]):
        assert mine.app.state.replies.partitions, "each instance owns reply partitions"
        before_mine, before_other = _records(mine), _records(other)
        async with GenwireClient(mine.grpc_target) as client:
            result = await client.generate("hi")
        # The stand-in records a reply once the broker acknowledged it, which can be after
        # the gateway already read it and answered.
        rid = result.request_id
        await eventually(lambda rid=rid: rid in pipeline.replied, 10.0)  # type: ignore[misc]
        reply = pipeline.replied[rid]
        assert reply.topic == mine.settings.reply_topic
        assert reply.partition in mine.app.state.replies.partitions
        assert reply.partition not in other.app.state.replies.partitions
        assert _records(mine) == before_mine + 1
        assert _records(other) == before_other  # never read by the other instance


async def test_a_gateway_starting_mid_traffic_loses_no_reply(
    infra: CommonSettings, gateways: Gateways, pipeline: FakePipeline
) -> None:
    first = gateways[0]
    # Long enough that requests are in flight across the rebalance the new instance causes.
    pipeline.script = lambda _: Script(chunks=["a", "b", "c", "d"], chunk_delay_s=0.5)
    owned_before = set(first.app.state.replies.partitions)

    async def unary(client: GenwireClient) -> str:
        return (await client.generate("go", timeout_s=30)).text

    async def streamed(client: GenwireClient) -> str:
        return "".join([c.text async for c in client.stream("go", timeout_s=30)])

    async with GenwireClient(first.grpc_target) as client:
        calls = [asyncio.create_task(f(client)) for _ in range(6) for f in (unary, streamed)]
        await asyncio.sleep(0.3)  # in flight
        third = await start_gateway(
            infra,
            first.settings.requests_topic,
            first.settings.reply_topic,
            first.settings.reply_group,
        )
        try:
            calls += [asyncio.create_task(f(client)) for _ in range(3) for f in (unary, streamed)]
            texts = await asyncio.gather(*calls)
            owned_during = set(first.app.state.replies.partitions)
            assert third.app.state.replies.partitions  # the new instance got its share
        finally:
            await stop_gateway(third)
    assert texts == ["abcd"] * len(calls)
    assert owned_during < owned_before  # a rebalance did move partitions away


async def test_a_stopped_gateways_results_stay_readable_by_id(
    infra: CommonSettings, gateways: Gateways, pipeline: FakePipeline
) -> None:
    first, second = gateways
    pipeline.script = lambda _: Script(delay_s=2.0)
    leaving = await start_gateway(
        infra,
        first.settings.requests_topic,
        first.settings.reply_topic,
        first.settings.reply_group,
    )
    rids = [f"gone-{uuid.uuid4().hex[:12]}" for _ in range(3)]
    async with GenwireClient(leaving.grpc_target) as doomed:
        calls = [asyncio.create_task(doomed.generate("x", request_id=r)) for r in rids]
        while len([r for r in rids if pipeline.requests_for(r)]) < len(rids):  # noqa: ASYNC110
            await asyncio.sleep(0.05)
        await stop_gateway(leaving)  # with the requests in flight
        for call in calls:
            with contextlib.suppress(GenwireClientError):  # it lost its gateway: asks elsewhere
                await call
    async with (
        GenwireClient(first.grpc_target) as a,
        GenwireClient(second.grpc_target) as b,
    ):
        info = await a.get_result(rids[0], wait_s=15.0)
        assert info.status == "done" and info.result is not None
        assert info.result.text == "Hello, world"
        for rid in rids[1:]:  # the same request again, by id (idempotency key)
            assert (await b.generate("x", request_id=rid, timeout_s=15)).text == "Hello, world"
    assert all(len(pipeline.requests_for(r)) == 1 for r in rids)  # nothing published twice
