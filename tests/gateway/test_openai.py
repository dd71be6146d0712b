"""OpenAI-compatible mapping: bodies to genwire fields, results to responses, SSE chunks."""

from __future__ import annotations

import json
from typing import Any

import pytest
from genwire_gateway import openai
from genwire_gateway.errors import GatewayError

from genwire.events import GenerationResult, OutputLogprob, Timings, TopLogprob, Usage
from genwire.request import MAX_GUIDED_CHARS, MAX_METADATA, ErrorCode


def test_completion_body_maps_to_request_fields() -> None:
    body = openai.parse_body(
        openai.CompletionRequest,
        json.dumps(
            {
                "model": "m",
                "prompt": ["hello"],
                "max_tokens": 5,
                "temperature": 0,
                "stop": "\n",
                "seed": 3,
                "top_k": 4,
                "user": "ignored",
                "presence_penalty": 0,
            }
        ).encode(),
    )
    fields = body.fields()
    assert body.prompts() == [{"prompt": "hello"}]
    assert (fields["max_tokens"], fields["temperature"], fields["stop"]) == (5, 0, "\n")
    assert (fields["seed"], fields["top_k"], fields["model"]) == (3, 4, "m")
    assert "top_p" not in fields  # unset: the pipeline's default applies
    assert fields["metadata"] == {"user": "ignored"}  # carried to the result, not dropped
    assert fields["presence_penalty"] == 0


def test_chat_body_maps_roles_parts_and_max_completion_tokens() -> None:
    body = openai.parse_body(
        openai.ChatCompletionRequest,
        json.dumps(
            {
                "messages": [
                    {"role": "developer", "content": "be brief"},
                    {
                        "role": "user",
                        "content": [
                            {"type": "text", "text": "hi "},
                            {"type": "text", "text": "there"},
                        ],
                    },
                ],
                "max_completion_tokens": 7,
                "stream": True,
                "stream_options": {"include_usage": True},
            }
        ).encode(),
    )
    fields = body.fields()
    assert fields["messages"] == [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "hi there"},
    ]
    assert fields["max_tokens"] == 7
    assert body.stream and body.include_usage


@pytest.mark.parametrize(
    ("raw", "code"),
    [
        (b"not json", "invalid_json"),
        (b'{"prompt": 5}', "invalid_request"),
        (b'{"prompt": "x", "max_tokens": "5"}', "invalid_request"),
        (b'{"prompt": []}', "missing_prompt"),
        (b'{"prompt": "x", "suffix": "y"}', "unsupported_parameter"),
        (b'{"prompt": "x", "best_of": 3}', "unsupported_parameter"),
        (b'{"prompt": "x", "echo": true, "logprobs": 1}', "unsupported_parameter"),
        (b'{"prompt": [1, 2], "echo": true}', "unsupported_parameter"),
        (b'{"prompt": "x", "logprobs": 21}', "out_of_range"),
        (b'{"prompt": "x", "colour": "red"}', "unsupported_parameter"),
        (b'{"prompt": "x", "guided_regex": "a", "guided_choice": ["a"]}', "invalid_request"),
        (b'{"prompt": "x", "stream_options": {"include_usage": true}}', "invalid_request"),
    ],
)
def test_malformed_completion_bodies_are_rejected_with_a_code(raw: bytes, code: str) -> None:
    with pytest.raises(GatewayError) as info:
        body = openai.parse_body(openai.CompletionRequest, raw)
        body.fields()
        body.prompts()
    assert info.value.code == code


def test_batches_token_ids_echo_logprobs_and_guided_map_to_fields() -> None:
    body = openai.parse_body(
        openai.CompletionRequest,
        b'{"prompt": ["a", "b"], "n": 2, "logprobs": 3, "best_of": 2,'
        b' "response_format": {"type": "json_object"}}',
    )
    fields = body.fields()
    assert body.prompts() == [{"prompt": "a"}, {"prompt": "b"}]
    assert (fields["n"], fields["logprobs"], fields["top_logprobs"]) == (2, True, 3)
    assert fields["guided"] == {"kind": "json_object", "spec": ""}
    ids = openai.parse_body(openai.CompletionRequest, b'{"prompt": [[1, 2], [3]]}')
    assert ids.prompts() == [{"prompt_token_ids": [1, 2]}, {"prompt_token_ids": [3]}]
    one = openai.parse_body(openai.CompletionRequest, b'{"prompt": [5, 6]}')
    assert one.prompts() == [{"prompt_token_ids": [5, 6]}]


