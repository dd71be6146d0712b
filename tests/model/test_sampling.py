"""Sampling: the fast path (no full sort) against the full-sort reference, filter boundaries,
the distribution (chi-squared), per-request seeds."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
from genwire_model.runtime import sampling
from genwire_model.runtime.sampling import (
    BLOCK,
    HEAD,
    Sampler,
    log_softmax,
    logsumexp,
    ranked_values,
    sample_reference,
    top_logprobs,
    walk,
    walk_one,
)

Array = npt.NDArray[Any]


def _logits(rows: int = 4, vocab: int = 50, seed: int = 0, scale: float = 3.0) -> Array:
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((rows, vocab)) * scale).astype(np.float32)


def _params(
    rows: int, t: float = 1.0, p: float = 1.0, k: int = 0, m: float = 0.0
) -> tuple[Array, Array, Array, Array]:
    return (
        np.full(rows, t),
        np.full(rows, p),
        np.full(rows, k, dtype=np.int64),
        np.full(rows, m),
    )


def _fast(logits: Array, draws: Array, **kw: Any) -> Array:
    t, p, k, m = _params(len(logits), **kw)
    return Sampler(logits.shape[1]).sample(logits.copy(), t, p, k, m, draws)


def _drawn(logits: Array, rows: int, draw: float, **kw: Any) -> list[int]:
    """The tokens of ``rows`` copies of a one-row ``logits`` with the same draw (one row takes
    the one-row path, more the batch path)."""
    return _fast(np.repeat(logits, rows, axis=0), np.full(rows, draw), **kw).tolist()


def _kept_probabilities(logits: Array, t: float, p: float, k: int, m: float) -> Array:
    """The definition written out on one row with a full sort: the sampling distribution."""
    z = logits.astype(np.float64) / t
    probs = np.exp(z - z.max())
    order = np.lexsort((np.arange(len(probs)), -probs))
    ranked = probs[order]
    keep = int(((ranked >= m) & (ranked > 0)).sum())
    if 0 < k < keep:
        keep = k
    if p < 1.0:
        cumulative = np.cumsum(ranked[:keep])
        keep = min(int((cumulative < p * cumulative[-1]).sum()) + 1, keep)
    out = np.zeros_like(probs)
    out[order[:keep]] = probs[order[:keep]]
    result: Array = out / out.sum()
    return result


def test_log_softmax_and_logsumexp_agree() -> None:
    logits = _logits()
    np.testing.assert_allclose(np.exp(log_softmax(logits)).sum(axis=1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(
        logits - logsumexp(logits)[:, None], log_softmax(logits), rtol=1e-5, atol=1e-5
    )


def test_top_logprobs_are_the_most_likely_in_order() -> None:
    logits = _logits(rows=3, vocab=40)
    logits[0, 5] = logits[0, 7] = 20.0  # a tie: the lower id first
    ids, lps = top_logprobs(logits, logsumexp(logits), 4)
    lp = log_softmax(logits)
    for row in range(3):
        expected = np.lexsort((np.arange(40), -lp[row]))[:4]
        assert ids[row].tolist() == expected.tolist()
        np.testing.assert_allclose(lps[row], lp[row, expected], rtol=1e-5, atol=1e-6)
    assert ids[0, :2].tolist() == [5, 7]


def test_temperature_zero_and_top_k_one_are_greedy() -> None:
    logits = _logits()
    expected = logits.argmax(axis=1)
    draws = np.full(4, 0.99)
    np.testing.assert_array_equal(_fast(logits, draws, t=0.0), expected)
    np.testing.assert_array_equal(_fast(logits, draws, t=1.5, k=1), expected)


@pytest.mark.parametrize("partial", [True, False], ids=["selection", "full-sort"])
@pytest.mark.parametrize("vocab", [50, 512, 4096])
def test_fast_path_equals_the_full_sort_reference(
    vocab: int, partial: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Same draws, same tokens: random filters, ties, masked (-inf) tokens, mixed rows, with
    the head ranked by selection and by a full sort."""
    rng = np.random.default_rng(vocab)
    sampler = Sampler(vocab, partial=partial)
    asked: set[bool] = set()
    ranked = sampling.ranked_values

    def spy(values: Array, width: int, partial: bool = True) -> Array:
        asked.add(partial)
        return ranked(values, width, partial)

    monkeypatch.setattr(sampling, "ranked_values", spy)
    for trial in range(120):
        rows = int(rng.integers(1, 9))
        logits = (rng.standard_normal((rows, vocab)) * rng.uniform(0.5, 5)).astype(np.float32)
        if trial % 3 == 0:
            logits = np.round(logits)  # many exact ties
        if trial % 5 == 0:
            logits[:, rng.integers(0, vocab, vocab // 5)] = -np.inf
        t = rng.choice([0.0, 0.5, 1.0, 1.7], rows)
        p = rng.choice([1.0, 0.9, 0.5, 0.99, 0.1], rows)
        k = rng.choice([0, 1, 5, 40, 64, 100, vocab - 1, vocab], rows)
        m = rng.choice([0.0, 0.0, 0.05, 0.3, 0.001], rows)
        for _ in range(3):
            draws = rng.random(rows)
            fast = sampler.sample(logits.copy(), t, p, k, m, draws)
            np.testing.assert_array_equal(fast, sample_reference(logits, t, p, k, m, draws))
    assert sampler.ties > 0  # the tie path was exercised
    assert asked == {partial}  # the ranking asked for is the one used
    if vocab > HEAD:
        assert sampler.beyond > 0  # and nuclei that reach past the ranked head


@pytest.mark.parametrize("width", [1, 2, 257, 4095, 4096, 5000])
def test_ranked_values_by_selection_are_the_sorted_head(width: int) -> None:
    """Exactly ``np.sort(-values)[:, :width]``, ties and zeros included."""
    rng = np.random.default_rng(width)
    values = np.round(rng.random((6, 4096), dtype=np.float32) * 50) / 50
    values[:, rng.integers(0, 4096, 800)] = 0.0
    expected = np.sort(np.negative(values), axis=1)[:, :width]
    np.testing.assert_array_equal(ranked_values(values, width, partial=True)[:, :width], expected)
    np.testing.assert_array_equal(ranked_values(values, width, partial=False)[:, :width], expected)
    assert ranked_values(values, width, partial=True).shape[1] == min(width, 4096)


def test_a_ranking_asked_for_is_the_one_used(monkeypatch: pytest.MonkeyPatch) -> None:
    assert Sampler(4096, partial=True).partial and not Sampler(4096, partial=False).partial
    monkeypatch.setattr(sampling, "partial_is_faster", lambda vocab: vocab == 4096)
    assert Sampler(4096).partial and not Sampler(50).partial  # unasked: measured


@pytest.mark.parametrize("rows", [1, 2], ids=["one-row", "batch"])
def test_top_k_boundary_with_ties_keeps_the_lower_ids(rows: int) -> None:
    # Tokens 1, 2, 3 tie for second place: top_k 2 keeps token 0 and token 1 only.
    logits = np.log(np.array([[0.4, 0.15, 0.15, 0.15, 0.15]], dtype=np.float32))
    draws = np.linspace(0, 0.999, 200)
    picked = {t for u in draws for t in _drawn(logits, rows, u, k=2)}
    assert picked == {0, 1}


@pytest.mark.parametrize("rows", [1, 2], ids=["one-row", "batch"])
def test_top_p_boundary_is_exact(rows: int) -> None:
    logits = np.log(np.array([[0.5, 0.3, 0.15, 0.05]], dtype=np.float32))
    draws = np.linspace(0, 0.999, 300)
    # 0.5 + 0.3 = 0.8 >= 0.75: the nucleus is tokens 0 and 1 ...
    assert {t for u in draws for t in _drawn(logits, rows, u, p=0.75)} == {0, 1}
    # ... just above 0.8 it needs token 2, and 0.96 needs all four.
    assert {t for u in draws for t in _drawn(logits, rows, u, p=0.81)} == {0, 1, 2}
    assert {t for u in draws for t in _drawn(logits, rows, u, p=0.96)} == {0, 1, 2, 3}
    # A tiny top_p keeps only the most likely token.
    assert {t for u in draws for t in _drawn(logits, rows, u, p=0.01)} == {0}


@pytest.mark.parametrize("rows", [1, 2], ids=["one-row", "batch"])
def test_min_p_keeps_tokens_at_least_that_fraction_of_the_best(rows: int) -> None:
    logits = np.log(np.array([[0.5, 0.3, 0.15, 0.05]], dtype=np.float32))
    draws = np.linspace(0, 0.999, 300)
    # 0.3 / 0.5 = 0.6 >= 0.5 kept, 0.15 / 0.5 = 0.3 dropped (kept at 0.29).
    assert {t for u in draws for t in _drawn(logits, rows, u, m=0.5)} == {0, 1}
    assert {t for u in draws for t in _drawn(logits, rows, u, m=0.29)} == {0, 1, 2}


def test_masked_tokens_are_never_sampled() -> None:
    logits = _logits(rows=2, vocab=64)
    logits[:, ::2] = -np.inf
    rng = np.random.default_rng(3)
    for _ in range(200):
        tokens = _fast(logits, rng.random(2), t=2.0)
        assert (tokens % 2 == 1).all()


@pytest.mark.parametrize("partial", [True, False], ids=["selection", "full-sort"])
@pytest.mark.parametrize("vocab", [50, 512, 4096, 4100])
def test_one_row_path_equals_the_full_sort_reference(
    vocab: int, partial: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A batch of one takes its own path (``_sample_one``): same draws, same tokens as the
    reference, through every filter, ties, masked tokens and nuclei past the head; the batch
    path is not used for it."""
    rng = np.random.default_rng(vocab + 7)
    sampler = Sampler(vocab, partial=partial)
    # The same row twice through the batch path: the same cut, so the same head after every
    # call and twice the counters (the head decides how much the next step ranks).
    pair = Sampler(vocab, partial=partial)

    def batch_path(*args: Any) -> None:
        raise AssertionError("a batch of one went through the batch path")

    monkeypatch.setattr(sampler, "_keep", batch_path)
    monkeypatch.setattr(sampler, "_cut", batch_path)
    for trial in range(600):
        logits = (rng.standard_normal((1, vocab)) * rng.uniform(0.5, 5)).astype(np.float32)
        if trial % 3 == 0:
            logits = np.round(logits)  # many exact ties
        if trial % 5 == 0:
            logits[:, rng.integers(0, vocab, vocab // 5)] = -np.inf
        t = rng.choice([0.0, 0.5, 0.8, 1.0, 1.7], 1)
        p = rng.choice([1.0, 0.9, 0.95, 0.5, 0.99, 0.1], 1)
        k = rng.choice([0, 1, 5, 40, 64, 100, vocab - 1, vocab], 1)
        m = rng.choice([0.0, 0.0, 0.05, 0.3, 0.001, 1.0], 1)
        if trial % 7 == 0 and t[0] > 0:
            # min_p exactly at a token's probability (kept: >=) and one step above (dropped).
            e = sampling._probabilities(logits, t)[0]
            at = float(e[rng.integers(0, vocab)])
            m = np.array([at if trial % 2 else float(np.nextafter(np.float32(at), 2.0))])
        draws = rng.random(1)
        fast = sampler.sample(logits.copy(), t, p, k, m, draws)
        assert fast.dtype == np.int64 and fast.shape == (1,)
        np.testing.assert_array_equal(fast, sample_reference(logits, t, p, k, m, draws))
        twice = [np.repeat(a, 2) for a in (t, p, k, m, draws)]
        two = pair.sample(np.repeat(logits, 2, axis=0), *twice)
        assert two.tolist() == [fast[0], fast[0]]
        assert pair.head == sampler.head
    assert sampler.ties > 0 and pair.ties == 2 * sampler.ties
    assert pair.beyond == 2 * sampler.beyond
    if vocab > HEAD:
        assert sampler.beyond > 0


@pytest.mark.parametrize("vocab", [7, 64, 200, 4096, 4100])
def test_walk_one_equals_walk(vocab: int) -> None:
    """The one-row walk picks what ``walk`` picks, draws at both ends and zero weights
    (padding past a vocabulary that is not a multiple of the block) included."""
    rng = np.random.default_rng(vocab)
    for trial in range(400):
        weights = rng.random((1, vocab)).astype(np.float32)
        weights[0, rng.integers(0, vocab, vocab // 3)] = 0.0
        if trial % 4 == 0:
            weights[0, vocab // 2 :] = 0.0  # the mass ends early: rounding at the end
        elif trial % 4 == 1 and vocab > BLOCK:
            weights[0, : int(rng.integers(BLOCK, vocab))] = 0.0  # whole blocks of nothing first
        if not (weights > 0).any():
            weights[0, 0] = 1.0
        draw = [0.0, 0.9999999999, float(rng.random())][trial % 3]
        if trial % 8 == 1:
            draw = 0.0  # with the leading empty blocks: the first token that has weight
        assert walk_one(weights, draw) == int(walk(weights, np.array([draw]))[0])


def test_walk_picks_by_cumulative_weight_in_id_order() -> None:
    weights = np.zeros((1, 200), np.float32)
    weights[0, [3, 70, 199]] = [1.0, 2.0, 1.0]
    picks = [int(walk(weights, np.array([u]))[0]) for u in (0.0, 0.24, 0.26, 0.74, 0.76, 0.9999)]
    assert picks == [3, 3, 70, 70, 199, 199]


def _chi_squared_critical(dof: int, z: float = 3.719) -> float:
    """Upper critical value of chi-squared (Wilson-Hilferty; z 3.719 = p 1e-4)."""
    h = 2.0 / (9.0 * dof)
    return float(dof * (1.0 - h + z * math.sqrt(h)) ** 3)


@pytest.mark.parametrize(
    ("t", "p", "k", "m"),
    [(1.0, 1.0, 0, 0.0), (0.8, 0.95, 0, 0.0), (1.3, 0.9, 20, 0.0), (1.0, 1.0, 0, 0.05)],
)
def test_frequencies_follow_the_definition(t: float, p: float, k: int, m: float) -> None:
    """A chi-squared test of 40,000 draws against the kept, renormalised distribution."""
    logits = _logits(rows=1, vocab=200, seed=11, scale=1.5)
    expected = _kept_probabilities(logits[0], t, p, k, m)
    rng = np.random.default_rng(5)
    draws = rng.random(40_000)
    rows = np.repeat(logits, len(draws), axis=0)
    sampler = Sampler(200)
    ts, ps, ks, ms = _params(len(draws), t=t, p=p, k=k, m=m)
    tokens = sampler.sample(rows, ts, ps, ks, ms, draws)
    observed = np.bincount(tokens, minlength=200)
    assert observed[expected == 0].sum() == 0  # nothing outside the kept set
    kept = expected > 0
    want = expected[kept] * len(draws)
    statistic = float((((observed[kept] - want) ** 2) / want).sum())
    dof = int(kept.sum()) - 1
    assert statistic < _chi_squared_critical(dof), (statistic, dof)


def test_same_draws_same_tokens_regardless_of_batch_neighbours() -> None:
    # Six rows take the batch path, each alone the one-row path: the two agree row by row.
    logits = _logits(rows=6, vocab=300)
    t, p, k, m = np.full(6, 1.0), np.full(6, 0.9), np.full(6, 20), np.zeros(6)
    t[2], p[4], k[5] = 0.0, 1.0, 0  # greedy and unfiltered neighbours
    draws = np.random.default_rng(7).random(6)
    together = Sampler(300).sample(logits.copy(), t, p, k, m, draws)
    alone = [
        int(
            Sampler(300).sample(
                logits[i : i + 1].copy(),
                t[i : i + 1],
                p[i : i + 1],
                k[i : i + 1],
                m[i : i + 1],
                draws[i : i + 1],
            )[0]
        )
        for i in range(6)
    ]
    assert together.tolist() == alone
