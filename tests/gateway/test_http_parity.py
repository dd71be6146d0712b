"""Where the HTTP API must behave as OpenAI's does, without servers (the app of
``test_http_api``: the real routes, error handlers and middleware over a faked pipeline): a
stalled body ends in a 408, permanent refusals tell the SDKs not to retry, unary and streamed
answers name the same model, trailing slashes and ``HEAD`` get OpenAI's shape."""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI
from genwire_gateway.handlers import Prepared

from genwire.events import GenerationResult
from genwire.request import http_status as request_http_status
from tests.gateway import test_http_api as base
from tests.gateway.test_http_api import FakeGateway, _client, _events, completions_scope

# The fixtures of test_http_api: the app built as the gateway's is, over a faked pipeline.
spans = base.spans
app = base.app

ERROR_FIELDS = {"message", "type", "param", "code"}


# -- a stalled body -------------------------------------------------------------------------


async def test_a_body_that_stalls_is_refused_with_a_408(app: FastAPI) -> None:
    app.state.gateway.settings.body_read_timeout_s = 0.05
    sent: list[dict[str, Any]] = []
    reads = 0

    async def receive() -> dict[str, Any]:
        nonlocal reads
        reads += 1
        if reads == 1:  # 4 bytes of the 50 announced, then nothing
            return {"type": "http.request", "body": b'{"pr', "more_body": True}
        await asyncio.Event().wait()  # the client stalls (never hangs up either)
        raise AssertionError("unreachable")

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    # Bounded here, so that the old code (no bound) fails instead of hanging the suite.
    await asyncio.wait_for(app(completions_scope(50), receive, send), 5)
    assert sent[0]["status"] == 408
    headers = dict(sent[0]["headers"])
    assert headers[b"connection"] == b"close"  # the rest of the body is not a next request
    error = json.loads(sent[1]["body"])["error"]
    assert set(error) == ERROR_FIELDS and error["code"] == "request_timeout"
    assert error["type"] == "invalid_request_error"
    assert app.state.gateway.seen == []
    # The monitor classifies codes with genwire.request's table: a stalled client is the
    # caller's failure there too, not a server error.
    assert request_http_status("request_timeout") == 408


# -- retry hints ----------------------------------------------------------------------------


async def test_an_idempotency_conflict_tells_the_sdk_not_to_retry(app: FastAPI) -> None:
    from genwire_gateway.errors import IDEMPOTENCY_CONFLICT, GatewayError

    app.state.gateway.fail = GatewayError("the id was used", code=IDEMPOTENCY_CONFLICT)
    async with _client(app) as client:
        response = await client.post(
            "/v1/completions", json={"prompt": "x"}, headers={"Idempotency-Key": "k1"}
        )
    assert response.status_code == 409
    assert response.headers["x-should-retry"] == "false"


@pytest.mark.parametrize(
    ("method", "path", "body", "status"),
    [
        ("POST", "/v1/completions", {"prompt": 5}, 400),
        ("POST", "/v1/completions", {"prompt": "x", "suffix": "y"}, 400),
        ("GET", "/v1/nowhere", None, 404),
        ("DELETE", "/v1/completions", None, 405),
        ("GET", "/v1/models/absent", None, 404),
    ],
)
async def test_permanent_refusals_say_should_retry_false(
    app: FastAPI, method: str, path: str, body: Any, status: int
) -> None:
    async with _client(app) as client:
        response = await client.request(method, path, json=body)
    assert response.status_code == status
    assert response.headers["x-should-retry"] == "false"


async def test_a_transient_failure_keeps_the_sdks_retry(app: FastAPI) -> None:
    from genwire_gateway.errors import GatewayError

    app.state.gateway.fail = GatewayError("the pipeline is down", code="unavailable")
    async with _client(app) as client:
        response = await client.post("/v1/completions", json={"prompt": "x"})
    assert response.status_code == 503 and "x-should-retry" not in response.headers


# -- the model an answer names --------------------------------------------------------------


class ServedGateway(FakeGateway):
    """Results name the served model, not the caller's name for it (a version suffix)."""

    async def generate(self, prepared: Prepared) -> GenerationResult:
        result = await super().generate(prepared)
        return result.model_copy(update={"model": "genwire-gpt"})


@pytest.mark.parametrize("route", ["/v1/completions", "/v1/chat/completions"])
async def test_unary_and_streamed_answers_name_the_model_the_caller_asked_for(
    app: FastAPI, route: str
) -> None:
    app.state.gateway = ServedGateway()
    body: dict[str, Any] = {"model": "genwire-gpt:5"}
    body |= (
        {"prompt": "x"} if "chat" not in route else {"messages": [{"role": "user", "content": "x"}]}
    )
    async with _client(app) as client:
        unary = await client.post(route, json=body)
        streamed = await client.post(route, json=body | {"stream": True})
    assert unary.status_code == streamed.status_code == 200, unary.text
    chunks = [e for e in _events(streamed.text) if e != "[DONE]"]
    assert unary.json()["model"] == "genwire-gpt:5"
    assert {c["model"] for c in chunks} == {"genwire-gpt:5"}


