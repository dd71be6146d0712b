"""Postprocess under replays and min_tokens: a retried or redelivered generation replays the
same tokens (same seed) cut into other chunks, and must stream each token once; a stop string
completed before min_tokens is not one (the model's rule, ``RowConstraint.advance``)."""

from __future__ import annotations

import logging
import random

import pytest
from genwire_model.runtime import constraints
from genwire_postprocess.handlers import Postprocessor
from tokenizers import Tokenizer

from genwire.events import (
    ControlEvent,
    GenerationChunk,
    GenerationResult,
    OutputLogprob,
    Sampling,
    TokenEvent,
    TokenLogprob,
)
from genwire.tokenization import AssetStore

from .conftest import EOS, MODEL
from .test_postprocess import FakeStore, _result, _run, _tokens

TEXT = "The quick brown fox 🦊 jumps over the lazy dog. Kafka carries requests"


def _lps(ids: list[int]) -> list[TokenLogprob]:
    return [TokenLogprob(token_id=t, logprob=-0.01 * (i + 1)) for i, t in enumerate(ids)]


def _attempt(
    ids: list[int], rid: str, sizes: list[int], sampling: Sampling, upto: int | None = None
) -> list[GenerationChunk]:
    """One generation's streamed chunks, cut ``sizes[0]``, ``sizes[1]``, ... tokens long (the
    last size repeats) up to token ``upto`` (a failure there), as inference cuts them."""
    out: list[GenerationChunk] = []
    offset, end = 0, len(ids) if upto is None else upto
    while offset < end:
        size = sizes[min(len(out), len(sizes) - 1)]
        toks = ids[offset : min(end, offset + size)]
        out.append(
            GenerationChunk(
                request_id=rid,
                index=len(out),
                offset=offset,
                token_ids=toks,
                stream=True,
                model=MODEL,
                model_version="2",
                sampling=sampling if not out else None,
                logprobs=_lps(ids)[offset : offset + len(toks)] if sampling.logprobs else None,
            )
        )
        offset += len(toks)
    return out


def _final(
    ids: list[int], rid: str, index: int, sampling: Sampling, reason: str
) -> GenerationChunk:
    return GenerationChunk(
        request_id=rid,
        index=index,
        offset=len(ids),
        final=True,
        stream=True,
        model=MODEL,
        model_version="2",
        finish_reason=reason,
        completion_tokens=len(ids),
        sampling=sampling,
        output_ids=ids,
        logprobs=_lps(ids) if sampling.logprobs else None,
    )


def _read(tokens: list[TokenEvent], held: str = "") -> str:
    """The documented reader of genwire.tokens: append ``text[N - text_offset:]``."""
    for t in tokens:
        held += t.text[len(held) - t.text_offset :]
    return held


def _read_logprobs(tokens: list[TokenEvent]) -> list[OutputLogprob]:
    held: list[OutputLogprob] = []
    for t in tokens:
        held += (t.logprobs or [])[len(held) - t.logprob_offset :]
    return held


def _assert_one_stream(tokens: list[TokenEvent], result: GenerationResult) -> None:
    """Each piece exactly once, in place: they add up to the result with no reader dedupe."""
    assert "".join(t.text for t in tokens) == result.text == _read(tokens)
    offset = 0
    for t in tokens:
        assert t.text_offset == offset
        offset += len(t.text)
    assert [t.index for t in tokens] == list(range(len(tokens)))
    assert tokens[-1].final and not any(t.final for t in tokens[:-1])


# (first attempt's chunk sizes, where it failed, the retry's chunk sizes)
RECHUNKINGS = [
    ([1, 3], 4, [1, 8]),  # the audit's case: the retry's chunk 1 covers more
    ([1, 8], 9, [1, 3]),  # the retry's chunks cover less: old indices, new tokens
    ([1, 2], 7, [1, 5]),  # the retry's chunk straddles where the first attempt stopped
    ([1, 4], 13, [2, 1, 3]),
]


