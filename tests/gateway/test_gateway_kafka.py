"""Two gateway instances against the real broker and Redis, with a scripted stand-in pipeline.

Every test names its requests with fresh ids, so the real topics shared with a running stack
carry nothing another consumer would act on.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Callable

import grpc
import httpx
import pytest
from genwire_gateway.client import GenwireClient, GenwireClientError
from genwire_gateway.grpc_service import SERVICE_NAME
from grpc_health.v1 import health_pb2, health_pb2_grpc
from opentelemetry.trace import SpanKind
from redis.asyncio import Redis

from genwire.apikeys import auth_headers
from genwire.events import ErrorInfo, now_ms
from genwire.request import GenerationRequest
from genwire.results import claim_key
from genwire.telemetry import semconv as sc

from .harness import FakePipeline, GatewayInstance, Script

Gateways = tuple[GatewayInstance, GatewayInstance]


def _rid(prefix: str = "t") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


async def _eventually(check: object, timeout_s: float = 15.0) -> None:
    async with asyncio.timeout(timeout_s):
        # Polls state other tasks and processes change: there is no event to wait on.
        while not check():  # type: ignore[operator]  # noqa: ASYNC110
            await asyncio.sleep(0.05)


def _replied(instance: GatewayInstance, request_id: str) -> bool:
    """Whether the instance's reply reader handed a result of ``request_id`` to a waiter."""
    return any(
        s.name == sc.process_span_name(instance.settings.reply_topic)
        and (s.attributes or {}).get(sc.MESSAGING_MESSAGE_KEY) == request_id
        for s in instance.spans.get_finished_spans()
    )


async def test_generate_on_either_instance(gateways: Gateways, pipeline: FakePipeline) -> None:
    for instance in gateways:
        async with GenwireClient(instance.grpc_target) as client:
            result = await client.generate("hi", max_tokens=8, seed=1)
        assert result.text == "Hello, world"
        # The model the caller asked for (none: the default), not the served name (docs/api.md).
        default = instance.settings.default_model
        assert result.finish_reason == "length" and result.model == default != "fake"
        assert result.completion_tokens == 3 and len(result.trace_id) == 32
        (seen,) = pipeline.requests_for(result.request_id)
        assert seen.prompt == "hi" and seen.max_tokens == 8 and seen.stream is False
        assert seen.deadline_ms is not None and seen.received_ms is not None
        assert seen.deadline_ms > seen.received_ms
        await _eventually(lambda: _replied(instance, result.request_id), timeout_s=5)  # noqa: B023


async def test_a_repeat_on_the_other_instance_gets_the_first_result(
    gateways: Gateways, pipeline: FakePipeline
) -> None:
    first_gw, second_gw = gateways
    pipeline.script = lambda _: Script(delay_s=1.0)
    rid = _rid("idem")
    async with (
        GenwireClient(first_gw.grpc_target) as a,
        GenwireClient(second_gw.grpc_target) as b,
    ):
        first = asyncio.create_task(a.generate("same", request_id=rid))
        await _eventually(lambda: pipeline.requests_for(rid))
        second = await b.generate("same", request_id=rid)  # in flight: waits for the first
        assert (await first).text == second.text == "Hello, world"
        again = await b.generate("same", request_id=rid)  # finished: from Redis
        assert again.text == "Hello, world"
        with pytest.raises(GenwireClientError) as info:
            await a.generate("another prompt", request_id=rid)
        assert info.value.status == "ALREADY_EXISTS"
    assert len(pipeline.requests_for(rid)) == 1
    # The reply went to the first instance, the one that published; the second found the
    # result in Redis (its reader never sees another instance's replies).
    await _eventually(lambda: _replied(first_gw, rid), timeout_s=5)
    assert not _replied(second_gw, rid)


