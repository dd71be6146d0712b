"""One trace per request, end to end: gateway → preprocess → inference → Triton → postprocess.

Runs against the real stack (``stack``: Kafka, Redis, Triton with the default model, Jaeger and
the five services) and reads the trace back from Jaeger's query API.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

import httpx
import pytest
from genwire_gateway.client import GenwireClient
from genwire_gateway.config import GatewaySettings

from genwire.apikeys import auth_headers
from genwire.settings import CommonSettings
from genwire.telemetry import semconv as sc

pytestmark = pytest.mark.slow

SERVICES = {"genwire-gateway", "genwire-preprocess", "genwire-inference", "genwire-postprocess"}
# Topics a request crosses on its way to the caller (tokens only when streamed): the result
# comes back on the gateway's own partition of genwire.replies (docs/architecture.md, *Direct
# replies*); genwire.results still gets its publish span (asserted below).
HOPS = ("genwire.requests", "genwire.prepared", "genwire.generations", "genwire.replies")


def _tags(span: dict[str, Any]) -> dict[str, Any]:
    return {t["key"]: t["value"] for t in span.get("tags", [])}


async def _jaeger_trace(
    jaeger_url: str, trace_id: str, *, timeout_s: float = 60.0
) -> dict[str, Any]:
    """The trace from Jaeger, once spans of every service and every hop have arrived."""
    url = f"{jaeger_url.rstrip('/')}/api/traces/{trace_id}"
    last: dict[str, Any] = {}
    async with httpx.AsyncClient(timeout=5.0) as http:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            response = await http.get(url)
            if response.status_code == 200 and response.json().get("data"):
                last = response.json()["data"][0]
                services = {p["serviceName"] for p in last["processes"].values()}
                names = {s["operationName"] for s in last["spans"]}
                wanted = {f"{t} {op}" for t in HOPS for op in ("publish", "process")}
                if services >= SERVICES and wanted <= names and sc.SPAN_TRITON_GENERATE in names:
                    return last
            await asyncio.sleep(0.5)
    pytest.fail(f"trace {trace_id} incomplete in Jaeger after {timeout_s:.0f} s: {last}")


async def _via_grpc(settings: GatewaySettings, prompt: str) -> tuple[str, str]:
    async with GenwireClient(f"{settings.grpc_host}:{settings.grpc_port}") as client:
        result = await client.generate(prompt, max_tokens=8, seed=3)
    assert result.text
    return result.request_id, result.trace_id


async def _via_http(settings: GatewaySettings, prompt: str) -> tuple[str, str]:
    async with httpx.AsyncClient(
        base_url=f"http://{settings.host}:{settings.port}", timeout=60, headers=auth_headers()
    ) as http:
        response = await http.post("/v1/completions", json={"prompt": prompt, "max_tokens": 8})
    assert response.status_code == 200, response.text
    return response.headers["x-request-id"], response.headers["x-trace-id"]


@pytest.mark.parametrize("entrypoint", ["grpc", "http"])
async def test_one_trace_spans_every_stage(stack: CommonSettings, entrypoint: str) -> None:
    settings = GatewaySettings()
    marker = f"zebra-{uuid.uuid4().hex[:10]}"
    prompt = f"Once upon a time {marker}"
    call = _via_grpc if entrypoint == "grpc" else _via_http
    request_id, trace_id = await call(settings, prompt)
    assert len(trace_id) == 32

    trace = await _jaeger_trace(stack.jaeger_ui_url, trace_id)
    spans = trace["spans"]
    service_of = {pid: p["serviceName"] for pid, p in trace["processes"].items()}
    assert {s["traceID"] for s in spans} == {trace_id}
    assert set(service_of.values()) >= SERVICES

    # The gateway's SERVER span starts the trace.
    roots = [s for s in spans if not s.get("references")]
    assert len(roots) == 1
    root = roots[0]
    assert service_of[root["processID"]] == "genwire-gateway"
    root_tags = _tags(root)
    assert root_tags["span.kind"] == "server"
    assert root_tags[sc.ENTRYPOINT] == entrypoint
    assert root_tags[sc.REQUEST_ID] == request_id

    # Kafka spans follow the messaging conventions; each process span's parent is the publish
    # span of the same topic (the context crossed the broker in the record's headers).
    by_id = {s["spanID"]: s for s in spans}
    assert any(s["operationName"] == "genwire.results publish" for s in spans)
    for topic in HOPS:
        publishes = [s for s in spans if s["operationName"] == f"{topic} publish"]
        processes = [s for s in spans if s["operationName"] == f"{topic} process"]
        assert publishes and processes, topic
        for span in publishes:
            tags = _tags(span)
            assert tags["span.kind"] == "producer"
            assert tags[sc.MESSAGING_SYSTEM] == "kafka"
            assert tags[sc.MESSAGING_DESTINATION] == topic
            assert tags[sc.MESSAGING_OPERATION_NAME] == "publish"
            assert tags[sc.MESSAGING_MESSAGE_KEY] == request_id
        for span in processes:
            tags = _tags(span)
            assert tags["span.kind"] == "consumer"
            assert tags[sc.MESSAGING_SYSTEM] == "kafka"
            assert tags[sc.MESSAGING_DESTINATION] == topic
            assert tags[sc.MESSAGING_OPERATION_NAME] == "process"
            parent = by_id[span["references"][0]["spanID"]]
            assert parent["operationName"] == f"{topic} publish"

    # The model call carries gen_ai.* attributes.
    (model_call,) = [s for s in spans if s["operationName"] == sc.SPAN_TRITON_GENERATE]
    assert service_of[model_call["processID"]] == "genwire-inference"
    gen_ai = _tags(model_call)
    assert gen_ai[sc.GEN_AI_REQUEST_MODEL]
    assert int(gen_ai[sc.GEN_AI_INPUT_TOKENS]) > 0
    assert int(gen_ai[sc.GEN_AI_OUTPUT_TOKENS]) > 0
    assert float(gen_ai[sc.TIME_TO_FIRST_TOKEN_MS]) >= 0

    # One request per trace, and no prompt text anywhere by default.
    for span in spans:
        tags = _tags(span)
        for key in (sc.REQUEST_ID, sc.MESSAGING_MESSAGE_KEY):
            if key in tags:
                assert tags[key] == request_id, (span["operationName"], key)
        for value in tags.values():
            assert marker not in str(value), span["operationName"]
        for log in span.get("logs", []):
            for field in log.get("fields", []):
                assert marker not in str(field.get("value")), span["operationName"]