@pytest.mark.parametrize("kind", ["text", "json_object"])
def test_a_json_schema_beside_another_response_format_type_is_refused(kind: str) -> None:
    """Not dropped: a schema sent with ``type: text`` or ``json_object`` would go unenforced."""
    fmt = {"type": kind, "json_schema": {"name": "s", "schema": {"type": "array"}}}
    body = openai.parse_body(
        openai.ChatCompletionRequest,
        json.dumps(
            {"messages": [{"role": "user", "content": "hi"}], "response_format": fmt}
        ).encode(),
    )
    with pytest.raises(GatewayError) as info:
        body.fields()
    assert info.value.code == ErrorCode.INVALID_REQUEST
    assert info.value.param == "response_format.json_schema"
    assert f"not '{kind}'" in info.value.message
    del fmt["json_schema"]  # the type alone is served as before
    body = openai.parse_body(
        openai.ChatCompletionRequest,
        json.dumps(
            {"messages": [{"role": "user", "content": "hi"}], "response_format": fmt}
        ).encode(),
    )
    assert body.fields().get("guided") == (
        {"kind": "json_object", "spec": ""} if kind == "json_object" else None
    )


@pytest.mark.parametrize(
    ("extra", "ours", "param"),
    [
        ({"response_format": {"type": "json_object"}}, "guided", "response_format"),
        ({"guided_json": {"type": "object"}}, "response_format", "guided_json"),
        ({"guided_choice": ["a", "b"]}, "guided_choice", "guided_choice"),
        ({"guided_regex": "[a-z]+"}, "guided", "guided_regex"),
        ({"max_completion_tokens": 9}, "max_tokens", "max_completion_tokens"),
        ({"max_tokens": 9}, "max_tokens", "max_tokens"),
        ({}, "presence_penalty", "presence_penalty"),
    ],
)
def test_an_error_names_the_field_the_caller_sent(
    extra: dict[str, Any], ours: str, param: str
) -> None:
    """The pipeline names its own fields (guided, max_tokens; preprocess the OpenAI name of
    the constraint's kind): the HTTP caller gets the field it sent."""
    body = openai.parse_body(
        openai.ChatCompletionRequest,
        json.dumps({"messages": [{"role": "user", "content": "hi"}], **extra}).encode(),
    )
    assert body.caller_param(ours) == param
    assert body.caller_param(None) is None


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"response_format": {"type": "json_schema", "json_schema": {"name": "s"}}}, "schema"),
        ({"guided_json": {}}, "guided_json"),
        ({"guided_regex": ""}, "guided_regex"),
    ],
)
def test_a_too_large_structured_output_spec_names_the_field_the_caller_gave(
    extra: dict[str, Any], param: str
) -> None:
    big = {f"p{i}": {"type": "string", "description": "x" * 64} for i in range(1200)}
    if param == "schema":
        extra["response_format"]["json_schema"]["schema"] = {"properties": big}
        param = "response_format"
    elif param == "guided_json":
        extra[param] = {"properties": big}
    else:
        extra[param] = "a" * (MAX_GUIDED_CHARS + 1)
    body = openai.parse_body(
        openai.ChatCompletionRequest,
        json.dumps({"messages": [{"role": "user", "content": "hi"}], **extra}).encode(),
    )
    with pytest.raises(GatewayError) as info:
        body.fields()
    assert info.value.code == ErrorCode.OUT_OF_RANGE and info.value.param == param
    assert f"'{param}'" in info.value.message and str(MAX_GUIDED_CHARS) in info.value.message


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"tools": [{"type": "function", "function": {"name": "f"}}]}, "tools"),
        ({"tool_choice": "auto"}, "tool_choice"),
        ({"functions": [{"name": "f"}]}, "functions"),
        ({"audio": {"voice": "alloy", "format": "wav"}}, "audio"),
        ({"modalities": ["text", "audio"]}, "modalities"),
        ({"store": True}, "store"),
        ({"reasoning_effort": "low"}, "reasoning_effort"),
        ({"service_tier": "flex"}, "service_tier"),
        ({"prediction": {"type": "content", "content": "x"}}, "prediction"),
        ({"web_search_options": {}}, "web_search_options"),
        ({"parallel_tool_calls": True}, "parallel_tool_calls"),
        ({"some_future_parameter": 1}, "some_future_parameter"),
    ],
)
def test_chat_parameters_genwire_cannot_honour_are_refused_by_name(
    extra: dict[str, object], param: str
) -> None:
    raw = json.dumps({"messages": [{"role": "user", "content": "x"}], **extra}).encode()
    with pytest.raises(GatewayError) as info:
        openai.parse_body(openai.ChatCompletionRequest, raw).fields()
    assert info.value.code == "unsupported_parameter"
    assert info.value.param == param and param in info.value.message


