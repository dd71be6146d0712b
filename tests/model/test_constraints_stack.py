"""Structured output and stop strings through the real stack, driven by the official openai SDK.

Gateway → Kafka → preprocess (compile check) → inference → Triton (the decode loop's
constraints) → postprocess. The output of every constrained request that ends by itself parses
and validates; a schema the grammar library cannot compile is a 400 naming the field, and
never reaches Triton; a stop string ends the generation in the model (fewer tokens generated).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import grpc
import jsonschema  # type: ignore[import-untyped]
import openai
import pytest
from genwire_gateway.config import GatewaySettings
from genwire_model import DEFAULT_MODEL_NAME
from tokenizers import Tokenizer

from genwire.apikeys import auth_metadata, resolve_api_key
from genwire.gateway_tls import grpc_channel
from genwire.gateway_tls import resolve as resolve_tls
from genwire.proto.v1 import generation_pb2 as pb
from genwire.proto.v1 import generation_pb2_grpc as pb_grpc
from genwire.settings import CommonSettings

PERSON = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 16},
        "age": {"type": "integer", "minimum": 0, "maximum": 120},
        "role": {"enum": ["admin", "user", "guest"]},
        "tags": {"type": "array", "items": {"type": "string", "maxLength": 8}, "maxItems": 3},
        "active": {"type": "boolean"},
    },
    "required": ["name", "age", "role", "tags", "active"],
    "additionalProperties": False,
}


@pytest.fixture(scope="module")
def client(stack: CommonSettings) -> openai.OpenAI:
    gateway = GatewaySettings()
    return openai.OpenAI(
        base_url=f"http://{gateway.host}:{gateway.port}/v1",
        api_key=resolve_api_key(None) or "none",
        timeout=60,
        max_retries=0,
    )


def chat(client: openai.OpenAI, content: str, **options: Any) -> Any:
    return client.chat.completions.create(
        model=DEFAULT_MODEL_NAME,
        messages=[{"role": "user", "content": content}],
        max_completion_tokens=options.pop("max_completion_tokens", 160),
        **options,
    )


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_json_schema_strict_parses_and_validates(client: openai.OpenAI, seed: int) -> None:
    response = chat(
        client,
        "Describe a user of the system as JSON.",
        seed=seed,
        temperature=0.8,
        response_format={
            "type": "json_schema",
            "json_schema": {"name": "person", "schema": PERSON, "strict": True},
        },
    )
    choice = response.choices[0]
    assert choice.finish_reason == "stop", choice.message.content
    value = json.loads(choice.message.content or "")
    jsonschema.validate(value, PERSON)


def test_json_object_mode(client: openai.OpenAI) -> None:
    """Any JSON object. The small default model, trained on docstrings, writes prose inside a
    key's string without end; a logit_bias on the tokens holding '"' or '}' (an OpenAI
    parameter, applied before the grammar's mask) lets it close strings and the object."""
    tokenizer = Tokenizer.from_file(str(served_tokenizer()))
    closing = {
        str(i): 8
        for i in range(tokenizer.get_vocab_size())
        if any(c in tokenizer.decode([i]) for c in '"}')
    }
    ended = 0
    for seed in range(4):
        response = chat(
            client,
            "Reply with a JSON object.",
            seed=seed,
            temperature=0.7,
            logit_bias=closing,
            response_format={"type": "json_object"},
        )
        choice = response.choices[0]
        if choice.finish_reason == "stop":
            ended += 1
            assert isinstance(json.loads(choice.message.content or ""), dict)
        else:
            assert choice.finish_reason == "length"
    assert ended > 0


def served_tokenizer() -> Path:
    """The newest default-model version's tokenizer (every version shares the checkpoint's)."""
    versions = [
        p for p in (CommonSettings().repository / DEFAULT_MODEL_NAME).iterdir() if p.name.isdigit()
    ]
    return max(versions, key=lambda p: int(p.name)) / "tokenizer.json"


def test_guided_choice_and_regex(client: openai.OpenAI) -> None:
    choices = ["positive", "negative", "neutral"]
    for seed in range(3):
        response = chat(
            client, "Sentiment of: great docs!", seed=seed, extra_body={"guided_choice": choices}
        )
        assert response.choices[0].message.content in choices
        assert response.choices[0].finish_reason == "stop"
    regex = r"[0-9]{3}-[0-9]{4}"
    response = chat(client, "A phone number:", seed=5, extra_body={"guided_regex": regex})
    assert re.fullmatch(regex, response.choices[0].message.content or "")