async def test_claims_live_for_the_deadline_then_as_long_as_results(
    gateways: Gateways, pipeline: FakePipeline
) -> None:
    pipeline.script = lambda _: Script(delay_s=1.0)
    settings = gateways[0].settings
    rid = _rid("claim")
    redis: Redis[bytes] = Redis.from_url(settings.redis_url)
    try:
        async with GenwireClient(gateways[0].grpc_target) as client:
            call = asyncio.create_task(client.generate("x", request_id=rid, timeout_s=20))
            await _eventually(lambda: pipeline.requests_for(rid))
            in_flight = await redis.ttl(claim_key(rid))
            # The store rounds the TTL up to whole seconds (ceil), hence the one second more.
            assert 0 < in_flight <= 20 + settings.claim_grace_s + 1
            await call

        async def kept() -> bool:
            return int(await redis.ttl(claim_key(rid))) > 20 + settings.claim_grace_s

        async with asyncio.timeout(5):
            while not await kept():  # noqa: ASYNC110 (Redis state, no event)
                await asyncio.sleep(0.05)
    finally:
        await redis.aclose()  # type: ignore[attr-defined]


async def test_streaming_reaches_the_caller_before_generation_ends(
    gateways: Gateways, pipeline: FakePipeline
) -> None:
    pipeline.script = lambda _: Script(chunks=["a", "b", "c", "d"], chunk_delay_s=0.4)
    loop = asyncio.get_running_loop()
    async with GenwireClient(gateways[1].grpc_target) as client:
        chunks = []
        first_at = None
        async for chunk in client.stream("go"):
            first_at = first_at or loop.time()
            chunks.append(chunk)
    rid = chunks[0].request_id
    assert "".join(c.text for c in chunks) == "abcd"
    assert [c.index for c in chunks] == list(range(len(chunks)))
    assert chunks[-1].final and chunks[-1].finish_reason == "length"
    assert chunks[-1].completion_tokens == 4
    assert first_at is not None and first_at < pipeline.finished[rid] - 1.0
    assert pipeline.requests_for(rid)[0].stream is True
    # Every message names the model as Generate does: the default, not the served name.
    assert {c.model for c in chunks} == {gateways[1].settings.default_model} != {"fake"}


async def test_redelivered_tokens_are_not_repeated(
    gateways: Gateways, pipeline: FakePipeline
) -> None:
    pipeline.script = lambda _: Script(duplicate_tokens=True)
    async with GenwireClient(gateways[0].grpc_target) as client:
        text = "".join([c.text async for c in client.stream("go")])
    assert text == "Hello, world"


async def test_invalid_input_is_rejected_before_kafka(
    gateways: Gateways, pipeline: FakePipeline
) -> None:
    rid = _rid("bad")
    async with GenwireClient(gateways[0].grpc_target) as client:
        with pytest.raises(GenwireClientError) as info:
            await client.generate("hi", temperature=5.0, request_id=rid)
        assert info.value.status == "INVALID_ARGUMENT"
        assert "out_of_range" in info.value.message
        with pytest.raises(GenwireClientError) as info:
            await client.generate(None)
        assert info.value.status == "INVALID_ARGUMENT" and "missing_prompt" in info.value.message
    await asyncio.sleep(0.5)
    assert pipeline.requests_for(rid) == []


@pytest.mark.parametrize(
    ("code", "status", "http"),
    [
        ("context_length_exceeded", "INVALID_ARGUMENT", 400),
        ("model_not_found", "NOT_FOUND", 404),
        ("unavailable", "UNAVAILABLE", 503),
    ],
)
async def test_pipeline_errors_map_to_statuses(
    gateways: Gateways, pipeline: FakePipeline, code: str, status: str, http: int
) -> None:
    pipeline.script = lambda _: Script(error=ErrorInfo(code=code, message=f"{code} happened"))
    async with GenwireClient(gateways[0].grpc_target) as client:
        with pytest.raises(GenwireClientError) as info:
            await client.generate("hi")
    assert info.value.status == status and code in info.value.message
    async with httpx.AsyncClient(
        base_url=gateways[1].http_url, timeout=20, headers=auth_headers()
    ) as http_client:
        response = await http_client.post("/v1/completions", json={"prompt": "hi"})
    assert response.status_code == http
    assert response.json()["error"]["code"] == code