def test_chat_rejects_unknown_roles() -> None:
    with pytest.raises(GatewayError):
        openai.parse_body(
            openai.ChatCompletionRequest, b'{"messages": [{"role": "tool", "content": "x"}]}'
        )


def _result() -> GenerationResult:
    return GenerationResult(
        request_id="r1",
        model="genwire-gpt",
        text="hello",
        finish_reason="length",
        usage=Usage(prompt_tokens=3, completion_tokens=2, total_tokens=5),
    )


def test_completion_and_chat_responses_follow_openai() -> None:
    completion = openai.completion_response(_result(), created=1, model="genwire-gpt:5")
    assert completion["id"] == "cmpl-r1" and completion["object"] == "text_completion"
    assert completion["choices"][0]["text"] == "hello"
    assert completion["choices"][0]["finish_reason"] == "length"
    assert completion["usage"] == {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}
    chat = openai.chat_response(_result(), created=1, model="genwire-gpt:5")
    assert chat["object"] == "chat.completion"
    assert chat["choices"][0]["message"] == {"role": "assistant", "content": "hello"}
    # The name the caller asked for, as every stream chunk says, not the result's.
    assert completion["model"] == chat["model"] == "genwire-gpt:5"


def test_sse_frames_are_data_lines_ending_in_a_blank_line() -> None:
    frame = openai.sse(openai.chat_chunk("r", created=1, model="m", delta={"content": "a b"}))
    assert frame.startswith(b"data: {") and frame.endswith(b"}\n\n")
    payload = json.loads(frame[len(b"data: ") :])
    assert payload["object"] == "chat.completion.chunk"
    assert payload["choices"][0]["delta"] == {"content": "a b"}
    assert openai.SSE_DONE == b"data: [DONE]\n\n"


def test_usage_chunk_has_no_choices() -> None:
    chunk = openai.usage_chunk(
        "r", chat=False, created=1, model="m", usage=Usage(prompt_tokens=1, completion_tokens=2)
    )
    assert chunk["choices"] == [] and chunk["usage"]["total_tokens"] == 3


def test_error_body_is_openai_shaped() -> None:
    body = openai.error_body("out_of_range", "temperature too high", 400)
    assert body == {
        "error": {
            "message": "temperature too high",
            "type": "invalid_request_error",
            "param": None,
            "code": "out_of_range",
        }
    }


def test_unknown_routes_and_wrong_methods_answer_in_openai_shape() -> None:
    from fastapi import FastAPI
    from fastapi.testclient import TestClient
    from genwire_gateway.http_api import install_error_handlers

    app = FastAPI()

    @app.post("/v1/completions")
    async def completions() -> dict[str, str]:
        return {}

    install_error_handlers(app)
    client = TestClient(app)
    missing = client.get("/v1/nothing")
    assert missing.status_code == 404
    assert missing.json()["error"]["code"] == "not_found"
    assert missing.json()["error"]["type"] == "not_found_error"
    wrong = client.get("/v1/completions")
    assert wrong.status_code == 405 and wrong.headers["allow"] == "POST"
    error = wrong.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["code"] == "method_not_allowed" and "POST" in error["message"]


