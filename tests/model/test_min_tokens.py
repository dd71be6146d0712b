"""min_tokens holds every stop back (as vLLM): eos and stop ids are masked, a stop string
completed before min_tokens does not end the choice, and a stop id forced by a grammar is
text until then."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from genwire_model.repository import ModelVersion

from tests.model.decode import Collect, Model, decode


@pytest.fixture(scope="module")
def model(tiny_version: ModelVersion) -> Model:
    return Model.load(tiny_version)


def generate(model: Model, prompt: list[int], **kw: Any) -> Collect:
    # No eos ids: min_tokens then masks nothing, so the text is the free text token for token.
    return decode(model, prompt, (), **{"max_tokens": 30, "temperature": 0.9, **kw})


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_a_stop_string_before_min_tokens_does_not_end_the_choice(model: Model, seed: int) -> None:
    prompt = model.tokenizer.encode("Return the number of").ids
    free = generate(model, prompt, seed=seed)
    assert len(free.tokens) == 30  # no eos: the free text runs to max_tokens

    def completes(j: int, stop: str) -> bool:  # token j ends a new occurrence of stop
        before = model.text(free.tokens[:j]).count(stop)
        return model.text(free.tokens[: j + 1]).count(stop) > before

    # A one-character stop string first completed early, at token k.
    stop = next(c for c in model.text(free.tokens[:8]) if c.strip())
    k = next(j for j in range(30) if completes(j, stop))
    early = generate(model, prompt, seed=seed, constraints=model.compiler.build("", [stop]))
    assert early.tokens == free.tokens[: k + 1]  # without min_tokens it ends there
    min_tokens = k + 3
    held = generate(
        model,
        prompt,
        seed=seed,
        min_tokens=min_tokens,
        constraints=model.compiler.build("", [stop]),
    )
    # It ends at the first completion at or after min_tokens tokens, else at max_tokens.
    end = next((j for j in range(min_tokens - 1, 30) if completes(j, stop)), None)
    if end is None:
        assert held.tokens == free.tokens and held.final.finish_reason == "length"
    else:
        assert held.tokens == free.tokens[: end + 1] and held.final.finish_reason == "stop"
    assert len(held.tokens) >= min_tokens
    assert held.final.completion_tokens == len(held.tokens)


def test_the_row_constraint_ignores_stop_strings_until_min_tokens(model: Model) -> None:
    tokenizer = model.tokenizer
    ids = tokenizer.encode("ab ab ab").ids
    built = model.compiler.build("", ["ab"])
    assert built is not None
    plain = built[0]
    reasons = [plain.advance(t) for t in ids]
    first = reasons.index("stop")
    held = model.compiler.build("", ["ab"])[0]
    held.min_tokens = first + 2
    later = [held.advance(t) for t in ids]
    assert all(r is None for r in later[: first + 1])
    # A completion at or after min_tokens ends it (the text has three "ab").
    assert "stop" in later[first + 1 :]
    assert held.copy().min_tokens == first + 2


class _OnlyStopId:
    """A grammar-like constraint that allows only ``token`` and never ends the choice."""

    def __init__(self, token: int, vocab: int) -> None:
        self.mask = np.zeros(vocab, np.bool_)
        self.mask[token] = True

    def allowed(self) -> np.ndarray[Any, Any]:
        return self.mask

    def advance(self, token: int) -> str | None:
        return None


def test_a_stop_id_forced_before_min_tokens_is_text_until_then(model: Model) -> None:
    vocab = int(model.runner.vocab_size)
    free = generate(model, [5, 6, 7], stop_ids=frozenset({7}), constraints=[_OnlyStopId(7, vocab)])
    assert free.tokens == [] and free.final.finish_reason == "stop"  # the stop id ends it
    held = generate(
        model,
        [5, 6, 7],
        stop_ids=frozenset({7}),
        min_tokens=3,
        constraints=[_OnlyStopId(7, vocab)],
    )
    assert held.tokens == [7, 7, 7]
    assert held.final.finish_reason == "stop" and held.final.completion_tokens == 4
