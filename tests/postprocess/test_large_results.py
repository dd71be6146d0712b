"""A large result (many choices x tokens x top logprobs) is built off the event loop, and each
token's own text is decoded once per model version, not once per occurrence."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
from genwire_postprocess import handlers
from genwire_postprocess.handlers import THREAD_MIN_WORK, Postprocessor
from genwire_postprocess.logprobs import TokenTexts
from tokenizers import Tokenizer

from genwire.events import ChoiceOutput, GenerationChunk, GenerationResult, Sampling, TokenLogprob
from genwire.tokenization import AssetStore, ModelAssets
from tests.stages.conftest import MODEL

TEXT = "The quick brown fox jumps over the lazy dog. Kafka carries requests; Redis keeps results."


class FakeStore:
    async def put_first(self, result: GenerationResult) -> GenerationResult:
        return result


def _final(ids: list[int], n: int, top: int) -> GenerationChunk:
    vocab = sorted(set(ids))
    lps = [
        TokenLogprob(
            token_id=t,
            logprob=-0.5,
            top=[(vocab[(i + k) % len(vocab)], -1.0 - k) for k in range(top)],
        )
        for i, t in enumerate(ids)
    ]
    choices = [
        ChoiceOutput(index=c, output_ids=ids, finish_reason="length", logprobs=lps)
        for c in range(n)
    ]
    return GenerationChunk(
        request_id=f"large-{n}-{top}",
        index=0,
        final=True,
        model=MODEL,
        model_version="2",
        sampling=Sampling(n=n, logprobs=True, top_logprobs=top),
        choices=choices,
        output_ids=ids,
        completion_tokens=n * len(ids),
    )


@pytest.fixture
def decodes(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, list[int]]]:
    """Every ``ModelAssets.decode`` call: the thread it ran in and its ids."""
    calls: list[tuple[int, list[int]]] = []
    original = ModelAssets.decode

    def spy(self: ModelAssets, ids: list[int]) -> str:
        calls.append((threading.get_ident(), list(ids)))
        return original(self, ids)

    monkeypatch.setattr(ModelAssets, "decode", spy)
    return calls


async def test_a_large_result_is_built_off_the_event_loop(
    model_repo: Path, tokenizer: Tokenizer, decodes: list[tuple[int, list[int]]]
) -> None:
    ids = tokenizer.encode(TEXT).ids
    chunk = _final(ids, n=8, top=20)
    assert len(ids) * 8 * 21 >= THREAD_MIN_WORK
    post = Postprocessor(AssetStore(model_repo), FakeStore())
    result = await post.build_result(chunk)
    loop_thread = threading.get_ident()
    assert decodes and all(thread != loop_thread for thread, _ in decodes)
    assert len(result.choices) == 8 and result.text == TEXT


async def test_a_small_result_stays_on_the_loop(
    model_repo: Path, tokenizer: Tokenizer, decodes: list[tuple[int, list[int]]]
) -> None:
    ids = tokenizer.encode("The quick brown fox").ids
    post = Postprocessor(AssetStore(model_repo), FakeStore())
    result = await post.build_result(_final(ids, n=1, top=1))
    loop_thread = threading.get_ident()
    assert decodes and all(thread == loop_thread for thread, _ in decodes)
    assert result.text == "The quick brown fox"


async def test_built_in_a_thread_or_not_the_result_is_the_same(
    model_repo: Path, tokenizer: Tokenizer, monkeypatch: pytest.MonkeyPatch
) -> None:
    ids = tokenizer.encode(TEXT).ids
    chunk = _final(ids, n=8, top=20)
    post = Postprocessor(AssetStore(model_repo), FakeStore())
    threaded = await post.build_result(chunk)
    monkeypatch.setattr(handlers, "THREAD_MIN_WORK", 10**12)
    inline = await post.build_result(chunk)
    keep = {"timings"}  # ``completed`` differs by when each was built
    assert threaded.model_dump(exclude=keep) == inline.model_dump(exclude=keep)
    lp = threaded.choices[3].logprobs
    assert lp is not None and len(lp) == len(ids) and len(lp[5].top) == 20
    assert lp[5].token == tokenizer.decode([ids[5]])
    assert lp[5].bytes == list(lp[5].token.encode())


async def test_each_tokens_text_is_decoded_once(
    model_repo: Path, tokenizer: Tokenizer, decodes: list[tuple[int, list[int]]]
) -> None:
    ids = tokenizer.encode(TEXT).ids
    post = Postprocessor(AssetStore(model_repo), FakeStore())
    await post.build_result(_final(ids, n=4, top=5))
    decodes.clear()
    await post.build_result(_final(ids, n=4, top=5).model_copy(update={"request_id": "again"}))
    singles = [call for _, call in decodes if len(call) == 1]
    # Each of the 4 x len(ids) tokens and its 5 alternatives needs its own text: all known
    # from the first result. What is left is the detokenizer's windows (about one a token).
    assert len(singles) <= 4 * len(ids) + 4
    assert len(singles) < 4 * len(ids) * (1 + 5)


def test_the_token_cache_is_bounded() -> None:
    calls: list[list[int]] = []

    def decode(ids: list[int]) -> str:
        calls.append(ids)
        return "".join(chr(65 + i % 26) for i in ids)

    texts = TokenTexts(decode, limit=3)
    for token_id in (1, 2, 3, 4, 1, 4):
        assert texts(token_id) == (chr(65 + token_id), [65 + token_id])
    # Full at 4: the cache starts over with it, so 1 is decoded again and 4 is not.
    assert [c[0] for c in calls] == [1, 2, 3, 4, 1]
    assert len(texts._known) == 2