@pytest.mark.parametrize("logprobs", [False, True])
@pytest.mark.parametrize(("first", "failed_at", "retry"), RECHUNKINGS)
async def test_a_rechunked_retry_streams_every_token_once(
    assets: AssetStore,
    tokenizer: Tokenizer,
    logprobs: bool,
    first: list[int],
    failed_at: int,
    retry: list[int],
) -> None:
    ids = tokenizer.encode(TEXT).ids
    sampling = Sampling(logprobs=logprobs)
    post = Postprocessor(assets, FakeStore())
    attempt1 = _attempt(ids, "rc", first, sampling, upto=failed_at)  # then Triton fails
    attempt2 = _attempt(ids, "rc", retry, sampling)  # the consumer's retry, same seed
    events = await _run(
        post, [*attempt1, *attempt2, _final(ids, "rc", len(attempt2), sampling, "length")]
    )
    tokens, result = _tokens(events), _result(events)
    assert result.text == TEXT
    _assert_one_stream(tokens, result)
    if logprobs:
        assert result.logprobs is not None
        assert [lp for t in tokens for lp in t.logprobs or []] == result.logprobs
        assert _read_logprobs(tokens) == result.logprobs


@pytest.mark.parametrize("seed", range(6))
async def test_two_attempts_interleaved_and_reordered(
    assets: AssetStore, tokenizer: Tokenizer, seed: int
) -> None:
    # A redelivery to another instance while the first still runs: both attempts' chunks
    # arrive mixed (and, with concurrent handlers, out of order).
    ids = tokenizer.encode(TEXT).ids
    sampling = Sampling(stop=["lazy dog"])
    chunks = _attempt(ids, "mix", [1, 3], sampling) + _attempt(ids, "mix", [1, 5, 2], sampling)
    head, rest = chunks[0], chunks[1:]
    random.Random(seed).shuffle(rest)
    post = Postprocessor(assets, FakeStore())
    events = await _run(post, [head, *rest, _final(ids, "mix", 9, sampling, "stop")])
    tokens, result = _tokens(events), _result(events)
    assert (
        result.text == "The quick brown fox 🦊 jumps over the " and result.finish_reason == "stop"
    )
    _assert_one_stream(tokens, result)


async def test_a_retry_after_a_postprocess_restart(
    assets: AssetStore, tokenizer: Tokenizer
) -> None:
    # The streaming state is in memory: a new process that sees the retry from its chunk 0
    # streams it from offset 0 again; the reader's text_offset rule absorbs the repeat.
    ids = tokenizer.encode(TEXT).ids
    sampling = Sampling()
    store = FakeStore()
    before = _tokens(
        await _run(Postprocessor(assets, store), _attempt(ids, "rr", [1, 3], sampling, upto=4))
    )
    retry = _attempt(ids, "rr", [1, 8], sampling)
    events = await _run(
        Postprocessor(assets, store), [*retry, _final(ids, "rr", len(retry), sampling, "length")]
    )
    after, result = _tokens(events), _result(events)
    assert after[0].text_offset == 0
    _assert_one_stream(after, result)
    assert _read(after, _read(before)) == result.text == TEXT


async def test_a_replay_with_other_tokens_stops_streaming_loudly(
    assets: AssetStore, tokenizer: Tokenizer, caplog: pytest.LogCaptureFixture
) -> None:
    ids = tokenizer.encode(TEXT).ids
    other = tokenizer.encode(
        "The slow green turtle crawls under the busy road. Redis keeps results"
    ).ids
    sampling = Sampling()
    post = Postprocessor(assets, FakeStore())
    first = _attempt(ids, "dv", [1, 3], sampling, upto=4)
    retry = _attempt(other, "dv", [1, 8], sampling)
    with caplog.at_level(logging.WARNING, logger="genwire_postprocess.handlers"):
        events = await _run(
            post, [*first, *retry, _final(other, "dv", len(retry), sampling, "length")]
        )
    assert "differs from the tokens already applied" in caplog.text
    tokens, result = _tokens(events), _result(events)
    assert result.text == tokenizer.decode(other)
    streamed = "".join(t.text for t in tokens[:-1])
    assert tokenizer.decode(ids[:4]).startswith(streamed)  # the first attempt's text only
    assert tokens[-1].final and tokens[-1].text_offset == 0 and tokens[-1].text == result.text


