"""Token sampling on CPU with numpy, vectorized over the batch.

Temperature, top-k and top-p are applied per row; each request owns its
``numpy.random.Generator``, so the same seed gives the same tokens whether the request runs
alone or batched with others. Filters keep every token whose probability reaches the cut-off
(ties included) and sampling walks the kept probabilities in token-id order, so no sort of
token ids is needed (only a sort of the values, for top-p).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

TOP_P_HEAD = 1024  # values sorted for top-p before falling back to a full sort

Array = npt.NDArray[Any]


def log_softmax(logits: Array) -> Array:
    """Row-wise log-softmax of a [B, V] float32 array."""
    shifted = logits - logits.max(axis=-1, keepdims=True)
    result: Array = shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))
    return result


def sample_batch(
    logprobs: Array,
    temperature: Array,
    top_p: Array,
    top_k: Array,
    rngs: list[np.random.Generator],
) -> Array:
    """One token per row of ``logprobs`` [B, V] (the model's log-softmax).

    temperature 0 (or top_k 1) is greedy; top_k 0 and top_p 1 switch those filters off.
    """
    vocab = logprobs.shape[1]
    tokens: Array = np.argmax(logprobs, axis=1)
    sampled = np.flatnonzero((temperature > 0.0) & (top_k != 1))
    if sampled.size == 0:
        return tokens
    scaled = logprobs[sampled] / temperature[sampled, None].astype(np.float32)
    probs = np.exp(scaled - scaled.max(axis=1, keepdims=True))
    ks = top_k[sampled]
    for i in np.flatnonzero((ks > 0) & (ks < vocab)):
        kth = np.partition(probs[i], vocab - ks[i])[vocab - ks[i]]
        probs[i][probs[i] < kth] = 0.0
    ps = top_p[sampled]
    nucleus = np.flatnonzero(ps < 1.0)
    if nucleus.size:
        rows = probs[nucleus]
        limit = ps[nucleus] * rows.sum(axis=1)
        # Sorting only the largest few values is enough when they hold the nucleus' mass
        # (the usual case); rows where they do not fall back to a full sort.
        head = min(vocab, TOP_P_HEAD)
        ordered = -np.sort(-np.partition(rows, vocab - head, axis=1)[:, vocab - head :], axis=1)
        cumulative = np.cumsum(ordered, axis=1)
        short = np.flatnonzero(cumulative[:, -1] < limit)
        # Smallest prefix of the sorted probabilities whose mass reaches top_p.
        keep = np.minimum((cumulative < limit[:, None]).sum(axis=1), head - 1)
        threshold = ordered[np.arange(len(nucleus)), keep]
        for i in short:
            values = -np.sort(-rows[i])
            threshold[i] = values[min(int((np.cumsum(values) < limit[i]).sum()), vocab - 1)]
        rows[rows < threshold[:, None]] = 0.0
        probs[nucleus] = rows
    cdf = np.cumsum(probs, axis=1)
    draws = np.fromiter((rngs[i].random() for i in sampled), np.float64, sampled.size)
    # First index whose cumulative mass exceeds the draw: never a zero-probability token.
    picks = (cdf <= (draws * cdf[:, -1])[:, None]).sum(axis=1)
    tokens[sampled] = np.minimum(picks, vocab - 1)
    return tokens