async def test_an_expired_deadline_cancels_the_generation(
    gateways: Gateways, pipeline: FakePipeline
) -> None:
    """Unnamed, so the cancel comes whether the gateway's own deadline or gRPC's cancellation of
    the call fires first (a named request's generation is bounded by its deadline_ms anyway)."""
    pipeline.script = lambda _: Script(silent=True)
    prompt = f"late {uuid.uuid4().hex}"
    async with GenwireClient(gateways[0].grpc_target) as client:
        with pytest.raises(GenwireClientError) as info:
            called_ms = now_ms()
            await client.generate(prompt, timeout_s=1.5)
    assert info.value.status == "DEADLINE_EXCEEDED"
    rid = _request_id_of(pipeline, prompt, not_id="")()
    assert rid is not None
    (seen,) = pipeline.requests_for(rid)
    assert seen.deadline_ms is not None and seen.received_ms is not None
    # The caller's 1.5 s less the margin (0.25 s), counted from the call: the time the call
    # took to reach the gateway (a new channel's connect, on a busy machine) is not added.
    assert called_ms + 1200 <= seen.deadline_ms <= seen.received_ms + 1600
    await _eventually(lambda: rid in {c.request_id for c in pipeline.cancels})


async def test_the_partial_result_at_the_deadline_reaches_the_caller(
    gateways: Gateways, pipeline: FakePipeline
) -> None:
    """Inference stops at ``deadline_ms`` and publishes what it has (``deadline``): the pipeline's
    deadline comes the margin before the caller's, so that answer arrives in time, unary and
    streamed (the HTTP routes wait in the same ``Gateway`` calls)."""
    pipeline.script = lambda _: Script(
        chunks=["so", " far"], at_deadline=True, finish_reason="deadline"
    )
    async with GenwireClient(gateways[0].grpc_target) as client:
        called_ms = now_ms()
        unary = await client.generate(f"late {uuid.uuid4().hex}", timeout_s=1.5)
        assert unary.text == "so far" and unary.finish_reason == "deadline"
        pieces = [c async for c in client.stream(f"late {uuid.uuid4().hex}", timeout_s=1.5)]
    assert "".join(p.text for p in pieces) == "so far"
    assert pieces[-1].final and pieces[-1].finish_reason == "deadline"
    (seen,) = pipeline.requests_for(unary.request_id)
    assert seen.deadline_ms is not None and seen.received_ms is not None
    # 1.5 s less the margin (a fifth of it, 0.25 s at most), counted from the call (the time
    # it took to reach the gateway, a new channel's connect on a busy machine, is not added)
    assert called_ms + 1200 <= seen.deadline_ms <= seen.received_ms + 1300


async def test_a_caller_leaving_a_stream_cancels_the_generation(
    gateways: Gateways, pipeline: FakePipeline
) -> None:
    pipeline.script = lambda _: Script(chunks=["x"] * 20, chunk_delay_s=0.3)
    async with GenwireClient(gateways[1].grpc_target) as client:
        stream = client.stream("go")
        first = await anext(stream)
        await stream.aclose()
    await _eventually(lambda: first.request_id in {c.request_id for c in pipeline.cancels})


async def test_submit_then_get_result_from_the_other_instance(
    gateways: Gateways, pipeline: FakePipeline
) -> None:
    pipeline.script = lambda _: Script(delay_s=1.0)
    async with (
        GenwireClient(gateways[0].grpc_target) as a,
        GenwireClient(gateways[1].grpc_target) as b,
    ):
        rid = await a.submit("later")
        assert (await b.get_result(rid)).status == "pending"
        info = await b.get_result(rid, wait_s=10.0)
        assert info.status == "done" and info.result is not None
        assert info.result.text == "Hello, world"
        assert (await b.get_result(_rid("unknown"))).status == "not_found"
        assert await a.cancel(rid, "no longer needed")
    await _eventually(lambda: rid in {c.request_id for c in pipeline.cancels})