def test_the_request_clock_counts_once_and_moves_between_gauges() -> None:
    from genwire_gateway.telemetry import GatewayMetrics
    from prometheus_client import CollectorRegistry

    from genwire.events import Timings

    registry = CollectorRegistry()
    metrics = GatewayMetrics(registry)

    def value(name: str, **labels: str) -> float:
        got = registry.get_sample_value(name, {"entrypoint": "http", **labels})
        return got or 0.0

    clock = metrics.clock("http")
    assert value("genwire_gateway_num_requests_waiting") == 1
    clock.piece()
    assert value("genwire_gateway_num_requests_waiting") == 0
    assert value("genwire_gateway_num_requests_running") == 1
    clock.piece(4)
    result = GenerationResult(
        request_id="r", finish_reason="stop", usage=Usage(prompt_tokens=3, completion_tokens=5)
    )
    clock.finish(result)
    clock.finish(None)  # a second end (the stream's finally) changes nothing
    assert value("genwire_gateway_num_requests_running") == 0
    assert value("genwire_gateway_time_to_first_token_seconds_count") == 1
    assert value("genwire_gateway_inter_token_latency_seconds_count") == 1
    assert value("genwire_gateway_generation_tokens_total") == 5
    assert value("genwire_gateway_request_success_total", finished_reason="stop") == 1
    unary = metrics.clock("http")
    timed = result.model_copy(
        update={"timings": Timings(received=1000.0, first_token=1250.0), "finish_reason": "odd"}
    )
    unary.finish(timed, unary=True)
    assert value("genwire_gateway_time_to_first_token_seconds_count") == 2
    assert value("genwire_gateway_time_to_first_token_seconds_sum") >= 0.25
    assert value("genwire_gateway_request_success_total", finished_reason="other") == 1
    failed = metrics.clock("http")
    failed.finish(None)
    assert value("genwire_gateway_num_requests_waiting") == 0
    assert value("genwire_gateway_e2e_request_latency_seconds_count") == 2
    # n > 1: the first piece of any choice is the first token; only choice 0's gaps count.
    choices = metrics.clock("http")
    for choice in (1, 0, 2, 1, 0, 2):
        choices.piece(1, choice)
    assert value("genwire_gateway_time_to_first_token_seconds_count") == 3
    assert value("genwire_gateway_inter_token_latency_seconds_count") == 3  # 2 before: +1


def test_server_timing_names_the_models_own_time_of_the_slowest_result() -> None:
    from genwire_gateway.http_api import server_timing

    def result(queue: float | None, compute: float | None) -> GenerationResult:
        timings = Timings(triton_queue_ms=queue, triton_compute_ms=compute)
        return GenerationResult(request_id="r", text="x", timings=timings)

    assert server_timing([result(0.5, 30.0)]) == "model-queue;dur=0.500, model-compute;dur=30.000"
    # A batch of prompts: the result that spent the longest at the model (2 + 40 > 9 + 30).
    batch = [result(9.0, 30.0), result(2.0, 40.0), result(None, 90.0)]
    assert server_timing(batch) == "model-queue;dur=2.000, model-compute;dur=40.000"
    # No result with both (a model that does not report them): no header.
    assert server_timing([result(None, 30.0), result(1.0, None)]) == ""


def _chat(**extra: Any) -> openai.ChatCompletionRequest:
    raw = json.dumps({"messages": [{"role": "user", "content": "hi"}], **extra}).encode()
    body: openai.ChatCompletionRequest = openai.parse_body(openai.ChatCompletionRequest, raw)
    return body


@pytest.mark.parametrize("field", ["user", "safety_identifier"])
def test_a_label_field_that_clashes_with_the_callers_metadata_is_refused_by_name(
    field: str,
) -> None:
    """Never overwritten: the caller's own metadata key of the same name keeps its value or
    the request is refused; the same value in both is one label."""
    with pytest.raises(GatewayError) as info:
        _chat(**{field: "B", "metadata": {field: "A", "team": "x"}}).fields()
    assert info.value.code == ErrorCode.INVALID_REQUEST and info.value.param == field
    assert f"metadata.{field}" in info.value.message
    same = _chat(**{field: "A", "metadata": {field: "A", "team": "x"}}).fields()
    assert same["metadata"] == {field: "A", "team": "x"}


@pytest.mark.parametrize("field", ["user", "safety_identifier"])
def test_a_label_field_over_a_metadata_limit_is_refused_by_its_own_name(field: str) -> None:
    """It travels as metadata.<field>: the error names the field the caller sent and says
    it counts as metadata, instead of blaming a ``metadata`` the caller may not have sent."""
    full = {f"k{i}": "v" for i in range(MAX_METADATA)}
    with pytest.raises(GatewayError) as info:
        _chat(**{field: "u", "metadata": full}).fields()
    assert info.value.param == field and info.value.code == ErrorCode.INVALID_REQUEST
    assert f"metadata.{field}" in info.value.message and str(MAX_METADATA) in info.value.message
    with pytest.raises(GatewayError) as info:
        _chat(**{field: "u" * 513}).fields()
    assert info.value.param == field and info.value.code == ErrorCode.INVALID_REQUEST
    assert f"metadata.{field}" in info.value.message and "512" in info.value.message
    # The caller's own excess stays its own error (the request schema names ``metadata``).
    over = {f"k{i}": "v" for i in range(MAX_METADATA + 1)}
    assert _chat(**{field: "u", "metadata": over}).fields()["metadata"][field] == "u"


