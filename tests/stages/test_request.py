"""The request model, its packaged JSON Schema and the error code of every kind of bad input."""

from __future__ import annotations

import pytest

from genwire.errors import PermanentError
from genwire.request import (
    ErrorCode,
    GenerationRequest,
    json_schema,
    packaged_schema,
    parse_request,
    request_id_hint,
    validate_request,
)
from genwire.results import result_key


def test_packaged_schema_is_the_models() -> None:
    # Regenerate with: python -m genwire.request > genwire/schemas/request.v2.json
    assert packaged_schema() == json_schema()
    props = packaged_schema()["properties"]
    assert (props["temperature"]["minimum"], props["temperature"]["maximum"]) == (0.0, 2.0)
    assert props["max_tokens"]["minimum"] == 1
    assert packaged_schema()["additionalProperties"] is False


@pytest.mark.parametrize(
    ("raw", "code"),
    [
        (b"not json", ErrorCode.INVALID_JSON),
        (b"[1, 2]", ErrorCode.INVALID_JSON),
        (b'{"prompt": "caf\xe9"}', ErrorCode.INVALID_ENCODING),
        (b"\xff\xfe\x00", ErrorCode.INVALID_ENCODING),
        (b"{}", ErrorCode.MISSING_PROMPT),
        (b'{"prompt": ""}', ErrorCode.MISSING_PROMPT),
        (b'{"messages": []}', ErrorCode.MISSING_PROMPT),
        (b'{"prompt": "a", "messages": [{"role": "user", "content": "b"}]}', "missing_prompt"),
        (b'{"prompt": 42}', ErrorCode.INVALID_REQUEST),
        (b'{"prompt": "a", "max_tokens": "5"}', ErrorCode.INVALID_REQUEST),
        (b'{"prompt": "a", "stream": "yes"}', ErrorCode.INVALID_REQUEST),
        (b'{"prompt": "a", "colour": "red"}', ErrorCode.INVALID_REQUEST),
        (b'{"messages": [{"role": "robot", "content": "x"}]}', ErrorCode.INVALID_REQUEST),
        (
            b'{"prompt": "a", "guided": {"kind": "regex", "spec": "a+", "flags": "i"}}',
            ErrorCode.INVALID_REQUEST,
        ),
        (b'{"prompt": "a", "max_tokens": 0}', ErrorCode.OUT_OF_RANGE),
        (b'{"prompt": "a", "temperature": 2.5}', ErrorCode.OUT_OF_RANGE),
        (b'{"prompt": "a", "top_p": 0}', ErrorCode.OUT_OF_RANGE),
        (b'{"prompt": "a", "top_k": -1}', ErrorCode.OUT_OF_RANGE),
        (b'{"prompt": "a", "seed": -3}', ErrorCode.OUT_OF_RANGE),
        (b'{"prompt": "a", "stop": ["1", "2", "3", "4", "5"]}', ErrorCode.OUT_OF_RANGE),
        (b'{"prompt": "a", "stop": [""]}', ErrorCode.OUT_OF_RANGE),
        (b'{"prompt": "a", "schema_version": 3}', ErrorCode.UNSUPPORTED_SCHEMA_VERSION),
    ],
)
def test_bad_input_gets_its_code(raw: bytes, code: str) -> None:
    with pytest.raises(PermanentError) as info:
        parse_request(raw, key=b"r-1")
    assert info.value.code == code
    assert info.value.message  # a readable reason, never empty


def test_oversize_value_is_rejected_before_parsing() -> None:
    raw = b'{"prompt": "' + b"x" * 2000 + b'"}'
    with pytest.raises(PermanentError) as info:
        parse_request(raw, max_bytes=1000)
    assert info.value.code == ErrorCode.REQUEST_TOO_LARGE
    assert "1000" in info.value.message


def test_key_is_the_request_id() -> None:
    req = parse_request(b'{"prompt": "hi", "request_id": "other"}', key=b"from-key")
    assert req.request_id == "from-key"
    assert parse_request(b'{"prompt": "hi", "request_id": "in-json"}').request_id == "in-json"
    assert parse_request(b'{"prompt": "hi"}', fallback_id="anon-0-7").request_id == "anon-0-7"
    with pytest.raises(PermanentError) as info:
        parse_request(b'{"prompt": "hi"}', key=b"has space")
    assert info.value.code == ErrorCode.INVALID_REQUEST


