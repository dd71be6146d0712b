"""The gateway's side of an unsent ``max_tokens``: left out of the published request (preprocess
fits the default to the prompt), budgeted as the default (64, or ``min_tokens`` above it), the
same for HTTP and gRPC (an unset proto optional is unsent); a sent value is published as sent."""

from __future__ import annotations

import json
from typing import Any

import pytest
from genwire_gateway import openai
from genwire_gateway.config import GatewaySettings
from genwire_gateway.grpc_service import request_fields
from genwire_gateway.handlers import Gateway, Prepared
from genwire_gateway.usage import budget

from genwire.proto.v1 import generation_pb2 as pb


def _prepare(fields: dict[str, Any]) -> Prepared:
    gateway = Gateway(GatewaySettings(), None, None, None)  # type: ignore[arg-type]  # prepare only
    return gateway.prepare(fields)


def _completion(body: dict[str, Any]) -> dict[str, Any]:
    parsed = openai.parse_body(openai.CompletionRequest, json.dumps(body).encode())
    return {**parsed.fields(), **parsed.prompts()[0]}


def _chat(body: dict[str, Any]) -> dict[str, Any]:
    messages = [{"role": "user", "content": "hello"}]
    raw = json.dumps({"messages": messages, **body}).encode()
    fields: dict[str, Any] = openai.parse_body(openai.ChatCompletionRequest, raw).fields()
    return fields


def test_an_unsent_max_tokens_is_left_out_and_budgeted_as_the_default() -> None:
    unsent = _prepare(_completion({"prompt": "hello world " * 40}))
    sent = _prepare(_completion({"prompt": "hello world " * 40, "max_tokens": 64}))
    assert b'"max_tokens"' not in unsent.value and b'"max_tokens":64' in sent.value
    assert not unsent.request.max_tokens_sent() and sent.request.max_tokens_sent()
    assert budget(unsent) == budget(sent)  # the default costs what it did


def test_min_tokens_above_the_default_is_taken_and_budgeted_not_refused() -> None:
    """``{"prompt": "a", "min_tokens": 100}`` was a 400: 'min_tokens' (100) exceeds
    'max_tokens' (64), a limit its caller never sent."""
    prepared = _prepare(_completion({"prompt": "a", "min_tokens": 100}))
    assert prepared.request.max_tokens == 100 and b'"max_tokens"' not in prepared.value
    assert budget(prepared) == budget(_prepare(_completion({"prompt": "a", "max_tokens": 100})))


def test_max_completion_tokens_is_a_sent_max_tokens() -> None:
    prepared = _prepare(_chat({"max_completion_tokens": 5}))
    assert prepared.request.max_tokens == 5 and prepared.request.max_tokens_sent()
    assert not _prepare(_chat({})).request.max_tokens_sent()


@pytest.mark.parametrize(("set_it", "sent"), [(False, False), (True, True)])
def test_grpc_max_tokens_is_sent_only_when_set(set_it: bool, sent: bool) -> None:
    message = pb.GenerateRequest(prompt="hello")
    if set_it:
        message.max_tokens = 64
    prepared = _prepare(request_fields(message))
    assert prepared.request.max_tokens_sent() is sent and prepared.request.max_tokens == 64


def test_a_context_refusal_names_the_field_its_caller_sent_the_prompt_in() -> None:
    """Preprocess names the prompt's field (``param``); the HTTP body names it as sent."""
    chat = openai.parse_body(
        openai.ChatCompletionRequest,
        b'{"messages": [{"role": "user", "content": "hi"}], "max_completion_tokens": 5}',
    )
    assert chat.caller_param("messages") == "messages"
    ids = openai.parse_body(openai.CompletionRequest, b'{"prompt": [1, 2, 3]}')
    assert ids.caller_param("prompt_token_ids") == "prompt"