def test_max_tokens_beside_a_different_max_completion_tokens_is_refused() -> None:
    with pytest.raises(GatewayError) as info:
        _chat(max_tokens=5, max_completion_tokens=9).fields()
    assert info.value.code == ErrorCode.INVALID_REQUEST and info.value.param == "max_tokens"
    assert "max_completion_tokens" in info.value.message
    both = _chat(max_tokens=9, max_completion_tokens=9)
    assert both.fields()["max_tokens"] == 9
    assert both.caller_param("max_tokens") == "max_tokens"  # the caller sent that name too


@pytest.mark.parametrize("raw", [b"[]", b"null", b"5", b'"s"', b"[1, 2]", b"true"])
def test_a_body_that_is_not_a_json_object_is_invalid_json(raw: bytes) -> None:
    for model in (openai.CompletionRequest, openai.ChatCompletionRequest):
        with pytest.raises(GatewayError) as info:
            openai.parse_body(model, raw)
        assert info.value.code == ErrorCode.INVALID_JSON


@pytest.mark.parametrize(
    ("model", "raw", "param"),
    [
        (openai.CompletionRequest, b"{}", "prompt"),
        (openai.CompletionRequest, b'{"prompt": null}', "prompt"),
        (openai.CompletionRequest, b'{"prompt": null, "temperature": "hot"}', "prompt"),
        (openai.ChatCompletionRequest, b"{}", "messages"),
        (openai.ChatCompletionRequest, b'{"messages": null}', "messages"),
    ],
)
def test_a_missing_or_null_prompt_is_missing_prompt(
    model: type[openai.CompletionRequest] | type[openai.ChatCompletionRequest],
    raw: bytes,
    param: str,
) -> None:
    with pytest.raises(GatewayError) as info:
        openai.parse_body(model, raw)
    assert info.value.code == ErrorCode.MISSING_PROMPT and info.value.param == param


@pytest.mark.parametrize(
    "raw",
    [b'{"prompt": [null]}', b'{"messages": [null]}', b'{"prompt": 5}'],
)
def test_a_malformed_prompt_stays_invalid_request(raw: bytes) -> None:
    """Only an absent or null prompt is missing: a null item of a list is a wrong type."""
    model = openai.ChatCompletionRequest if b"messages" in raw else openai.CompletionRequest
    with pytest.raises(GatewayError) as info:
        openai.parse_body(model, raw)
    assert info.value.code == ErrorCode.INVALID_REQUEST


@pytest.mark.parametrize("prompt", [[[]], [[1], []]])
def test_an_empty_token_id_prompt_is_missing_prompt_named_prompt(prompt: list[Any]) -> None:
    body = openai.parse_body(openai.CompletionRequest, json.dumps({"prompt": prompt}).encode())
    with pytest.raises(GatewayError) as info:
        body.prompts()
    # A batch's prompt by its place in it (a batch of one: the prompt).
    named = "prompt" if len(prompt) == 1 else f"prompt[{len(prompt) - 1}]"
    assert info.value.code == ErrorCode.MISSING_PROMPT and info.value.param == named
    assert body.caller_param("prompt_token_ids") == "prompt"  # the pipeline's name for them


def test_with_include_usage_every_chunk_but_the_last_says_usage_null() -> None:
    common: dict[str, Any] = {"created": 1, "model": "m"}
    assert "usage" not in openai.completion_chunk("r", text="a", **common)
    assert "usage" not in openai.chat_chunk("r", delta={"content": "a"}, **common)
    with_usage = openai.completion_chunk("r", text="a", usage_null=True, **common)
    assert with_usage["usage"] is None and with_usage["choices"][0]["text"] == "a"
    chat = openai.chat_chunk("r", delta={"content": "a"}, usage_null=True, **common)
    assert chat["usage"] is None and chat["choices"][0]["delta"] == {"content": "a"}


# -- error params and messages in the caller's terms -------------------------------------------