async def test_a_reply_that_never_comes_is_found_in_redis_at_the_deadline(
    gateways: Gateways, pipeline: FakePipeline
) -> None:
    # No reply on the instance's partition (lost): no polling meanwhile, but the wait's last
    # look in Redis at its deadline finds the stored result instead of failing.
    pipeline.script = lambda _: Script(redis_only=True)
    gateway = gateways[0].app.state.gateway
    result = await gateway.generate(gateway.prepare({"prompt": "hi"}, timeout_s=2.0))
    assert result.text == "Hello, world"
    assert not _replied(gateways[0], result.request_id)


async def test_openai_http_endpoints(gateways: Gateways, pipeline: FakePipeline) -> None:
    async with httpx.AsyncClient(
        base_url=gateways[0].http_url, timeout=20, headers=auth_headers()
    ) as http:
        completion = await http.post("/v1/completions", json={"prompt": "hi", "max_tokens": 4})
        assert completion.status_code == 200, completion.text
        body = completion.json()
        assert body["object"] == "text_completion"
        assert body["choices"][0]["text"] == "Hello, world"
        assert body["usage"]["completion_tokens"] == 3
        assert len(completion.headers["x-trace-id"]) == 32
        # The model's own time for it (the fake pipeline's result: 0.25 + 12.5 ms).
        assert completion.headers["server-timing"] == (
            "model-queue;dur=0.250, model-compute;dur=12.500"
        )
        chat = await http.post(
            "/v1/chat/completions",
            json={"messages": [{"role": "user", "content": "hi"}], "temperature": 0},
        )
        assert chat.status_code == 200, chat.text
        assert chat.json()["choices"][0]["message"]["content"] == "Hello, world"
        assert chat.headers["server-timing"] == completion.headers["server-timing"]
        # A streamed answer's headers leave before the model has run: no Server-Timing.
        async with http.stream(
            "POST", "/v1/completions", json={"prompt": "hi", "max_tokens": 4, "stream": True}
        ) as streamed:
            assert streamed.status_code == 200
            assert "server-timing" not in streamed.headers
            assert b"[DONE]" in await streamed.aread()
        rid = chat.json()["id"].removeprefix("chatcmpl-")
        (seen,) = pipeline.requests_for(rid)
        assert seen.messages is not None and seen.messages[0].content == "hi"
        assert seen.temperature == 0.0
        bad = await http.post("/v1/completions", json={"prompt": "hi", "temperature": 9})
        assert bad.status_code == 400
        assert bad.json()["error"]["code"] == "out_of_range"
        assert bad.json()["error"]["type"] == "invalid_request_error"
        assert (await http.post("/v1/completions", content=b"{nope")).status_code == 400


