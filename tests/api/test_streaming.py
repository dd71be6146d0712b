"""Streaming through the official SDK against the real stack: n > 1 choices with logprobs,
pieces that add up to what the same request answers unstreamed (same seed), and a batch of
prompts streamed together."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import openai
import pytest

from .conftest import MODEL, Served


def _need(served: Served, *options: str) -> None:
    if served.expect(*options) is not True:
        pytest.skip(f"the served version does not declare {options} (refusal: test_sdk_parameters)")


def test_chat_stream_n_choices_with_logprobs(client: openai.OpenAI, served: Served) -> None:
    _need(served, "n", "logprobs", "top_logprobs")
    kwargs: dict[str, Any] = dict(
        model=MODEL,
        messages=[{"role": "user", "content": "Tell me a story."}],
        n=3,
        logprobs=True,
        top_logprobs=2,
        max_completion_tokens=16,
        temperature=1.0,
        seed=21,
    )
    whole = client.chat.completions.create(**kwargs)
    text: dict[int, str] = defaultdict(str)
    tokens: dict[int, list[str]] = defaultdict(list)
    reasons: dict[int, str] = {}
    usage = None
    for chunk in client.chat.completions.create(
        **kwargs, stream=True, stream_options={"include_usage": True}
    ):
        if not chunk.choices:
            usage = chunk.usage
            continue
        for choice in chunk.choices:
            text[choice.index] += choice.delta.content or ""
            if choice.logprobs is not None and choice.logprobs.content:
                for lp in choice.logprobs.content:
                    assert lp.logprob <= 0 and 0 < len(lp.top_logprobs) <= 2
                    tokens[choice.index].append(lp.token)
            if choice.finish_reason:
                reasons[choice.index] = choice.finish_reason
    assert sorted(reasons) == [0, 1, 2]
    assert [text[i] for i in range(3)] == [c.message.content for c in whole.choices]
    for i, choice in enumerate(whole.choices):
        assert choice.logprobs is not None and choice.logprobs.content is not None
        assert tokens[i] == [t.token for t in choice.logprobs.content]
    assert usage is not None and whole.usage is not None
    assert usage.completion_tokens == whole.usage.completion_tokens


def test_completions_stream_a_batch_with_n_and_logprobs(
    client: openai.OpenAI, served: Served
) -> None:
    _need(served, "n", "logprobs", "top_logprobs")
    kwargs: dict[str, Any] = dict(
        model=MODEL,
        prompt=["Once upon a time", "The cat"],
        n=2,
        logprobs=1,
        max_tokens=10,
        temperature=1.0,
        seed=5,
    )
    whole = client.completions.create(**kwargs)
    assert [c.index for c in whole.choices] == [0, 1, 2, 3]
    text: dict[int, str] = defaultdict(str)
    offsets: dict[int, list[int]] = defaultdict(list)
    finished = set()
    for chunk in client.completions.create(**kwargs, stream=True):
        for choice in chunk.choices:
            text[choice.index] += choice.text
            if choice.logprobs is not None:
                offsets[choice.index] += choice.logprobs.text_offset or []
            if choice.finish_reason:
                finished.add(choice.index)
    assert finished == {0, 1, 2, 3}
    assert [text[i] for i in range(4)] == [c.text for c in whole.choices]
    for i, choice in enumerate(whole.choices):
        assert choice.logprobs is not None
        assert offsets[i] == choice.logprobs.text_offset