@pytest.mark.parametrize(
    ("model", "body", "param", "message"),
    [
        (
            openai.ChatCompletionRequest,
            {
                "messages": [
                    {"role": "user", "content": "hi"},
                    {"role": "assistant", "content": None},
                ]
            },
            "messages[1].content",
            "messages[1].content: Input should be a valid string or a valid array",
        ),
        (
            openai.CompletionRequest,
            {"prompt": ["ok", 5]},
            "prompt[1]",
            "prompt[1]: Input should be a valid string",
        ),
        (
            openai.CompletionRequest,
            {"prompt": "x", "stop": 5},
            "stop",
            "stop: Input should be a valid string or a valid array",
        ),
        (
            openai.CompletionRequest,
            {"prompt": "x", "logit_bias": {"12": "a"}},
            "logit_bias.12",
            "logit_bias.12: Input should be a valid number",
        ),
    ],
)
def test_validation_errors_name_the_callers_fields_not_union_members(
    model: type[openai.CompletionRequest] | type[openai.ChatCompletionRequest],
    body: dict[str, Any],
    param: str,
    message: str,
) -> None:
    with pytest.raises(GatewayError) as info:
        openai.parse_body(model, json.dumps(body).encode())
    assert info.value.code == ErrorCode.INVALID_REQUEST
    assert (info.value.param, info.value.message) == (param, message)


def test_a_non_text_content_part_is_unsupported_naming_its_type() -> None:
    part = {"type": "input_audio", "input_audio": {"data": "", "format": "wav"}}
    raw = json.dumps({"messages": [{"role": "user", "content": [part]}]}).encode()
    with pytest.raises(GatewayError) as info:
        openai.parse_body(openai.ChatCompletionRequest, raw)
    assert info.value.code == ErrorCode.UNSUPPORTED_PARAMETER
    assert info.value.param == "messages[0].content[0].type"
    assert "'input_audio'" in info.value.message and "ContentPart" not in info.value.message


def test_an_unknown_key_of_a_text_part_is_named_in_the_callers_terms() -> None:
    part = {"type": "text", "text": "a", "cache_control": {}}
    raw = json.dumps({"messages": [{"role": "user", "content": [part]}]}).encode()
    with pytest.raises(GatewayError) as info:
        openai.parse_body(openai.ChatCompletionRequest, raw)
    assert info.value.code == ErrorCode.UNSUPPORTED_PARAMETER
    assert info.value.param == "messages[0].content[0].cache_control"


def test_a_lone_surrogate_escape_is_named() -> None:
    with pytest.raises(GatewayError) as info:
        openai.parse_body(openai.CompletionRequest, b'{"prompt": "\\ud800"}')
    assert info.value.code == ErrorCode.INVALID_JSON
    assert "surrogate" in info.value.message and "not a JSON object" not in info.value.message


def test_broken_json_says_where_not_that_it_is_no_object() -> None:
    with pytest.raises(GatewayError) as info:
        openai.parse_body(openai.CompletionRequest, b'{"prompt": "x",}')
    assert info.value.code == ErrorCode.INVALID_JSON
    assert "line 1 column" in info.value.message


def test_a_utf8_byte_order_mark_is_ignored() -> None:
    body = openai.parse_body(openai.CompletionRequest, b'\xef\xbb\xbf{"prompt": "x"}')
    assert body.prompts() == [{"prompt": "x"}]


# -- completions logprobs ------------------------------------------------------------------------


def _step(token: str, logprob: float, top: list[tuple[str, float]]) -> OutputLogprob:
    return OutputLogprob(
        token=token,
        token_id=1,
        logprob=logprob,
        top=[TopLogprob(token=t, token_id=2, logprob=lp) for t, lp in top],
    )


def test_completion_top_logprobs_hold_the_sampled_token() -> None:
    steps = [
        _step("a", -0.1, []),  # logprobs: 0
        _step("b", -3.0, [("c", -0.2)]),  # sampled outside the top 1
        _step("c", -0.2, [("c", -0.2), ("d", -1.9)]),  # sampled among them: no extra entry
        _step("\ufffd", -2.5, [("\ufffd", -0.7)]),  # another byte token decoding alike
    ]
    lp = openai.completion_logprobs(steps)
    assert lp is not None
    assert lp["top_logprobs"] == [
        {"a": -0.1},
        {"c": -0.2, "b": -3.0},
        {"c": -0.2, "d": -1.9},
        {"\ufffd": -2.5},  # the sampled token's own logprob under its text
    ]


def test_chat_top_logprobs_stay_the_top_k() -> None:
    lp = openai.chat_logprobs([_step("b", -3.0, [("c", -0.2)])])
    assert lp is not None
    assert [t["token"] for t in lp["content"][0]["top_logprobs"]] == ["c"]
