"""Postprocess logic: streamed text, stop sequences across chunks, dedupe, restarts, results."""

from __future__ import annotations

import asyncio

import pytest
from genwire_postprocess.handlers import Postprocessor, failure_result
from tokenizers import Tokenizer

from genwire.errors import PermanentError
from genwire.events import (
    ControlEvent,
    ErrorInfo,
    Event,
    GenerationChunk,
    GenerationResult,
    Sampling,
    TokenEvent,
)
from genwire.filters import ContentFilter
from genwire.tokenization import AssetStore

from .conftest import MODEL, FakeStore

TEXT = "The quick brown fox 🦊 jumps over the lazy dog. Grüße aus Köln!"


def _chunks(
    ids: list[int], rid: str, *, size: int = 3, stop: list[str] | None = None, stream: bool = True
) -> list[GenerationChunk]:
    sampling = Sampling(stop=stop or [])
    out: list[GenerationChunk] = []
    if stream:
        for n, i in enumerate(range(0, len(ids) - size, size)):
            out.append(
                GenerationChunk(
                    request_id=rid,
                    index=n,
                    offset=i,
                    token_ids=ids[i : i + size],
                    stream=True,
                    model=MODEL,
                    sampling=sampling if n == 0 else None,
                )
            )
    sent = sum(len(c.token_ids) for c in out)
    out.append(
        GenerationChunk(
            request_id=rid,
            index=len(out),
            offset=sent,
            token_ids=ids[sent:],
            final=True,
            stream=stream,
            model=MODEL,
            model_version="2",
            finish_reason="length",
            prompt_tokens=4,
            completion_tokens=len(ids),
            sampling=sampling,
            output_ids=ids,
        )
    )
    return out


async def _run(post: Postprocessor, chunks: list[GenerationChunk]) -> list[Event]:
    events: list[Event] = []
    for c in chunks:
        events += await post.handle(c)
    return events


def _tokens(events: list[Event]) -> list[TokenEvent]:
    return [e for e in events if isinstance(e, TokenEvent)]


def _result(events: list[Event]) -> GenerationResult:
    (result,) = [e for e in events if isinstance(e, GenerationResult)]
    return result


async def test_stream_concatenates_to_the_result(post: Postprocessor, tokenizer: Tokenizer) -> None:
    ids = tokenizer.encode(TEXT).ids
    events = await _run(post, _chunks(ids, "s1"))
    tokens, result = _tokens(events), _result(events)
    assert result.text == TEXT and result.finish_reason == "length"
    assert result.usage.total_tokens == 4 + len(ids) and result.model_version == "2"
    assert "".join(t.text for t in tokens) == TEXT
    assert [t.index for t in tokens] == list(range(len(tokens)))
    assert len(tokens) > 3 and tokens[-1].final and not any(t.final for t in tokens[:-1])
    offset = 0
    for t in tokens:  # every piece says where it goes
        assert t.text_offset == offset
        offset += len(t.text)
    assert all("\ufffd" not in t.text for t in tokens)
    assert post.streams == {}  # state released at the final chunk


@pytest.mark.parametrize("size", [1, 2, 5])
async def test_stop_sequence_across_chunk_boundaries(
    post: Postprocessor, tokenizer: Tokenizer, size: int
) -> None:
    ids = tokenizer.encode(TEXT).ids
    events = await _run(post, _chunks(ids, f"stop{size}", size=size, stop=["lazy dog", "XYZ"]))
    tokens, result = _tokens(events), _result(events)
    assert result.text == "The quick brown fox 🦊 jumps over the "
    assert result.finish_reason == "stop"
    streamed = "".join(t.text for t in tokens)
    assert streamed == result.text
    # never emitted any part of the stop sequence, even while it was still ambiguous
    assert "lazy" not in streamed and not streamed.endswith("l")
    # and the model is told to stop (once) instead of running on to max_tokens
    cancels = [e for e in events if isinstance(e, ControlEvent)]
    assert [(c.request_id, c.action) for c in cancels] == [(f"stop{size}", "cancel")]


async def test_non_streaming_gets_only_the_result(
    post: Postprocessor, tokenizer: Tokenizer
) -> None:
    ids = tokenizer.encode(TEXT).ids
    events = await _run(post, _chunks(ids, "ns", stream=False, stop=["fox"]))
    assert _tokens(events) == []
    assert _result(events).text == "The quick brown " and _result(events).finish_reason == "stop"


async def test_stop_without_streaming_cancels_early(
    post: Postprocessor, tokenizer: Tokenizer
) -> None:
    ids = tokenizer.encode(TEXT).ids
    chunks = [c.model_copy(update={"stream": False}) for c in _chunks(ids, "nss", stop=["fox"])]
    events = await _run(post, chunks)
    assert _tokens(events) == []  # not streamed
    assert len([e for e in events if isinstance(e, ControlEvent)]) == 1
    assert _result(events).text == "The quick brown " and _result(events).finish_reason == "stop"


async def test_duplicates_and_reordering(post: Postprocessor, tokenizer: Tokenizer) -> None:
    ids = tokenizer.encode(TEXT).ids
    chunks = _chunks(ids, "dup")
    c0, c1, c2, *rest = chunks
    events = await _run(post, [c0, c0, c2, c1, c1, c2, *rest])
    tokens = _tokens(events)
    assert "".join(t.text for t in tokens) == TEXT
    assert [t.index for t in tokens] == list(range(len(tokens)))


