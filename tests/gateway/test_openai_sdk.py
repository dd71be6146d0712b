"""The official ``openai`` SDK against a real gateway (real broker, scripted stand-in pipeline):
n choices and logprobs (streamed and not), batches of prompts, echo, OpenAI's error shape on
every route, and the caller-side metrics."""

from __future__ import annotations

import uuid
from collections import defaultdict

import httpx
import openai
import pytest

from genwire.apikeys import auth_headers, resolve_api_key

from .harness import FakePipeline, GatewayInstance, Script

Gateways = tuple[GatewayInstance, GatewayInstance]


def _client(instance: GatewayInstance) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(
        base_url=f"{instance.http_url}/v1", api_key=resolve_api_key() or "none", max_retries=0
    )


TEXTS = ["Hello, world", "Hello1,1 world1"]


async def test_chat_streams_n_choices_with_logprobs(
    gateways: Gateways, pipeline: FakePipeline
) -> None:
    pipeline.script = lambda _: Script(choices=2, logprobs=True)
    stream = await _client(gateways[0]).chat.completions.create(
        model="genwire-gpt",
        messages=[{"role": "user", "content": "hi"}],
        n=2,
        logprobs=True,
        top_logprobs=1,
        stream=True,
        stream_options={"include_usage": True},
    )
    text: dict[int, str] = defaultdict(str)
    tokens: dict[int, list[str]] = defaultdict(list)
    roles: dict[int, int] = defaultdict(int)
    finished: dict[int, str] = {}
    usage = None
    async for chunk in stream:
        if not chunk.choices:
            usage = chunk.usage
            continue
        (choice,) = chunk.choices
        assert choice.index not in finished, "nothing after a choice's finish_reason"
        if choice.delta.role:
            roles[choice.index] += 1
            assert text[choice.index] == ""  # the role comes first
        text[choice.index] += choice.delta.content or ""
        if choice.logprobs is not None:
            for lp in choice.logprobs.content or []:
                tokens[choice.index].append(lp.token)
                assert lp.logprob < 0 and lp.top_logprobs[0].token == "?"
        if choice.finish_reason:
            finished[choice.index] = choice.finish_reason
    assert [text[0], text[1]] == TEXTS
    assert ["".join(tokens[0]), "".join(tokens[1])] == TEXTS
    assert roles == {0: 1, 1: 1} and finished == {0: "length", 1: "length"}
    assert usage is not None and usage.completion_tokens == 6


async def test_completions_n_choices_with_logprobs(
    gateways: Gateways, pipeline: FakePipeline
) -> None:
    pipeline.script = lambda _: Script(choices=2, logprobs=True)
    response = await _client(gateways[0]).completions.create(
        model="genwire-gpt", prompt="hi", n=2, logprobs=1
    )
    assert [c.index for c in response.choices] == [0, 1]
    assert [c.text for c in response.choices] == TEXTS
    lp = response.choices[0].logprobs
    assert lp is not None
    assert lp.tokens == ["Hello", ",", " world"] and lp.text_offset == [0, 5, 6]
    assert lp.token_logprobs == [-0.5, -1.0, -1.5]
    # The top 1 and the sampled token (the legacy API's logprobs + 1).
    assert lp.top_logprobs == [
        {"?": -5.0, t: x} for t, x in zip(lp.tokens, lp.token_logprobs, strict=True)
    ]
    chat = await _client(gateways[1]).chat.completions.create(
        model="genwire-gpt", messages=[{"role": "user", "content": "hi"}], n=2, logprobs=True
    )
    content = chat.choices[1].logprobs.content  # type: ignore[union-attr]
    assert [t.token for t in content] == ["Hello1", ",1", " world1"]  # type: ignore[union-attr]
    assert content[0].bytes == list(b"Hello1")  # type: ignore[index]


async def test_a_batch_of_prompts_is_answered_together(
    gateways: Gateways, pipeline: FakePipeline
) -> None:
    pipeline.script = lambda r: Script(choices=r.n)
    key = f"batch-{uuid.uuid4().hex[:8]}"
    client = _client(gateways[0])
    response = await client.completions.create(
        model="genwire-gpt",
        prompt=["first ", "second "],
        n=2,
        echo=True,
        extra_headers={"idempotency-key": key},
    )
    assert [c.index for c in response.choices] == [0, 1, 2, 3]
    assert [c.text for c in response.choices] == [
        "first " + TEXTS[0],
        "first " + TEXTS[1],
        "second " + TEXTS[0],
        "second " + TEXTS[1],
    ]
    assert response.usage is not None and response.usage.completion_tokens == 12
    assert {r.request_id for r in pipeline.requests_for(f"{key}-0")} == {f"{key}-0"}
    assert pipeline.requests_for(f"{key}-1")[0].prompt == "second "
    ids = await client.completions.create(model="genwire-gpt", prompt=[[1, 2], [3]])
    assert len(ids.choices) == 2
    stream = await client.completions.create(
        model="genwire-gpt", prompt=["a", "b"], n=2, stream=True, echo=True
    )
    text: dict[int, str] = defaultdict(str)
    finished = set()
    async for chunk in stream:
        for choice in chunk.choices:
            text[choice.index] += choice.text
            if choice.finish_reason:
                finished.add(choice.index)
    assert finished == {0, 1, 2, 3}
    expected = ["a" + TEXTS[0], "a" + TEXTS[1], "b" + TEXTS[0], "b" + TEXTS[1]]
    assert [text[i] for i in range(4)] == expected


