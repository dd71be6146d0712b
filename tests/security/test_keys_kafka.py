"""Keys, limits and usage through two real gateways (in this process) on the real Kafka and
Redis, with the gateway tests' stand-in pipeline answering."""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

import grpc
import httpx
import pytest
from genwire_cli.usage_cli import read_usage
from genwire_gateway.client import GenwireClient, GenwireClientError
from genwire_gateway.limits import limit_keys
from genwire_gateway.usage import METRIC_KEY_TOKENS

from genwire.apikeys import KeyStore, auth_headers, new_key
from genwire.proto.v1 import generation_pb2 as pb
from genwire.proto.v1 import generation_pb2_grpc as pb_grpc
from genwire.redisconn import connect
from genwire.settings import CommonSettings
from genwire.telemetry import semconv as sc
from genwire.usage import UsageEvent
from tests.gateway.harness import FakePipeline, GatewayInstance, Script

from .conftest import MakeKey

Gateways = tuple[GatewayInstance, GatewayInstance]


def _prompt() -> str:
    return f"hello {uuid.uuid4().hex}"


async def _post(gw: GatewayInstance, key: str | None, **body: Any) -> httpx.Response:
    headers = {"authorization": f"Bearer {key}"} if key is not None else {}
    async with httpx.AsyncClient(base_url=gw.http_url, timeout=30, trust_env=False) as http:
        return await http.post("/v1/completions", json={"max_tokens": 4, **body}, headers=headers)


async def _grpc_generate(gw: GatewayInstance, key: str | None, prompt: str) -> grpc.aio.Call:
    metadata = (("authorization", f"Bearer {key}"),) if key else ()
    async with grpc.aio.insecure_channel(gw.grpc_target) as channel:
        stub = pb_grpc.GenerationServiceStub(channel)  # type: ignore[no-untyped-call]
        call = stub.Generate(pb.GenerateRequest(prompt=prompt, max_tokens=4), metadata=metadata)
        await call
        return call


async def _grpc_error(gw: GatewayInstance, key: str | None, prompt: str) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await _grpc_generate(gw, key, prompt)
    return info.value


async def test_refused_keys_say_why_and_nothing_reaches_kafka(
    two_gateways: Gateways, security_pipeline: FakePipeline, make_key: MakeKey
) -> None:
    http_gw, grpc_gw = two_gateways
    feedback_key, _ = await make_key(("feedback",))
    refused_prompts = []
    cases = [(None, 401, "missing"), ("sk-not-ours", 401, "malformed"), (new_key(), 401, "unknown")]
    cases.append((feedback_key, 403, "lacks the 'generate' scope"))
    for key, status, words in cases:
        prompt = _prompt()
        refused_prompts.append(prompt)
        response = await _post(http_gw, key, prompt=prompt)
        assert response.status_code == status, response.text
        error = response.json()["error"]
        assert words in error["message"]
        assert error["code"] == ("permission_denied" if status == 403 else "invalid_api_key")
        prompt = _prompt()
        refused_prompts.append(prompt)
        rpc = await _grpc_error(grpc_gw, key, prompt)
        expected = (
            grpc.StatusCode.PERMISSION_DENIED if status == 403 else grpc.StatusCode.UNAUTHENTICATED
        )
        assert rpc.code() == expected and words in (rpc.details() or "")
    # A request that passes goes through; by the time its answer is back, a refused one that
    # had been published would have been seen first on the same topic.
    ok = await _post(http_gw, auth_headers()["authorization"].split()[1], prompt=_prompt())
    assert ok.status_code == 200, ok.text
    seen = {s.request.prompt for s in security_pipeline.seen}
    assert not seen & set(refused_prompts)


async def test_open_routes_need_no_key(two_gateways: Gateways) -> None:
    async with httpx.AsyncClient(base_url=two_gateways[0].http_url, timeout=10) as http:
        for path in ("/healthz", "/readyz", "/metrics"):
            assert (await http.get(path)).status_code == 200
        assert (await http.get("/v1/models")).status_code == 401


async def test_a_revoked_key_stops_working_on_every_gateway(
    two_gateways: Gateways, infra: CommonSettings, make_key: MakeKey
) -> None:
    key, record = await make_key()
    for gw in two_gateways:  # both have it cached now
        assert (await _post(gw, key, prompt=_prompt())).status_code == 200
    redis = connect(infra.redis_url)
    try:
        await KeyStore(redis).revoke(record.id)
    finally:
        await redis.aclose()  # type: ignore[attr-defined]
    revoked_at = time.monotonic()
    waits = []
    for gw in two_gateways:
        async with asyncio.timeout(10):  # a bound for the test; the figure is printed
            # Polls the gateway: nothing to wait on from here.
            while (await _post(gw, key, prompt="x")).status_code != 401:  # noqa: ASYNC110
                await asyncio.sleep(0.02)
        waits.append(time.monotonic() - revoked_at)
        response = await _post(gw, key, prompt="x")
        assert "revoked" in response.json()["error"]["message"]
    print(f"revoked key refused by both gateways after {max(waits):.3f} s")


