"""Token sampling on CPU with numpy: temperature, top-k, top-p, per-request seeded generator.

Each request owns its ``numpy.random.Generator``, so the same seed gives the same tokens
whether the request runs alone or batched with others.
"""

from __future__ import annotations

import numpy as np


def log_softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise log-softmax of a [B, V] float32 array."""
    shifted = logits - logits.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


def sample_token(
    logits: np.ndarray,
    logprobs: np.ndarray,
    temperature: float,
    top_p: float,
    top_k: int,
    rng: np.random.Generator,
) -> int:
    """One token from a row of logits; ``logprobs`` is the row's log-softmax (reused).

    temperature 0 (or top_k 1) is greedy; top_k 0 and top_p 1 disable those filters.
    """
    if temperature <= 0.0 or top_k == 1:
        return int(np.argmax(logits))
    vocab = logits.shape[-1]
    if 0 < top_k < vocab:
        candidates = np.argpartition(-logits, top_k - 1)[:top_k]
    else:
        candidates = np.arange(vocab)
    # Stable ordering by probability (then token id) keeps sampling reproducible.
    order = candidates[np.lexsort((candidates, -logits[candidates]))]
    scaled = logprobs[order] / temperature
    probs = np.exp(scaled - scaled[0])
    probs /= probs.sum()
    if top_p < 1.0:
        cumulative = np.cumsum(probs)
        keep = int(np.searchsorted(cumulative, top_p, side="left")) + 1
        probs = probs[:keep] / cumulative[min(keep, len(cumulative)) - 1]
        order = order[:keep]
    cumulative = np.cumsum(probs)
    index = int(np.searchsorted(cumulative, rng.random() * cumulative[-1], side="right"))
    return int(order[min(index, len(order) - 1)])