async def test_every_route_answers_errors_in_openai_shape(gateways: Gateways) -> None:
    headers = auth_headers(resolve_api_key())
    async with httpx.AsyncClient(base_url=gateways[0].http_url, headers=headers) as http:
        cases = [
            (await http.get("/v1/no-such-route"), 404, "not_found"),
            (await http.post("/nothing/here", json={}), 404, "not_found"),
            (await http.get("/v1/completions"), 405, "method_not_allowed"),
            (await http.delete("/v1/chat/completions"), 405, "method_not_allowed"),
            (
                await http.post("/v1/completions", json={"prompt": "x", "tools": [{}]}),
                400,
                "unsupported_parameter",
            ),
            (await http.post("/v1/completions", content=b"{nope"), 400, "invalid_json"),
        ]
    for response, status, code in cases:
        assert response.status_code == status, response.text
        error = response.json()["error"]
        assert set(error) == {"message", "type", "param", "code"}
        assert error["code"] == code and error["message"]
    assert cases[4][0].json()["error"]["param"] == "tools"
    assert "POST" in cases[2][0].json()["error"]["message"]  # what is allowed


async def test_the_sdk_raises_its_typed_errors(gateways: Gateways) -> None:
    client = _client(gateways[0])
    with pytest.raises(openai.BadRequestError) as info:
        await client.chat.completions.create(
            model="genwire-gpt",
            messages=[{"role": "user", "content": "x"}],
            tools=[{"type": "function", "function": {"name": "f"}}],
        )
    assert info.value.code == "unsupported_parameter" and info.value.param == "tools"
    with pytest.raises(openai.BadRequestError) as info:
        await client.completions.create(model="genwire-gpt", prompt="x", n=99)
    assert info.value.code == "out_of_range" and info.value.param == "n"


def _metric(text: str, name: str) -> float:
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name) and 'entrypoint="http"' in line:
            total += float(line.rsplit(" ", 1)[1])
    return total


async def test_caller_side_metrics(gateways: Gateways, pipeline: FakePipeline) -> None:
    pipeline.script = lambda _: Script(chunk_delay_s=0.01)
    instance = gateways[1]
    async with httpx.AsyncClient(base_url=instance.http_url) as http:
        before = (await http.get("/metrics")).text
    client = _client(instance)
    stream = await client.completions.create(model="genwire-gpt", prompt="x", stream=True)
    async for _ in stream:
        pass
    await client.completions.create(model="genwire-gpt", prompt="x")
    async with httpx.AsyncClient(base_url=instance.http_url) as http:
        after = (await http.get("/metrics")).text
    # (The stand-in's unary results carry no first-token time: only the stream's TTFT counts.)
    ttft = "genwire_gateway_time_to_first_token_seconds_count"
    assert _metric(after, ttft) - _metric(before, ttft) >= 1
    for name in (
        "genwire_gateway_e2e_request_latency_seconds_count",
        "gen_ai_server_request_duration_seconds_count",
        "genwire_gateway_request_success_total",
    ):
        assert _metric(after, name) - _metric(before, name) >= 2, name
    assert _metric(after, "genwire_gateway_inter_token_latency_seconds_count") > _metric(
        before, "genwire_gateway_inter_token_latency_seconds_count"
    )
    assert (
        _metric(after, "genwire_gateway_generation_tokens_total")
        - _metric(before, "genwire_gateway_generation_tokens_total")
        == 6
    )
    assert _metric(after, "genwire_gateway_num_requests_running") == 0
    assert _metric(after, "genwire_gateway_num_requests_waiting") == 0


async def test_caller_side_metrics_over_grpc(gateways: Gateways, pipeline: FakePipeline) -> None:
    import grpc

    from genwire.apikeys import auth_metadata
    from genwire.proto.v1 import generation_pb2 as pb
    from genwire.proto.v1 import generation_pb2_grpc as pb_grpc

    pipeline.script = lambda _: Script(chunk_delay_s=0.01)
    instance = gateways[0]

    def grpc_metric(text: str, name: str) -> float:
        return sum(
            float(line.rsplit(" ", 1)[1])
            for line in text.splitlines()
            if line.startswith(name) and 'entrypoint="grpc"' in line
        )

    async with httpx.AsyncClient(base_url=instance.http_url) as http:
        before = (await http.get("/metrics")).text
    async with grpc.aio.insecure_channel(instance.grpc_target) as channel:
        stub = pb_grpc.GenerationServiceStub(channel)  # type: ignore[no-untyped-call]
        async for _ in stub.GenerateStream(
            pb.GenerateRequest(prompt="x"), metadata=auth_metadata(), timeout=20
        ):
            pass
        await stub.Generate(pb.GenerateRequest(prompt="x"), metadata=auth_metadata(), timeout=20)
    async with httpx.AsyncClient(base_url=instance.http_url) as http:
        after = (await http.get("/metrics")).text
    ttft = "genwire_gateway_time_to_first_token_seconds_count"
    assert grpc_metric(after, ttft) - grpc_metric(before, ttft) >= 1
    e2e = "genwire_gateway_e2e_request_latency_seconds_count"
    assert grpc_metric(after, e2e) - grpc_metric(before, e2e) == 2
    assert grpc_metric(after, "genwire_gateway_num_requests_running") == 0
    assert grpc_metric(after, "genwire_gateway_num_requests_waiting") == 0