@pytest.mark.parametrize(
    ("options", "param", "needle"),
    [
        (
            {
                "response_format": {
                    "type": "json_schema",
                    "json_schema": {"name": "x", "schema": {"type": "integr"}},
                }
            },
            "response_format",
            "integr",
        ),
        (
            {
                "response_format": {
                    "type": "json_schema",
                    "json_schema": {"name": "x", "schema": {"type": "array", "uniqueItems": True}},
                }
            },
            "response_format",
            "uniqueItems",
        ),
        ({"extra_body": {"guided_regex": "a(?=b)"}}, "guided_regex", "look-around"),
        ({"extra_body": {"guided_json": {"type": "integr"}}}, "guided_json", "integr"),
    ],
)
def test_a_schema_that_cannot_compile_is_a_400_naming_it(
    client: openai.OpenAI, options: dict[str, Any], param: str, needle: str
) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        chat(client, "x", **options)
    error = info.value
    assert error.status_code == 400
    assert needle in str(error.message)
    assert error.param == param


def test_stop_string_ends_generation_in_the_model(client: openai.OpenAI) -> None:
    """Same greedy request with and without a stop string: same text up to it, fewer tokens."""
    prompt = "This module provides"
    free = client.completions.create(
        model=DEFAULT_MODEL_NAME, prompt=prompt, max_tokens=120, temperature=0, seed=1
    )
    text = free.choices[0].text
    assert free.usage is not None and free.usage.completion_tokens >= 2, free
    # The stop string comes from the text itself (what a freshly built model writes varies by
    # machine): its first character that differs from the first one, so it first occurs after
    # at least one character of output.
    stop = next((c for c in text if c != text[0]), None)
    assert stop is not None, f"the model wrote one repeated character: {text!r}"
    cut = text.index(stop)
    stopped = client.completions.create(
        model=DEFAULT_MODEL_NAME, prompt=prompt, max_tokens=120, temperature=0, seed=1, stop=[stop]
    )
    assert stopped.choices[0].text == text[:cut]
    assert stopped.choices[0].finish_reason == "stop"
    assert stopped.usage is not None
    # Generation ended on the token that completed the stop string: far fewer than the free run
    # (which went on to end of sequence or max_tokens), and at least the tokens of the text.
    assert stopped.usage.completion_tokens < free.usage.completion_tokens
    assert stopped.usage.completion_tokens >= 1


def test_streamed_and_several_choices_each_validate(client: openai.OpenAI) -> None:
    """n choices share one prefill but each has its own grammar state; streamed deltas add up
    to the same valid JSON."""
    format_ = {
        "type": "json_schema",
        "json_schema": {"name": "person", "schema": PERSON, "strict": True},
    }
    response = chat(
        client, "Two users as JSON.", n=3, seed=4, temperature=1.0, response_format=format_
    )
    assert len(response.choices) == 3
    for choice in response.choices:
        assert choice.finish_reason == "stop"
        jsonschema.validate(json.loads(choice.message.content or ""), PERSON)
    stream = chat(
        client, "A user as JSON.", seed=6, temperature=1.0, response_format=format_, stream=True
    )
    text, reasons = "", []
    for chunk in stream:
        for choice in chunk.choices:
            text += choice.delta.content or ""
            if choice.finish_reason:
                reasons.append(choice.finish_reason)
    assert reasons == ["stop"]
    jsonschema.validate(json.loads(text), PERSON)


async def test_over_grpc_guided_validates_and_a_bad_schema_is_invalid_argument(
    stack: CommonSettings,
) -> None:
    gateway = GatewaySettings()
    channel = grpc_channel(f"{gateway.grpc_host}:{gateway.grpc_port}", resolve_tls())
    stub = pb_grpc.GenerationServiceStub(channel)  # type: ignore[no-untyped-call]
    auth = auth_metadata()
    try:
        ok = await stub.Generate(
            pb.GenerateRequest(
                prompt="A user as JSON:",
                model=DEFAULT_MODEL_NAME,
                max_tokens=160,
                seed=3,
                guided=pb.Guided(kind=pb.Guided.KIND_JSON_SCHEMA, spec=json.dumps(PERSON)),
            ),
            metadata=auth,
            timeout=60,
        )
        assert ok.finish_reason == "stop"
        jsonschema.validate(json.loads(ok.text), PERSON)
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stub.Generate(
                pb.GenerateRequest(
                    prompt="x",
                    model=DEFAULT_MODEL_NAME,
                    guided=pb.Guided(kind=pb.Guided.KIND_REGEX, spec="a(?=b)"),
                ),
                metadata=auth,
                timeout=60,
            )
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "look-around" in (info.value.details() or "")
    finally:
        await channel.close()
