"""The gateway's OpenAI-compatible HTTP API: ``POST /v1/completions``, plain or streamed (SSE).

What an OpenAI client sees, with ``traceparent`` in the headers; plain httpx (no SDK in the
measured path), one shared connection pool.
"""

from __future__ import annotations

import contextlib
import json
import math
import time
from typing import Any

import httpx

from genwire.apikeys import auth_headers, resolve_api_key
from genwire.gateway_tls import http_url
from genwire.gateway_tls import resolve as resolve_tls
from genwire_bench.drivers.base import Driver, RequestFailed, TraceContext
from genwire_bench.records import MODEL_MS, BenchRequest, RequestRecord


def to_body(req: BenchRequest, model: str, *, stream: bool) -> dict[str, Any]:
    """The same prompt and sampling as every other target, as an OpenAI completions body."""
    s = req.sampling
    body: dict[str, Any] = {
        "model": model,
        "prompt": req.prompt,
        "max_tokens": s.max_tokens,
        "temperature": s.temperature,
        "top_p": s.top_p,
        "seed": s.seed,
        "stream": stream,
    }
    if s.top_k:
        body["top_k"] = s.top_k  # vLLM's extra, which genwire honours
    if stream:
        body["stream_options"] = {"include_usage": True}
    return body


class OpenAIHttpDriver(Driver):
    """Calls ``/v1/completions`` over one HTTP/1.1 connection pool."""

    def __init__(self, url: str, model: str, *, stream: bool, timeout_s: float = 60.0) -> None:
        super().__init__(timeout_s)
        self.name = "openai-http-stream" if stream else "openai-http"
        self.streaming = stream
        self.baseline = "triton-stream" if stream else "triton"
        self._url = url.rstrip("/")
        self._model = model
        self._client: httpx.AsyncClient | None = None

    async def start(self) -> None:
        """Open the pool and check the gateway answers ``GET /v1/models`` (over TLS, with the
        client certificate of an mTLS gateway, when genwire.gateway_tls says so)."""
        tls = resolve_tls()
        self._url = http_url(self._url, tls)
        self._client = httpx.AsyncClient(
            base_url=self._url,
            verify=tls.ssl_context() if tls is not None else True,
            headers=auth_headers(resolve_api_key()),
            timeout=httpx.Timeout(self.timeout_s, connect=10.0),
            limits=httpx.Limits(max_connections=1024, max_keepalive_connections=1024),
        )
        try:
            (await self._client.get("/v1/models")).raise_for_status()
        except httpx.HTTPError as exc:
            raise RuntimeError(f"gateway HTTP at {self._url} is not reachable: {exc}") from None

    async def close(self) -> None:
        """Close the pool."""
        if self._client is not None:
            await self._client.aclose()

    async def _send(self, req: BenchRequest, record: RequestRecord, trace: TraceContext) -> None:
        assert self._client is not None, "start() first"
        headers = {"traceparent": trace.traceparent, "idempotency-key": record.request_id}
        body = to_body(req, self._model, stream=self.streaming)
        if not self.streaming:
            response = await self._client.post("/v1/completions", json=body, headers=headers)
            _raise_for_error(response.status_code, response.content)
            record.end = time.perf_counter()
            usage = response.json()["usage"]
            record.output_tokens = usage["completion_tokens"]
            record.prompt_tokens = usage["prompt_tokens"]
            record.trace_id = response.headers.get("x-trace-id") or record.trace_id
            at_model = model_ms(response.headers.get("server-timing", ""))
            if at_model is not None:
                record.extra[MODEL_MS] = at_model
            return
        async with self._client.stream(
            "POST", "/v1/completions", json=body, headers=headers
        ) as response:
            if response.status_code != 200:
                _raise_for_error(response.status_code, await response.aread())
            record.trace_id = response.headers.get("x-trace-id") or record.trace_id
            async for line in response.aiter_lines():
                if not line.startswith("data: "):
                    continue
                data = line[len("data: ") :]
                now = time.perf_counter()
                if data == "[DONE]":
                    record.end = now
                    if record.first_token is None:
                        record.first_token = now
                    return
                event = json.loads(data)
                if "error" in event:
                    error = event["error"]
                    raise RequestFailed(str(error.get("code")), str(error.get("message")))
                if event.get("usage"):
                    record.output_tokens = event["usage"]["completion_tokens"]
                    record.prompt_tokens = event["usage"]["prompt_tokens"]
                if any(c.get("text") for c in event.get("choices", ())):
                    record.chunks += 1
                    if record.first_token is None:
                        record.first_token = now
        raise RequestFailed("incomplete", "the stream ended without [DONE]")


def model_ms(server_timing: str) -> float | None:
    """The model's own time for the request (ms) from the answer's ``Server-Timing`` header
    (``model-queue`` + ``model-compute``; docs/api.md), None without both. A metric's first
    ``dur`` counts (its name matched in any case, as the W3C header is read); a value that is
    not a finite number >= 0 makes that metric missing."""
    durations: dict[str, float] = {}
    for metric in server_timing.split(","):
        name, _, params = metric.strip().partition(";")
        for param in params.split(";"):
            key, _, value = param.strip().partition("=")
            if key.strip().lower() != "dur":
                continue
            with contextlib.suppress(ValueError):
                number = float(value)
                if math.isfinite(number) and number >= 0:
                    durations.setdefault(name.strip(), number)
            break
    if "model-queue" not in durations or "model-compute" not in durations:
        return None
    return durations["model-queue"] + durations["model-compute"]


def _raise_for_error(status: int, content: bytes) -> None:
    if status == 200:
        return
    try:
        error = json.loads(content)["error"]
        raise RequestFailed(str(error.get("code") or status), str(error.get("message")))
    except (ValueError, KeyError, TypeError):
        raise RequestFailed(f"http_{status}", content[:200].decode("utf-8", "replace")) from None
