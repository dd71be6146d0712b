"""A failed streamed request with ``n > 1`` ends every choice's stream on genwire.tokens
(docs/api.md *Streaming*: each choice's stream ends with its own final TokenEvent): a refusal
in preprocess (its ``n`` read from the raw JSON) and an inference failure after pieces of
every choice were streamed (its ``n`` from the streams' state)."""

from __future__ import annotations

import json

import pytest
from genwire_postprocess.handlers import Postprocessor, failure_result
from genwire_preprocess.handlers import error_chunk
from tokenizers import Tokenizer

from genwire.errors import PermanentError
from genwire.events import (
    ErrorInfo,
    Event,
    GenerationChunk,
    GenerationResult,
    Sampling,
    TokenEvent,
)
from genwire.request import ErrorCode

MODEL = "genwire-gpt"


def _tokens(events: list[Event]) -> list[TokenEvent]:
    return [e for e in events if isinstance(e, TokenEvent)]


def _refused(body: dict[str, object], rid: str) -> GenerationChunk:
    raw = json.dumps(body).encode()
    err = PermanentError("'logit_bias' names token id 999999", code=ErrorCode.OUT_OF_RANGE)
    (chunk,) = error_chunk(raw, rid.encode(), err)
    return chunk


@pytest.mark.parametrize("n", [1, 2, 3])
async def test_a_refused_streamed_request_ends_every_choice(post: Postprocessor, n: int) -> None:
    body = {"prompt": "x", "stream": True, "n": n, "max_tokens": 4, "logit_bias": {"999999": 1}}
    events = await post.handle(_refused(body, f"ref{n}"))
    tokens = _tokens(events)
    assert [t.choice for t in tokens] == list(range(n))
    assert all(t.final and t.finish_reason == "error" and t.text == "" for t in tokens)
    assert all(t.index == 0 and t.text_offset == 0 for t in tokens)
    (result,) = [e for e in events if isinstance(e, GenerationResult)]
    assert result.error is not None and result.error.code == ErrorCode.OUT_OF_RANGE
    assert result.choices == []  # an error result: no choices
    assert post.streams == {}


@pytest.mark.parametrize("n", [0, 17, -2, True, "2", 2.0, None])
async def test_an_invalid_n_ends_choice_0_alone(post: Postprocessor, n: object) -> None:
    events = await post.handle(_refused({"prompt": "x", "stream": True, "n": n}, "badn"))
    assert [(t.choice, t.final) for t in _tokens(events)] == [(0, True)]


def test_an_oversize_refused_value_still_says_its_n() -> None:
    """Too large to parse again: ``n`` is read from the raw JSON (the last key wins; a prompt
    cannot fake one; one too long to be valid is 1)."""
    prompt = "x" * (1024 * 1024) + ' {"n": 9}, "n": 7'  # escaped in the JSON: no key
    err = PermanentError("too large", code=ErrorCode.REQUEST_TOO_LARGE)
    for n, want in ((3, 3), (16, 16), (17, 1), (0, 1)):
        raw = json.dumps({"prompt": prompt, "stream": True, "n": n}).encode()
        (chunk,) = error_chunk(raw, b"big", err)
        assert len(chunk.choices or [None]) == want and chunk.stream
    raw = b'{"prompt": "' + b"y" * (1 << 20) + b'", "n": ' + b"2" * 5000 + b"}"
    (chunk,) = error_chunk(raw, b"big", err)
    assert chunk.choices is None


async def test_an_inference_failure_midway_ends_every_choice(
    post: Postprocessor, tokenizer: Tokenizer
) -> None:
    """Pieces of both choices were streamed; inference then fails (its error chunk carries no
    sampling and no choices): each choice's stream ends, its index and offset contiguous."""
    texts = ["The quick brown fox jumps", "Grüße aus Köln und mehr"]
    sampling = Sampling(n=2)
    events: list[Event] = []
    for c, text in enumerate(texts):
        ids = tokenizer.encode(text).ids
        for i in range(0, len(ids), 2):
            events += await post.handle(
                GenerationChunk(
                    request_id="mid",
                    index=i // 2,
                    offset=i,
                    choice=c,
                    token_ids=ids[i : i + 2],
                    stream=True,
                    model=MODEL,
                    model_version="2",
                    sampling=sampling if i == 0 else None,
                )
            )
    streamed = _tokens(events)
    assert {t.choice for t in streamed} == {0, 1} and not any(t.final for t in streamed)
    failure = GenerationChunk(  # inference's failure_chunk
        request_id="mid",
        index=0,
        final=True,
        stream=True,
        model=MODEL,
        finish_reason="error",
        error=ErrorInfo(code="internal", message="triton: boom"),
    )
    finals = _tokens(await post.handle(failure))
    assert [t.choice for t in finals] == [0, 1]
    for c in (0, 1):
        mine = [t for t in streamed if t.choice == c]
        (last,) = [t for t in finals if t.choice == c]
        assert last.final and last.finish_reason == "error" and last.text == ""
        assert last.index == len(mine)  # contiguous after the streamed pieces
        assert last.text_offset == sum(len(t.text) for t in mine)  # where the stream ended
        assert [t.index for t in [*mine, last]] == list(range(len(mine) + 1))
    assert post.streams == {} and not post._blind  # every choice's state released


async def test_a_single_choice_failure_is_unchanged(post: Postprocessor) -> None:
    failure = GenerationChunk(
        request_id="one",
        index=0,
        final=True,
        stream=True,
        finish_reason="error",
        error=ErrorInfo(code="internal", message="boom"),
    )
    tokens = _tokens(await post.handle(failure))
    assert [(t.choice, t.index, t.final, t.finish_reason) for t in tokens] == [
        (0, 0, True, "error")
    ]


def test_a_postprocess_failure_ends_every_choice() -> None:
    err = PermanentError("redis down", code="unavailable")
    events = failure_result("r", err, stream=True, n=2)
    assert [(t.choice, t.final) for t in _tokens(events)] == [(0, True), (1, True)]
    assert [t.choice for t in _tokens(failure_result("r", err, stream=True))] == [0]


async def test_a_conflicting_request_leaves_the_first_ones_streams_alone(
    post: Postprocessor, tokenizer: Tokenizer
) -> None:
    """A different body under an id still streaming (preprocess's ``idempotency_conflict``
    final chunk) ends none of that id's streams: they are the first request's."""
    ids = tokenizer.encode("The quick brown fox jumps over").ids
    for c in (0, 1):
        await post.handle(
            GenerationChunk(
                request_id="orig",
                index=0,
                offset=0,
                choice=c,
                token_ids=ids[:2],
                stream=True,
                model=MODEL,
                model_version="2",
                sampling=Sampling(n=2),
            )
        )
    conflict = GenerationChunk(
        request_id="orig",
        index=0,
        final=True,
        stream=True,
        model=MODEL,
        finish_reason="error",
        error=ErrorInfo(code=ErrorCode.IDEMPOTENCY_CONFLICT, message="another body"),
    )
    events = await post.handle(conflict)
    assert _tokens(events) == []
    assert set(post.streams) == {"orig", "orig\x001"}  # both choices stream on
