"""Sampling: greedy, filters, per-request seeds."""

from __future__ import annotations

import numpy as np
from genwire_model.runtime.sampling import log_softmax, sample_batch


def _logprobs(rows: int = 4, vocab: int = 50, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return log_softmax(rng.standard_normal((rows, vocab)).astype(np.float32) * 3)


def _sample(lp: np.ndarray, t: float, p: float, k: int, seeds: list[int]) -> np.ndarray:
    n = lp.shape[0]
    return sample_batch(
        lp,
        np.full(n, t),
        np.full(n, p),
        np.full(n, k, dtype=np.int64),
        [np.random.default_rng(s) for s in seeds],
    )


def test_log_softmax_rows_sum_to_one() -> None:
    lp = _logprobs()
    np.testing.assert_allclose(np.exp(lp).sum(axis=1), 1.0, rtol=1e-5)


def test_temperature_zero_and_top_k_one_are_greedy() -> None:
    lp = _logprobs()
    expected = lp.argmax(axis=1)
    np.testing.assert_array_equal(_sample(lp, 0.0, 1.0, 0, [1, 2, 3, 4]), expected)
    np.testing.assert_array_equal(_sample(lp, 1.5, 1.0, 1, [1, 2, 3, 4]), expected)


def test_same_seed_same_tokens_regardless_of_batch_neighbours() -> None:
    lp = _logprobs(rows=4)
    together = _sample(lp, 1.0, 0.9, 20, [7, 8, 9, 10])
    alone = [int(_sample(lp[i : i + 1], 1.0, 0.9, 20, [7 + i])[0]) for i in range(4)]
    assert together.tolist() == alone


def test_different_seeds_explore() -> None:
    lp = _logprobs(rows=1)
    tokens = {int(_sample(lp, 1.0, 1.0, 0, [s])[0]) for s in range(200)}
    assert len(tokens) > 5


def test_top_k_keeps_only_the_k_most_likely() -> None:
    lp = _logprobs(rows=1, vocab=100)
    allowed = set(np.argsort(-lp[0])[:3].tolist())
    picked = {int(_sample(lp, 2.0, 1.0, 3, [s])[0]) for s in range(300)}
    assert picked <= allowed
    assert len(picked) == 3


def test_top_p_keeps_the_smallest_nucleus() -> None:
    logits = np.log(np.array([[0.5, 0.3, 0.15, 0.05]], dtype=np.float32))
    lp = log_softmax(logits)
    # 0.5 + 0.3 = 0.8 >= 0.75: the nucleus is tokens 0 and 1.
    picked = {int(_sample(lp, 1.0, 0.75, 0, [s])[0]) for s in range(300)}
    assert picked == {0, 1}
    # A tiny top_p keeps only the most likely token.
    assert {int(_sample(lp, 1.0, 0.01, 0, [s])[0]) for s in range(50)} == {0}


def test_sampling_follows_the_distribution() -> None:
    lp = log_softmax(np.log(np.array([[0.7, 0.2, 0.1]], dtype=np.float32)))
    counts = np.bincount([int(_sample(lp, 1.0, 1.0, 0, [s])[0]) for s in range(3000)], minlength=3)
    np.testing.assert_allclose(counts / 3000, [0.7, 0.2, 0.1], atol=0.04)