async def test_openai_sse_stream(gateways: Gateways, pipeline: FakePipeline) -> None:
    pipeline.script = lambda _: Script(chunks=["Hel", "lo"], chunk_delay_s=0.1)
    body = {
        "messages": [{"role": "user", "content": "hi"}],
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    async with (
        httpx.AsyncClient(
            base_url=gateways[1].http_url, timeout=20, headers=auth_headers()
        ) as http,
        http.stream("POST", "/v1/chat/completions", json=body) as response,
    ):
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        lines = [line async for line in response.aiter_lines() if line]
    assert lines[-1] == "data: [DONE]"
    events = [json.loads(line.removeprefix("data: ")) for line in lines[:-1]]
    assert all(e["object"] == "chat.completion.chunk" for e in events)
    text = "".join(e["choices"][0]["delta"].get("content", "") for e in events if e["choices"])
    assert text == "Hello"
    assert events[0]["choices"][0]["delta"]["role"] == "assistant"
    finishes = [e["choices"][0]["finish_reason"] for e in events if e["choices"]]
    assert finishes[-1] == "length" and set(finishes[:-1]) == {None}
    assert events[-1]["choices"] == [] and events[-1]["usage"]["completion_tokens"] == 2


async def test_http_idempotency_key_across_instances(
    gateways: Gateways, pipeline: FakePipeline
) -> None:
    key = _rid("http")
    answers = []
    for instance in gateways:
        async with httpx.AsyncClient(
            base_url=instance.http_url, timeout=20, headers=auth_headers()
        ) as http:
            response = await http.post(
                "/v1/completions", json={"prompt": "once"}, headers={"Idempotency-Key": key}
            )
        assert response.status_code == 200
        answers.append(response.json())
    assert answers[0]["id"] == answers[1]["id"] == f"cmpl-{key}"
    assert len(pipeline.requests_for(key)) == 1


async def test_an_http_client_hanging_up_cancels_the_generation(
    gateways: Gateways, pipeline: FakePipeline
) -> None:
    """Unnamed work nobody can collect is cancelled; named work finishes for the retry."""
    pipeline.script = lambda _: Script(silent=True)
    prompt, named = f"hi {uuid.uuid4().hex}", _rid("kept")
    async with httpx.AsyncClient(
        base_url=gateways[0].http_url, timeout=1.0, headers=auth_headers()
    ) as http:
        for headers in ({}, {"Idempotency-Key": named}):
            with pytest.raises(httpx.ReadTimeout):
                await http.post("/v1/completions", json={"prompt": prompt}, headers=headers)
    anonymous = _request_id_of(pipeline, prompt, not_id=named)
    await _eventually(lambda: anonymous() in {c.request_id for c in pipeline.cancels})
    await asyncio.sleep(1.0)  # the cancel of the named one would have come as quickly
    assert named not in {c.request_id for c in pipeline.cancels}


async def test_an_sse_client_hanging_up_cancels_the_generation(
    gateways: Gateways, pipeline: FakePipeline
) -> None:
    pipeline.script = lambda _: Script(chunks=["x"] * 30, chunk_delay_s=0.3)
    prompt, named = f"hi {uuid.uuid4().hex}", _rid("sse-kept")
    body = {"prompt": prompt, "stream": True}
    async with httpx.AsyncClient(
        base_url=gateways[1].http_url, timeout=20, headers=auth_headers()
    ) as http:
        for headers in ({}, {"Idempotency-Key": named}):
            async with http.stream(
                "POST", "/v1/completions", json=body, headers=headers
            ) as response:
                assert response.status_code == 200
                async for line in response.aiter_lines():
                    if line.startswith("data: {"):
                        break  # one chunk, then hang up
    anonymous = _request_id_of(pipeline, prompt, not_id=named)
    await _eventually(lambda: anonymous() in {c.request_id for c in pipeline.cancels})
    await asyncio.sleep(1.0)
    assert named not in {c.request_id for c in pipeline.cancels}


def _request_id_of(pipeline: FakePipeline, prompt: str, not_id: str) -> Callable[[], str | None]:
    """The id the gateway gave the unnamed request with ``prompt`` (once the pipeline saw it)."""

    def find() -> str | None:
        ids = [
            s.request.request_id
            for s in pipeline.seen
            if s.request.prompt == prompt and s.request.request_id != not_id
        ]
        return ids[0] if ids else None

    return find


async def test_reflection_lists_the_services(gateways: Gateways) -> None:
    from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
        ProtoReflectionDescriptorDatabase,
    )

    # The reflection client is synchronous: run it off the event loop.
    def services() -> list[str]:
        with grpc.insecure_channel(gateways[0].grpc_target) as channel:
            return list(ProtoReflectionDescriptorDatabase(channel).get_services())

    names = await asyncio.to_thread(services)
    assert SERVICE_NAME in names and "grpc.health.v1.Health" in names


