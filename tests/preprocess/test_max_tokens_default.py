"""``max_tokens`` left out (``genwire.request.DEFAULT_MAX_TOKENS``): 64, at least ``min_tokens``,
at most what the context leaves after the prompt (``fit_max_tokens``); never a refusal over a
value the caller did not send. A value the caller sent is checked as it always was."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from genwire_preprocess.handlers import fit_max_tokens
from genwire_preprocess.options import check_options

from genwire.errors import PermanentError
from genwire.request import (
    DEFAULT_MAX_TOKENS,
    MODEL_OPTIONS,
    ErrorCode,
    GenerationRequest,
    fingerprint,
    parse_request,
)


def _request(**fields: object) -> GenerationRequest:
    return GenerationRequest(request_id="mt-1", prompt="a", **fields)  # type: ignore[arg-type]


def test_an_unsent_max_tokens_under_min_tokens_is_raised_to_it_not_refused() -> None:
    """``{"prompt": "a", "min_tokens": 100}`` was refused: 'min_tokens' (100) exceeds
    'max_tokens' (64), a value its caller never sent."""
    request = _request(min_tokens=100)
    assert request.max_tokens == 100 and not request.max_tokens_sent()
    with pytest.raises(PermanentError) as info:  # sent: checked as before
        parse_request(b'{"prompt": "a", "min_tokens": 100, "max_tokens": 64}')
    assert info.value.code == ErrorCode.OUT_OF_RANGE


def test_whether_it_was_sent_survives_the_kafka_hop() -> None:
    for fields, sent in (({}, False), ({"min_tokens": 100}, False), ({"max_tokens": 64}, True)):
        request = _request(**fields)
        _, value = request.to_kafka()
        read = parse_request(value, key=b"mt-1")
        assert read.max_tokens_sent() is sent and read.max_tokens == request.max_tokens
        assert (b'"max_tokens"' in value) is sent
        assert fingerprint(read) == fingerprint(request)


def test_an_unsent_max_tokens_keeps_its_fingerprint() -> None:
    """Fingerprinted as its default, as before: a gateway and a preprocess of either release
    (and a claim made before the change) agree on it."""
    assert fingerprint(_request()) == fingerprint(_request(max_tokens=DEFAULT_MAX_TOKENS))


@pytest.mark.parametrize(
    ("fields", "prompt_tokens", "expected"),
    [
        ({}, 10, 64),  # room to spare: the default
        ({}, 201, 55),  # the audit's 201-token prompt on a 256-token model
        ({}, 255, 1),
        ({"min_tokens": 100}, 10, 100),
        ({"min_tokens": 100}, 150, 100),
        ({"min_tokens": 100}, 100, 100),  # min_tokens is the floor, reached exactly
        ({"max_tokens": 64}, 192, 64),  # sent, and it fits
    ],
)
def test_fit_max_tokens(fields: dict[str, int], prompt_tokens: int, expected: int) -> None:
    assert fit_max_tokens(_request(**fields), prompt_tokens, 256, "m") == expected


@pytest.mark.parametrize(
    ("fields", "prompt_tokens", "names"),
    [
        ({"max_tokens": 64}, 201, "the completion's token limit (64)"),
        ({"min_tokens": 100}, 157, "min_tokens (100)"),
        ({}, 256, "at least 1 token"),
    ],
)
def test_what_does_not_fit_is_refused_about_the_prompt(
    fields: dict[str, int], prompt_tokens: int, names: str
) -> None:
    with pytest.raises(PermanentError) as info:
        fit_max_tokens(_request(**fields), prompt_tokens, 256, "m")
    err = info.value
    assert err.code == ErrorCode.CONTEXT_LENGTH_EXCEEDED and err.param == "prompt"
    assert names in err.message and f"prompt ({prompt_tokens} tokens)" in err.message
    assert "context length of m (256 tokens)" in err.message


def test_a_budget_refusal_says_when_max_tokens_is_the_default() -> None:
    """The budget checks run before the prompt is tokenized, on the default (the most it can
    be): a refusal names the caller's field at fault and says the 64 was not sent."""
    assets = SimpleNamespace(
        name="m", version="1", vocab_size=512, options=frozenset(MODEL_OPTIONS)
    )
    request = _request(n=16, logprobs=True, top_logprobs=20)
    with pytest.raises(PermanentError) as info:
        check_options(request, assets, max_generation_tokens=100_000)  # type: ignore[arg-type]
    assert info.value.param == "top_logprobs"
    assert "max_tokens (64, the default)" in info.value.message