async def test_rpm_holds_exactly_with_8_clients_on_2_gateways(
    two_gateways: Gateways, make_key: MakeKey
) -> None:
    limit = 6
    key, _ = await make_key(rpm=limit)

    async def client(i: int) -> list[httpx.Response]:
        return [await _post(two_gateways[(i + j) % 2], key, prompt=_prompt()) for j in range(4)]

    responses = [r for rs in await asyncio.gather(*(client(i) for i in range(8))) for r in rs]
    statuses = sorted(r.status_code for r in responses)
    assert statuses.count(200) == limit and statuses.count(429) == len(responses) - limit
    for r in responses:
        if r.status_code == 429:
            error = r.json()["error"]
            assert (
                error["code"] == "rate_limit_exceeded" and "requests per minute" in error["message"]
            )
            assert 1 <= int(r.headers["retry-after"]) <= 61
    rpc = await _grpc_error(two_gateways[1], key, _prompt())
    assert rpc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    trailing = dict(rpc.trailing_metadata() or ())
    assert 1 <= int(trailing["retry-after"]) <= 61


async def _tpm_used(infra: CommonSettings, key_id: str) -> int:
    redis = connect(infra.redis_url)
    try:
        values = await redis.hvals(limit_keys(key_id)[1])
    finally:
        await redis.aclose()  # type: ignore[attr-defined]
    return sum(int(v) for v in values)


async def test_tpm_charges_the_budget_and_corrects_it_at_completion(
    two_gateways: Gateways, infra: CommonSettings, make_key: MakeKey
) -> None:
    key, record = await make_key(tpm=200)
    # Budget of one request: "hi" (1 token estimated + 1) + 55 = 57; the stand-in reports
    # 2 prompt + 3 completion tokens = 5.
    for gw in (*two_gateways, two_gateways[0]):
        assert (await _post(gw, key, prompt="hi", max_tokens=55)).status_code == 200
    async with asyncio.timeout(10):
        while await _tpm_used(infra, record.id) != 3 * 5:  # noqa: ASYNC110  (Redis)
            await asyncio.sleep(0.05)
    # Uncorrected, 3 x 57 = 171 would leave no room for a 4th; corrected, 15 leaves room for 3.
    for gw in (*two_gateways, two_gateways[1]):
        assert (await _post(gw, key, prompt="hi", max_tokens=55)).status_code == 200
    too_large = await _post(two_gateways[0], key, prompt="hi", max_tokens=500)
    assert too_large.status_code == 400 and "tokens per minute" in too_large.text


def _seen_hi(pipeline: FakePipeline) -> bool:
    return any(s.request.max_tokens == 60 and s.request.prompt == "hi" for s in pipeline.seen)


async def test_tokens_per_day_refuse_with_insufficient_quota(
    two_gateways: Gateways, security_pipeline: FakePipeline, make_key: MakeKey
) -> None:
    key, _ = await make_key(tokens_per_day=100)
    security_pipeline.script = lambda _: Script(delay_s=2.0)
    first = asyncio.create_task(_post(two_gateways[0], key, prompt="hi", max_tokens=60))
    async with asyncio.timeout(10):  # the first is charged (and in flight) once it is seen
        while not _seen_hi(security_pipeline):  # noqa: ASYNC110  (another task fills it)
            await asyncio.sleep(0.02)
    second = await _post(two_gateways[1], key, prompt="hi", max_tokens=60)
    assert second.status_code == 429, second.text
    assert second.json()["error"]["code"] == "insufficient_quota"
    assert int(second.headers["retry-after"]) <= 86_400
    assert (await first).status_code == 200


async def test_a_flooding_key_does_not_refuse_another(
    two_gateways: Gateways, make_key: MakeKey
) -> None:
    flood, _ = await make_key(rpm=2)
    calm, _ = await make_key(rpm=1000)
    floods = [_post(two_gateways[i % 2], flood, prompt=_prompt()) for i in range(40)]
    calms = [_post(two_gateways[i % 2], calm, prompt=_prompt()) for i in range(8)]
    results = await asyncio.gather(*floods, *calms)
    assert [r.status_code for r in results[40:]] == [200] * 8
    assert sum(r.status_code == 429 for r in results[:40]) == 38