# -- min_tokens -------------------------------------------------------------------------------

EARLY = "The fox jumps over the lazy dog. Kafka carries requests; the fox"


@pytest.mark.parametrize("size", [1, 2, 4])
@pytest.mark.parametrize("stream", [True, False])
async def test_a_stop_string_before_min_tokens_is_not_a_stop(
    assets: AssetStore, tokenizer: Tokenizer, size: int, stream: bool
) -> None:
    ids = tokenizer.encode(EARLY).ids
    assert len(tokenizer.encode("The fox").ids) < 12 < len(ids)
    sampling = Sampling(stop=["fox"], min_tokens=12, max_tokens=64)
    chunks = [
        c.model_copy(update={"stream": stream}) for c in _attempt(ids, "mt", [size], sampling)
    ]
    final = _final(ids, "mt", len(chunks), sampling, "stop").model_copy(update={"stream": stream})
    post = Postprocessor(assets, FakeStore())
    streamed = await _run(post, chunks[:-1])  # all but the chunk completing the last "fox"
    assert not any(isinstance(e, ControlEvent) for e in streamed)  # the model is not cancelled
    events = streamed + await _run(post, [chunks[-1], final])
    result = _result(events)
    assert result.text == "The fox jumps over the lazy dog. Kafka carries requests; the "
    assert result.finish_reason == "stop"
    if stream:
        _assert_one_stream(_tokens(events), result)
    # Without min_tokens the same text stops at the first "fox".
    plain = Sampling(stop=["fox"])
    early = _result(
        await Postprocessor(assets, FakeStore()).handle(_final(ids, "p", 0, plain, "stop"))
    )
    assert early.text == "The "


MULTIBYTE = "Öl in Köln? Ölkanne 🦊! Öl über 🦊 Öl"
STOPS = ["Öl", "🦊"]


@pytest.fixture(scope="module")
def vocabulary(tokenizer: Tokenizer) -> constraints.Vocabulary:
    eos = tokenizer.token_to_id(EOS)
    assert eos is not None
    return constraints.Vocabulary(tokenizer.to_str(), tokenizer.get_vocab_size(), [eos])


def _model_stop(vocab: constraints.Vocabulary, ids: list[int], min_tokens: int) -> int | None:
    """Where the model's decode loop ends the choice (the index of the token), if it does."""
    row = vocab.constraint(None, tuple(STOPS))
    assert row is not None
    row.min_tokens = min_tokens
    return next((i for i, t in enumerate(ids) if row.advance(t) == "stop"), None)


async def test_min_tokens_matches_the_models_rule(
    assets: AssetStore, tokenizer: Tokenizer, vocabulary: constraints.Vocabulary
) -> None:
    """For every min_tokens, postprocess cuts at the stop string the model stopped on (stop
    strings and characters split across tokens included), streamed or not, and finds none
    when the model found none."""
    ids = tokenizer.encode(MULTIBYTE).ids
    assert any("\ufffd" in tokenizer.decode([t]) for t in ids)  # characters span tokens
    for min_tokens in range(len(ids) + 2):
        k = _model_stop(vocabulary, ids, min_tokens)
        output = ids if k is None else ids[: k + 1]  # the model's output
        sampling = Sampling(stop=STOPS, min_tokens=min_tokens, max_tokens=64)
        rid = f"mb{min_tokens}"
        chunks = _attempt(output, rid, [1, 2], sampling)
        events = await _run(
            Postprocessor(assets, FakeStore()),
            [
                *chunks,
                _final(output, rid, len(chunks), sampling, "stop" if k is not None else "length"),
            ],
        )
        result = _result(events)
        _assert_one_stream(_tokens(events), result)
        if k is None:
            assert result.text == tokenizer.decode(ids) and result.finish_reason == "length"
            continue
        assert result.finish_reason == "stop", min_tokens
        # The occurrence cut at is the one token k completed.
        rest = tokenizer.decode(output)[len(result.text) :]
        stop = next(s for s in STOPS if rest.startswith(s))
        before_k = len(tokenizer.decode(ids[:k]).rstrip("\ufffd"))
        assert len(result.text) + len(stop) > before_k, min_tokens