async def test_restart_mid_stream_still_completes(assets: AssetStore, tokenizer: Tokenizer) -> None:
    ids = tokenizer.encode(TEXT).ids
    chunks = _chunks(ids, "rs")
    before = Postprocessor(assets, store := FakeStore())
    first = _tokens(await _run(before, chunks[:2]))
    after = Postprocessor(assets, store)  # a new process: no streaming state
    events = await _run(after, chunks[2:])
    tokens = _tokens(events)
    assert tokens == [t for t in tokens if t.final]  # nothing streamed without the start
    (last,) = tokens
    assert last.text_offset == 0 and last.text == TEXT  # the whole text, positioned
    held = "".join(t.text for t in first)  # what a reader already had
    assert held + last.text[len(held) - last.text_offset :] == TEXT
    assert _result(events).text == TEXT


async def test_redelivered_final_returns_the_first_result(
    post: Postprocessor, tokenizer: Tokenizer
) -> None:
    ids = tokenizer.encode(TEXT).ids
    first = _result(await _run(post, _chunks(ids, "again", stream=False)))
    other = tokenizer.encode("something else entirely").ids
    second = _result(await _run(post, _chunks(other, "again", stream=False)))
    assert second == first


async def test_output_filter_cuts_the_text(assets: AssetStore, tokenizer: Tokenizer) -> None:
    post = Postprocessor(
        assets, FakeStore(), output_filter=ContentFilter(["animal=f[o0]x"]), filter_holdback_chars=8
    )
    ids = tokenizer.encode(TEXT).ids
    events = await _run(post, _chunks(ids, "flt", size=1))
    result = _result(events)
    assert result.text == "The quick brown " and result.finish_reason == "content_filter"
    assert "".join(t.text for t in _tokens(events)) == result.text


async def test_error_chunk_becomes_an_error_result(post: Postprocessor) -> None:
    chunk = GenerationChunk(
        request_id="bad",
        index=0,
        final=True,
        stream=True,
        finish_reason="error",
        error=ErrorInfo(code="invalid_json", message="request: Invalid JSON"),
    )
    events = await post.handle(chunk)
    (token,) = _tokens(events)
    assert token.final and token.text == ""
    result = _result(events)
    assert result.error == chunk.error and result.text == ""


async def test_a_conflict_error_is_published_but_never_stored(
    post: Postprocessor, tokenizer: Tokenizer
) -> None:
    """A Kafka client reusing an id for another body gets the conflict, not the other text."""
    first = _result(await _run(post, _chunks(tokenizer.encode(TEXT).ids, "reuse", stream=False)))
    conflict = GenerationChunk(
        request_id="reuse",
        index=0,
        final=True,
        finish_reason="error",
        error=ErrorInfo(code="idempotency_conflict", message="already used"),
    )
    answer = _result(await post.handle(conflict))
    assert answer.error is not None and answer.error.code == "idempotency_conflict"
    assert answer.text == ""
    store = post.store
    assert isinstance(store, FakeStore) and store.data["reuse"] == first  # untouched


def test_failure_result() -> None:
    err = PermanentError("redis down", code="unavailable")
    events = failure_result("r", err, stream=True)
    assert isinstance(events[0], TokenEvent) and events[0].final
    assert _result(events).error == ErrorInfo(code="unavailable", message="redis down")
    assert failure_result(None, err, stream=False) == []


async def test_result_metrics_count_each_request_once(
    assets: AssetStore, tokenizer: Tokenizer
) -> None:
    from genwire_postprocess.metrics import ResultMetrics
    from prometheus_client import CollectorRegistry

    registry = CollectorRegistry()
    post = Postprocessor(assets, FakeStore(), on_result=ResultMetrics(registry).observe)
    ids = tokenizer.encode(TEXT).ids
    await _run(post, _chunks(ids, "m1", stream=False))
    await _run(post, _chunks(ids, "m1", stream=False))  # a redelivery
    labels = {"model": MODEL, "outcome": "length"}
    assert registry.get_sample_value("genwire_requests_total", labels) == 1


async def test_chunks_handled_while_the_tokenizer_loads_are_streamed(
    assets: AssetStore, tokenizer: Tokenizer
) -> None:
    # The consumer handles records concurrently: chunk 1 may arrive while chunk 0's handler
    # still loads the model's tokenizer (its first use, in a thread). It must queue, not make
    # the request unstreamable.
    post = Postprocessor(assets, FakeStore())
    ids = tokenizer.encode(TEXT).ids
    chunks = _chunks(ids, "cold")
    assert assets.cached(MODEL, "2") is None  # cold: chunk 0 has to wait for the load
    streamed = await asyncio.gather(*(post.handle(c) for c in chunks[:-1]))
    events = [e for out in streamed for e in out] + await post.handle(chunks[-1])
    tokens = _tokens(events)
    assert "".join(t.text for t in tokens) == _result(events).text == TEXT
    assert [t.index for t in tokens] == list(range(len(tokens)))
    # Everything streamed that a warm, in-order run streams (not just chunk 0's piece).
    warm = _tokens(await _run(Postprocessor(assets, FakeStore()), _chunks(ids, "warm")[:-1]))
    assert "".join(t.text for t in tokens[:-1]) == "".join(t.text for t in warm) != ""