async def test_an_unnamed_model_is_the_default_in_both(app: FastAPI) -> None:
    app.state.gateway = ServedGateway()
    app.state.gateway.settings.default_model = "the-default"
    async with _client(app) as client:
        unary = await client.post("/v1/completions", json={"prompt": "x"})
        streamed = await client.post("/v1/completions", json={"prompt": "x", "stream": True})
    chunks = [e for e in _events(streamed.text) if e != "[DONE]"]
    assert unary.json()["model"] == "the-default"
    assert {c["model"] for c in chunks} == {"the-default"}


# -- routes ---------------------------------------------------------------------------------


async def test_a_trailing_slash_is_an_unknown_route_in_openai_shape() -> None:
    from genwire_gateway.app import create_app
    from genwire_gateway.config import GatewaySettings

    # The gateway's own app (the runner's construction), its lifespan not run: no route runs.
    real = create_app(GatewaySettings(auth_enabled=False), set_global_tracer=False)
    real.state.auth = None
    async with _client(real) as client:
        response = await client.post("/v1/completions/", json={"prompt": "x"})
    assert response.status_code == 404, response.text
    error = response.json()["error"]
    assert set(error) == ERROR_FIELDS and error["code"] == "not_found"


@pytest.mark.parametrize("path", ["/v1/models", "/v1/models/genwire-gpt"])
async def test_head_is_served_where_get_is(app: FastAPI, path: str) -> None:
    async def find(model: str) -> dict[str, Any] | None:
        return {"id": model, "object": "model", "created": 0, "owned_by": "genwire"}

    app.state.models.find = find
    async with _client(app) as client:
        got = await client.get(path)
        head = await client.head(path)
    assert got.status_code == head.status_code == 200
    assert head.headers["content-type"] == got.headers["content-type"]


# -- error params and messages --------------------------------------------------------------


async def test_an_image_part_is_refused_naming_its_type(app: FastAPI) -> None:
    part = {"type": "image_url", "image_url": {"url": "https://example.com/a.png"}}
    body = {"messages": [{"role": "user", "content": [part]}]}
    async with _client(app) as client:
        response = await client.post("/v1/chat/completions", json=body)
    assert response.status_code == 400
    error = response.json()["error"]
    assert (error["code"], error["param"]) == (
        "unsupported_parameter",
        "messages[0].content[0].type",
    )
    assert "'image_url'" in error["message"] and "list[" not in error["message"]


async def test_a_batchs_bad_prompt_is_named(app: FastAPI) -> None:
    async with _client(app) as client:
        response = await client.post("/v1/completions", json={"prompt": ["ok", "", "fine"]})
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["param"] == "prompt[1]" and error["message"].startswith("prompt[1]: ")
    assert app.state.gateway.seen == []


async def test_a_lone_prompt_is_not_renamed(app: FastAPI) -> None:
    async with _client(app) as client:
        response = await client.post("/v1/completions", json={"prompt": ""})
    assert response.status_code == 400 and response.json()["error"]["param"] == "prompt"


# -- the error table ------------------------------------------------------------------------


def test_the_docs_error_table_lists_every_code_with_its_status() -> None:
    from genwire_gateway.errors import REQUEST_TIMEOUT, http_status

    from genwire.request import ERROR_HTTP_STATUS, GATEWAY_ERROR_HTTP_STATUS

    text = (Path(__file__).resolve().parents[2] / "docs" / "api.md").read_text()
    section = text.split("## Errors", 1)[1].split("\n## ", 1)[0]
    rows = re.findall(r"^\| `([a-z_]+)` \| (\d{3}) \|", section, flags=re.MULTILINE)
    documented = {code: int(status) for code, status in rows}
    codes = {*ERROR_HTTP_STATUS, *GATEWAY_ERROR_HTTP_STATUS, REQUEST_TIMEOUT}
    assert set(documented) >= codes, sorted(codes - set(documented))
    assert {c: documented[c] for c in codes} == {c: http_status(c) for c in codes}


def test_every_408_closes_its_connection() -> None:
    """Whichever route answered a stalled body (feedback's too, not only the generation
    routes' own error response): the rest of that body must not be read as a next request."""
    from genwire_gateway.http_api import _with_retry_hint

    start = {"type": "http.response.start", "status": 408, "headers": [(b"x-a", b"1")]}
    assert (b"connection", b"close") in _with_retry_hint(start)["headers"]
    closed = {**start, "headers": [(b"Connection", b"close")]}
    assert _with_retry_hint(closed)["headers"] == [(b"Connection", b"close")]  # not twice
    assert _with_retry_hint({**start, "status": 200}) == {**start, "status": 200}
