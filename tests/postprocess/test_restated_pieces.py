"""A streamed piece whose publish failed is not lost: the consumer's rerun of the chunk (or a
replay from genwire.retry) restates what the chunk's first run returned, at its text offset,
so a reader that dedupes by offset gets every character once, in order."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from aiokafka.structs import ConsumerRecord
from genwire_postprocess.app import decode_chunk, rerun
from genwire_postprocess.handlers import Postprocessor
from tokenizers import Tokenizer

from genwire.events import (
    ControlEvent,
    Event,
    GenerationChunk,
    GenerationResult,
    OutputLogprob,
    Sampling,
    TokenEvent,
    dump,
)
from genwire.filters import ContentFilter
from genwire.telemetry import semconv as sc
from genwire.tokenization import AssetStore
from tests.stages.conftest import FakeStore
from tests.stages.test_postprocess_replay import _attempt, _final

TEXT = "The quick brown fox 🦊 jumps over the lazy dog. Grüße aus Köln! Kafka carries requests"


def _chunks(ids: list[int], rid: str, sampling: Sampling, size: int = 2) -> list[GenerationChunk]:
    """A stream of ``size``-token chunks and its final chunk (the stages tests' builders)."""
    chunks = _attempt(ids, rid, [size], sampling)
    return [*chunks, _final(ids, rid, len(chunks), sampling, "length")]


class Reader:
    """A reader of genwire.tokens that dedupes by offset (the documented rule), and says when
    a piece starts past what it holds (a gap: a lost piece)."""

    def __init__(self) -> None:
        self.text = ""
        self.logprobs: list[OutputLogprob] = []
        self.gaps = 0

    def read(self, events: list[Event]) -> None:
        for t in events:
            if not isinstance(t, TokenEvent):
                continue
            if t.text_offset > len(self.text):
                self.gaps += 1
                continue
            self.text += t.text[len(self.text) - t.text_offset :]
            if t.logprobs and t.logprob_offset <= len(self.logprobs):
                self.logprobs += t.logprobs[len(self.logprobs) - t.logprob_offset :]


async def _stream_losing(
    post: Postprocessor, chunks: list[GenerationChunk], lost: int
) -> tuple[Reader, GenerationResult, list[Event]]:
    """Handle every chunk; chunk ``lost``'s first outputs never reach the reader, and the
    consumer reruns it (``rerun=True``), as it does after an unacknowledged publish."""
    reader = Reader()
    rerun_outputs: list[Event] = []
    result = None
    for i, chunk in enumerate(chunks):
        events = await post.handle(chunk)
        if i == lost:
            rerun_outputs = await post.handle(chunk, rerun=True)
            events = rerun_outputs
        reader.read(events)
        result = next((e for e in events if isinstance(e, GenerationResult)), result)
    assert result is not None
    return reader, result, rerun_outputs


@pytest.mark.parametrize("logprobs", [False, True])
async def test_every_lost_piece_is_restated_by_the_rerun(
    model_repo: Path, tokenizer: Tokenizer, logprobs: bool
) -> None:
    ids = tokenizer.encode(TEXT).ids
    sampling = Sampling(logprobs=logprobs)
    chunks = _chunks(ids, "lost", sampling)
    for lost in range(len(chunks) - 1):  # each streamed chunk in turn
        post = Postprocessor(AssetStore(model_repo), FakeStore())
        reader, result, _ = await _stream_losing(post, chunks, lost)
        assert reader.gaps == 0, lost
        assert reader.text == result.text == TEXT, lost
        if logprobs:
            assert reader.logprobs == result.logprobs, lost


async def test_the_restated_piece_is_the_first_runs(model_repo: Path, tokenizer: Tokenizer) -> None:
    # Same index, offset and text as the piece it restates: a duplicate to any reader.
    ids = tokenizer.encode(TEXT).ids
    chunks = _chunks(ids, "same", Sampling())
    post = Postprocessor(AssetStore(model_repo), FakeStore())
    first = [await post.handle(c) for c in chunks[:4]]
    assert await post.handle(chunks[3], rerun=True) == first[3]
    # Only the last chunk's are kept (a rerun comes before the next chunk): an older one, a
    # replay from genwire.retry, restates nothing (its piece is in the final text).
    assert await post.handle(chunks[1], rerun=True) == []


async def test_a_held_back_piece_is_restated_from_where_it_starts(
    model_repo: Path, tokenizer: Tokenizer
) -> None:
    # With output rules, text lags (holdback): a chunk's piece starts before its own tokens'
    # text. Its rerun restates that piece from its start, not from the chunk's first token.
    ids = tokenizer.encode(TEXT).ids
    chunks = _chunks(ids, "held", Sampling(), size=3)
    for lost in range(len(chunks) - 1):
        post = Postprocessor(
            AssetStore(model_repo),
            FakeStore(),
            output_filter=ContentFilter(["never=zzzqqq"]),
            filter_holdback_chars=8,
        )
        reader, result, _ = await _stream_losing(post, chunks, lost)
        assert reader.gaps == 0 and reader.text == result.text == TEXT, lost


async def test_a_lost_cancel_at_a_stop_sequence_is_sent_again(
    model_repo: Path, tokenizer: Tokenizer
) -> None:
    ids = tokenizer.encode(TEXT).ids
    chunks = _chunks(ids, "stop", Sampling(stop=["lazy"]), size=3)
    post = Postprocessor(AssetStore(model_repo), FakeStore())
    for chunk in chunks[:-1]:
        events = await post.handle(chunk)
        if any(isinstance(e, ControlEvent) for e in events):
            again = await post.handle(chunk, rerun=True)
            assert again == events  # the last piece and the cancel to inference
            return
    pytest.fail("no stop sequence hit")


async def test_a_duplicate_that_is_no_rerun_adds_nothing(
    model_repo: Path, tokenizer: Tokenizer
) -> None:
    # A retried generation replays the same tokens: those add nothing (unchanged behaviour).
    ids = tokenizer.encode(TEXT).ids
    chunks = _chunks(ids, "dup", Sampling())
    post = Postprocessor(AssetStore(model_repo), FakeStore())
    await post.handle(chunks[0])
    await post.handle(chunks[1])
    assert await post.handle(chunks[1]) == []


def _record(chunk: GenerationChunk, headers: list[tuple[str, bytes]]) -> ConsumerRecord:  # type: ignore[type-arg]
    value = dump(chunk)
    return ConsumerRecord(
        topic="genwire.generations",
        partition=0,
        offset=7,
        timestamp=0,
        timestamp_type=0,
        key=chunk.key(),
        value=value,
        checksum=None,
        serialized_key_size=0,
        serialized_value_size=len(value),
        headers=headers,
    )


def test_the_consumers_rerun_of_a_record_is_a_rerun() -> None:
    # The consumer decodes a record once and may run its handler several times (each
    # unacknowledged publish); every run after the first is a rerun. A record replayed from
    # genwire.retry was handled before: its first run here is a rerun already.
    chunk = GenerationChunk(request_id="r", index=1, offset=2, token_ids=[5], stream=True)

    async def runs(headers: list[tuple[str, bytes]]) -> list[bool]:
        decoded = decode_chunk(_record(chunk, headers))
        assert decoded == chunk
        return [rerun(), rerun(), rerun()]

    async def both() -> tuple[list[bool], list[bool], bool]:
        plain = await asyncio.create_task(runs([]))
        replayed = await asyncio.create_task(runs([(sc.HEADER_RETRY_COUNT, b"1")]))
        return plain, replayed, rerun()  # outside a record's task: never a rerun

    plain, replayed, outside = asyncio.run(both())
    assert plain == [False, True, True]
    assert replayed == [True, True, True]
    assert outside is False
