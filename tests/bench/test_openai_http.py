"""The openai-http bench target: its body is a valid OpenAI request genwire honours, and its
timing reads SSE as a client does (first text, usage, [DONE], errors)."""

from __future__ import annotations

import json

import httpx
from genwire_bench.drivers.base import new_trace
from genwire_bench.drivers.openai_http import OpenAIHttpDriver, to_body
from genwire_bench.records import BenchRequest, RequestRecord, SamplingSpec
from genwire_gateway import openai

REQ = BenchRequest(0, "Once upon a time", (1, 2), SamplingSpec(max_tokens=7, seed=42, top_k=3))


def test_the_body_is_an_openai_request_genwire_honours() -> None:
    for stream in (False, True):
        body = to_body(REQ, "genwire-gpt", stream=stream)
        parsed = openai.parse_body(openai.CompletionRequest, json.dumps(body).encode())
        fields = parsed.fields()
        assert (fields["max_tokens"], fields["seed"], fields["top_k"]) == (7, 42, 3)
        assert parsed.include_usage is stream


def _sse(*events: object) -> bytes:
    return b"".join(
        b"data: " + (e if isinstance(e, bytes) else json.dumps(e).encode()) + b"\n\n"
        for e in events
    )


async def _run(handler: httpx.MockTransport, *, stream: bool) -> RequestRecord:
    driver = OpenAIHttpDriver("http://gw", "genwire-gpt", stream=stream, timeout_s=5)
    driver._client = httpx.AsyncClient(base_url="http://gw", transport=handler)
    try:
        return await driver.send(REQ, "bench-1", new_trace())
    finally:
        await driver.close()


async def test_a_stream_is_timed_from_its_first_text_to_done() -> None:
    body = _sse(
        {"choices": [{"index": 0, "text": ""}]},
        {"choices": [{"index": 0, "text": "Hi"}]},
        {"choices": [{"index": 0, "text": " there"}]},
        {"choices": [], "usage": {"prompt_tokens": 4, "completion_tokens": 2}},
        b"[DONE]",
    )
    transport = httpx.MockTransport(
        lambda r: httpx.Response(200, content=body, headers={"x-trace-id": "t" * 32})
    )
    record = await _run(transport, stream=True)
    assert record.error is None
    assert record.chunks == 2 and record.output_tokens == 2
    assert record.first_token is not None and record.trace_id == "t" * 32


async def test_errors_are_recorded_with_their_code() -> None:
    error = {"error": {"code": "out_of_range", "message": "n: too big"}}
    record = await _run(
        httpx.MockTransport(lambda r: httpx.Response(400, json=error)), stream=False
    )
    assert record.error == "out_of_range: n: too big"
    midway = _sse({"choices": [{"index": 0, "text": "a"}]}, error, b"[DONE]")
    record = await _run(
        httpx.MockTransport(lambda r: httpx.Response(200, content=midway)), stream=True
    )
    assert record.error == "out_of_range: n: too big"
