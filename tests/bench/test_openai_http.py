"""The openai-http bench target: its body is a valid OpenAI request genwire honours, and its
timing reads SSE as a client does (first text, usage, [DONE], errors)."""

from __future__ import annotations

import json

import httpx
from genwire_bench.drivers.base import new_trace
from genwire_bench.drivers.openai_http import OpenAIHttpDriver, model_ms, to_body
from genwire_bench.records import MODEL_MS, BenchRequest, RequestRecord, SamplingSpec
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


async def test_an_unstreamed_answer_gives_the_models_time_from_server_timing() -> None:
    usage = {"usage": {"prompt_tokens": 4, "completion_tokens": 2}}
    header = "model-queue;dur=0.250, model-compute;dur=31.5"
    record = await _run(
        httpx.MockTransport(
            lambda r: httpx.Response(200, json=usage, headers={"server-timing": header})
        ),
        stream=False,
    )
    assert record.error is None and record.extra[MODEL_MS] == 31.75
    # Without the header (or with only one of the two), the model's time is not known.
    bare = await _run(httpx.MockTransport(lambda r: httpx.Response(200, json=usage)), stream=False)
    assert MODEL_MS not in bare.extra


def test_server_timing_is_parsed_as_the_w3c_header_is_written() -> None:
    assert model_ms('model-queue;dur=1;desc="queue", model-compute;desc="x";dur=2.5') == 3.5
    assert model_ms("cache;dur=9, model-compute;dur=2") is None  # no model-queue
    assert model_ms("model-queue;dur=abc, model-compute;dur=2") is None  # malformed
    assert model_ms("model-queue;dur=nan, model-compute;dur=2") is None  # not finite
    assert model_ms("model-queue;dur=-1, model-compute;dur=2") is None  # negative
    assert model_ms("model-queue;DUR=1;dur=7, model-compute;dur=2") == 3.0  # the first dur
    assert model_ms("") is None