@pytest.mark.parametrize("in_json", ['"bad id"', '""', '"x' + "y" * 200 + '"', "5", "null"])
def test_a_valid_key_wins_over_a_bad_request_id_in_the_json(in_json: str) -> None:
    """docs/stages.md: the key wins over the JSON, so the JSON's own id is never validated."""
    raw = b'{"prompt": "x", "request_id": ' + in_json.encode() + b', "max_tokens": 3}'
    req = parse_request(raw, key=b"ok-id")
    assert (req.request_id, req.prompt, req.max_tokens) == ("ok-id", "x", 3)
    # Without a key, or with a bad one, the JSON's id is the request's and is refused.
    if in_json != "null":
        for key in (None, b"has space"):
            with pytest.raises(PermanentError) as info:
                parse_request(raw, key=key)
            assert info.value.code == ErrorCode.INVALID_REQUEST
    # Other faults are still reported, without the overridden id.
    with pytest.raises(PermanentError) as bad:
        parse_request(b'{"prompt": "x", "request_id": "bad id", "temperature": 9}', key=b"ok-id")
    assert bad.value.code == ErrorCode.OUT_OF_RANGE and bad.value.param == "temperature"


def test_defaults_and_stop_forms() -> None:
    req = parse_request(b'{"prompt": "hi", "stop": "\\n", "temperature": 0}')
    assert (req.max_tokens, req.temperature, req.top_p, req.top_k) == (64, 0.0, 1.0, 0)
    assert req.seed is None and req.stream is False and req.schema_version == 1
    assert req.stop_list() == ["\n"]
    assert GenerationRequest(prompt="x", stop=["a", "b"]).stop_list() == ["a", "b"]


def test_to_kafka_round_trips() -> None:
    req = GenerationRequest(request_id="abc", prompt="hi", max_tokens=5, stream=True)
    key, value = req.to_kafka()
    assert key == b"abc"
    assert parse_request(value, key=key) == req
    with pytest.raises(ValueError, match="request_id"):
        GenerationRequest(prompt="hi").to_kafka()


def test_request_id_hint_survives_garbage() -> None:
    assert request_id_hint(b"\xff\xfe", b"k1") == "k1"
    assert request_id_hint(b'{"request_id": "j1", "prompt": 3}', None) == "j1"
    assert request_id_hint(b"not json", None) is None
    assert request_id_hint(b"[1]", None) is None
    assert result_key("abc") == "genwire:result:abc"


def test_request_id_hint_is_always_encodable() -> None:
    """A lone surrogate escape in the JSON (json.loads takes it) becomes U+FFFD, as invalid
    UTF-8 in a key does: the error result addressed to it can be published."""
    assert request_id_hint(b'{"request_id": "\\udfff", "prompt": "x"}', None) == "\ufffd"
    assert request_id_hint(b'{"request_id": "a\\ud83d\\ude00"}', None) == "a\U0001f600"
    assert request_id_hint(b"{}", b"k\xff") == "k\ufffd"


@pytest.mark.parametrize(
    "bias", ['{"01": 5, "1": -100}', '{"1": -100, "01": 5}', '{"7": 1, "007": 1}']
)
def test_two_logit_bias_keys_for_one_token_are_refused(bias: str) -> None:
    """Either would silently replace the other (which one: the order), fingerprint included."""
    with pytest.raises(PermanentError) as info:
        parse_request(f'{{"prompt": "x", "logit_bias": {bias}}}'.encode())
    assert info.value.code == ErrorCode.INVALID_REQUEST and info.value.param == "logit_bias"
    assert "twice" in info.value.message
    with pytest.raises(PermanentError):
        validate_request({"request_id": "b", "prompt": "x", "logit_bias": {"01": 5, "1": 5}})
    ok = parse_request(b'{"prompt": "x", "logit_bias": {"1": 5, "10": -1, "0": 2}}')
    assert ok.logit_bias_ids() == {1: 5.0, 10: -1.0, 0: 2.0}


@pytest.mark.parametrize(
    ("version", "code"),
    [
        ("true", ErrorCode.INVALID_REQUEST),
        ("false", ErrorCode.INVALID_REQUEST),
        ("2.0", ErrorCode.INVALID_REQUEST),
        ("1.0", ErrorCode.INVALID_REQUEST),
        ('"2"', ErrorCode.INVALID_REQUEST),
        ("3", ErrorCode.UNSUPPORTED_SCHEMA_VERSION),
    ],
)
def test_schema_version_is_a_strict_integer(version: str, code: str) -> None:
    with pytest.raises(PermanentError) as info:
        parse_request(f'{{"prompt": "x", "schema_version": {version}}}'.encode())
    assert info.value.code == code and info.value.param == "schema_version"
    with pytest.raises(PermanentError):
        validate_request({"request_id": "v", "prompt": "x", "schema_version": True})
    assert parse_request(b'{"prompt": "x", "schema_version": 2}').schema_version == 2
    assert parse_request(b'{"prompt": "x", "schema_version": 1}').schema_version == 1