async def test_health_readiness_metrics_and_models(gateways: Gateways) -> None:
    instance = gateways[0]
    async with httpx.AsyncClient(
        base_url=instance.http_url, timeout=20, headers=auth_headers()
    ) as http:
        assert (await http.get("/healthz")).status_code == 200
        ready = await http.get("/readyz")
        assert ready.status_code == 200 and ready.json()["ready"] is True
        metrics = (await http.get("/metrics")).text
        assert sc.METRIC_REQUESTS in metrics
        models = (await http.get("/v1/models")).json()
        assert models["object"] == "list" and isinstance(models["data"], list)
        assert all(m["object"] == "model" and m["id"] for m in models["data"])
    async with grpc.aio.insecure_channel(instance.grpc_target) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        for service in ("", SERVICE_NAME):
            reply = await stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
            assert reply.status == health_pb2.HealthCheckResponse.SERVING


async def test_the_trace_starts_at_the_gateway_and_crosses_kafka(
    gateways: Gateways, pipeline: FakePipeline
) -> None:
    instance = gateways[0]
    trace_id = uuid.uuid4().hex
    traceparent = f"00-{trace_id}-{uuid.uuid4().hex[:16]}-01"
    secret = f"secret prompt {uuid.uuid4().hex}"
    async with GenwireClient(instance.grpc_target) as client:
        result = await client.generate(secret, traceparent=traceparent)
    assert result.trace_id == trace_id
    (seen,) = [s for s in pipeline.seen if s.request.request_id == result.request_id]
    assert seen.headers["traceparent"].decode().split("-")[1] == trace_id
    # Spans are exported in batches: wait for each one read below, not just for one of them.
    wanted = {
        sc.process_span_name(instance.settings.reply_topic),
        f"{SERVICE_NAME}/Generate",
        f"{instance.settings.requests_topic} publish",
    }
    await _eventually(
        lambda: (
            wanted
            <= {
                s.name
                for s in instance.spans.get_finished_spans()
                if s.context is not None and f"{s.context.trace_id:032x}" == trace_id
            }
        ),
        timeout_s=10,
    )
    spans = [
        s
        for s in instance.spans.get_finished_spans()
        if s.context is not None and f"{s.context.trace_id:032x}" == trace_id
    ]
    by_name = {s.name: s for s in spans}
    server = by_name[f"{SERVICE_NAME}/Generate"]
    assert server.kind == SpanKind.SERVER
    assert server.attributes is not None
    assert server.attributes[sc.ENTRYPOINT] == "grpc"
    assert server.attributes[sc.REQUEST_ID] == result.request_id
    publish = by_name[f"{instance.settings.requests_topic} publish"]
    assert publish.kind == SpanKind.PRODUCER and publish.parent is not None
    assert publish.parent.span_id == server.context.span_id  # type: ignore[union-attr]
    assert publish.attributes is not None
    assert publish.attributes[sc.MESSAGING_SYSTEM] == "kafka"
    assert publish.attributes[sc.MESSAGING_OPERATION_NAME] == "publish"
    assert by_name[sc.process_span_name(instance.settings.reply_topic)].kind == SpanKind.CONSUMER
    for span in spans:
        for value in (span.attributes or {}).values():
            assert secret not in str(value)


async def test_request_json_on_kafka_validates_as_a_user_request(
    gateways: Gateways, pipeline: FakePipeline
) -> None:
    async with GenwireClient(gateways[1].grpc_target) as client:
        result = await client.generate(
            None,
            messages=[{"role": "system", "content": "s"}, {"role": "user", "content": "u"}],
            stop=["\n"],
            top_k=5,
            top_p=0.9,
            metadata={"team": "a"},
        )
    (seen,) = pipeline.requests_for(result.request_id)
    assert isinstance(seen, GenerationRequest)
    assert seen.stop_list() == ["\n"] and seen.top_k == 5 and seen.top_p == pytest.approx(0.9)
    assert seen.metadata == {"team": "a"}