async def test_usage_events_and_key_metrics(
    two_gateways: Gateways, infra: CommonSettings, make_key: MakeKey
) -> None:
    key, record = await make_key()
    since = time.time() * 1000.0 - 1000
    response = await _post(two_gateways[0], key, prompt=_prompt())
    assert response.status_code == 200
    rid = response.headers["x-request-id"]
    async with GenwireClient(two_gateways[1].grpc_target, api_key=key) as client:
        streamed = [c async for c in client.stream(_prompt(), max_tokens=4)]
    events: list[UsageEvent] = []
    async with asyncio.timeout(20):
        while len(events) < 2:
            found = await read_usage(infra.kafka_bootstrap_servers, since)
            events = [e for e in found if e.key_name == record.name]
            await asyncio.sleep(0.2)
    unary = next(e for e in events if e.request_id == rid)
    assert (unary.prompt_tokens, unary.completion_tokens, unary.total_tokens) == (2, 3, 5)
    assert (unary.model, unary.model_version, unary.finish_reason) == ("fake", "1", "length")
    assert unary.key_id == record.id and unary.latency_ms > 0 and not unary.stream
    assert [e.stream for e in events if e.request_id != rid] == [True]
    assert streamed[-1].final
    async with httpx.AsyncClient(base_url=two_gateways[0].http_url, timeout=10) as http:
        metrics = (await http.get("/metrics")).text
    line = f'{METRIC_KEY_TOKENS}{{key="{record.name}",kind="completion"}} 3.0'
    assert line in metrics
    assert key not in metrics


async def test_content_is_recorded_only_for_keys_that_opted_in_and_redacted(
    two_gateways: Gateways, make_key: MakeKey
) -> None:
    captured, _ = await make_key(capture_content=True)
    plain, _ = await make_key()
    gw = two_gateways[0]
    secret = "mail ada@example.com card 4111 1111 1111 1111 order 1234 5678 9012 3456"
    ids = {}
    for name, key in (("captured", captured), ("plain", plain)):
        response = await _post(gw, key, prompt=secret)
        assert response.status_code == 200
        ids[name] = response.headers["x-request-id"]

    def server_span(rid: str) -> Any:
        for span in gw.spans.get_finished_spans():
            if (span.attributes or {}).get(sc.REQUEST_ID) == rid and span.kind.name == "SERVER":
                return span
        return None

    async with asyncio.timeout(10):
        while server_span(ids["captured"]) is None or server_span(ids["plain"]) is None:  # noqa: ASYNC110
            await asyncio.sleep(0.05)
    attrs = server_span(ids["captured"]).attributes
    assert attrs[sc.GEN_AI_PROMPT] == (
        "mail [REDACTED:email] card [REDACTED:card] order 1234 5678 9012 3456"
    )  # the second number fails the Luhn check: not a card
    assert attrs[sc.GEN_AI_COMPLETION] == "Hello, world"
    plain_attrs = server_span(ids["plain"]).attributes
    assert sc.GEN_AI_PROMPT not in plain_attrs and sc.GEN_AI_COMPLETION not in plain_attrs


async def test_the_client_sends_the_saved_key_and_reports_refusals(
    two_gateways: Gateways,
) -> None:
    async with GenwireClient(two_gateways[0].grpc_target) as client:  # the saved admin key
        assert (await client.generate(_prompt(), max_tokens=4)).text
    async with GenwireClient(two_gateways[0].grpc_target, api_key=new_key()) as client:
        with pytest.raises(GenwireClientError) as info:
            await client.generate(_prompt(), max_tokens=4)
    assert info.value.status == "UNAUTHENTICATED"


async def test_a_submitted_request_is_metered_when_its_result_lands(
    two_gateways: Gateways, infra: CommonSettings, make_key: MakeKey
) -> None:
    key, record = await make_key(tpm=1000)
    since = time.time() * 1000.0 - 1000
    async with GenwireClient(two_gateways[0].grpc_target, api_key=key) as client:
        rid = await client.submit(_prompt(), max_tokens=40)
        assert (await client.get_result(rid, wait_s=10)).status == "done"
    events: list[UsageEvent] = []
    async with asyncio.timeout(20):
        while not events:
            found = await read_usage(infra.kafka_bootstrap_servers, since)
            events = [e for e in found if e.request_id == rid]
            await asyncio.sleep(0.2)
    assert events[0].key_name == record.name and events[0].total_tokens == 5
    assert events[0].charged_tokens == 5  # the budget (prompt estimate + 40) corrected
    async with asyncio.timeout(10):
        while await _tpm_used(infra, record.id) != 5:  # noqa: ASYNC110  (Redis)
            await asyncio.sleep(0.05)


async def test_the_published_request_names_the_key_never_the_key_itself(
    two_gateways: Gateways, security_pipeline: FakePipeline, make_key: MakeKey
) -> None:
    key, record = await make_key()
    prompt = _prompt()
    assert (await _post(two_gateways[1], key, prompt=prompt)).status_code == 200
    seen = next(s for s in security_pipeline.seen if s.request.prompt == prompt)
    assert seen.headers[sc.HEADER_PRINCIPAL] == record.name.encode()
    assert all(key.encode() not in value for value in seen.headers.values())
