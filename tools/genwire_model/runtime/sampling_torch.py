"""Token sampling with torch on the logits' own device (the TensorRT runner's GPU; CPU in tests).

The rule is ``sampling.py``'s, step for step, so that the same logits and the same uniform
draws give the same token ids as ``sampling.Sampler`` (and ``sample_reference``):

1. ``e = exp((logits - max) * float32(1 / temperature))``, float32, the most likely at 1.0;
2. tokens ranked by (probability descending, token id ascending) -- a stable descending sort,
   so a run of equal probabilities across a cut keeps its lower ids;
3. ``min_p`` keeps ``e >= float32(min_p)``; ``top_k`` the first k of those; ``top_p`` the
   shortest prefix of the rest whose mass (float64 cumulative sum) reaches ``top_p`` times
   their mass;
4. one uniform draw per sampled row picks the first kept token, walking in token-id order,
   whose cumulative mass exceeds ``draw`` times the kept mass. The walk reproduces numpy's
   arithmetic: float32 sums of 64-token blocks (numpy's eight-accumulator pairwise order),
   a float64 cumulative sum over the blocks, then a float64 cumulative sum inside the block.

Temperature 0 or top_k 1 is greedy (the first maximum), and so is a temperature whose reciprocal
overflows float32 (``sampling.MIN_TEMPERATURE``: the limit T -> 0, where ``exp(0 * inf)`` would
be NaN). A GPU has no partial-sort advantage to chase: a stable sort of every sampled row is one
kernel.

One difference is the exponential itself: here ``exp`` is computed in float64 and rounded to
float32 (the correctly rounded value, the same on a CPU and a GPU), while numpy's vectorised
float32 ``exp`` (AVX2/AVX-512 polynomials) is off by one unit in the last place for about 40 %
of its inputs. The same probabilities give the same tokens (tested with numpy's ``exp``
replaced by the correctly rounded one); with numpy's own ``exp`` the two pick different
tokens only where a draw or a cut falls within that rounding of a boundary (tested: rare).

The per-request options (logit_bias, the min_tokens suppression, repetition / frequency /
presence penalties, the constraint hook's allowed-token masks) have their batched forms here,
each computing what ``scheduler._Sequence.process`` and ``Scheduler._mask`` compute in numpy
(same float32 / float64 steps). Option values travel to the device; logits never leave it
(only the chosen ids and their log-probabilities, and the ``top_logprobs`` rows when asked).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

from .sampling import FLOAT32_MAX, sampled_rows

Array = npt.NDArray[Any]
Tensor = Any  # torch.Tensor (torch is imported lazily: the CPU runtime does not need it)

BLOCK = 64


def _torch() -> Any:
    import torch

    return torch


def _on(values: Array, like: Tensor, dtype: Any) -> Tensor:
    """A host array as a tensor on ``like``'s device (non-blocking from a pinned copy on CUDA)."""
    torch = _torch()
    tensor = torch.as_tensor(np.ascontiguousarray(values)).to(dtype)
    if like.device.type == "cuda":
        return tensor.pin_memory().to(like.device, non_blocking=True)
    return tensor.to(like.device)


def logsumexp(logits: Tensor) -> Tensor:
    """Row-wise ``max + log(sum(exp(logits - max)))`` of [B, V] float32 (float32 [B])."""
    top = logits.max(dim=1).values
    return top + (logits - top[:, None]).exp().sum(dim=1).log()


def top_logprobs(logits: Tensor, lse: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """The ``k`` most likely tokens per row (ids int64 [B, k], log-probabilities float32
    [B, k]), most likely first, ties by lower id (as ``sampling.top_logprobs``)."""
    k = min(k, int(logits.shape[1]))
    values, ids = logits.sort(dim=1, descending=True, stable=True)
    return ids[:, :k], values[:, :k] - lse[:, None]


def probabilities(logits: Tensor, temperature: Array) -> Tensor:
    """``exp((logits - max) * float32(1 / temperature))`` [R, V] float32, the exponential
    correctly rounded (computed in float64)."""
    torch = _torch()
    scale = _on(
        (1.0 / np.asarray(temperature, np.float64)).astype(np.float32), logits, torch.float32
    )
    shifted = (logits - logits.max(dim=1, keepdim=True).values) * scale[:, None]
    return shifted.double().exp().float()


def _block_sums(blocks: Tensor) -> Tensor:
    """float32 sums of [R, N, 64] blocks in numpy's pairwise order (eight accumulators, each
    summing every eighth value, combined as ((0+1)+(2+3))+((4+5)+(6+7)))."""
    lanes = blocks.reshape(*blocks.shape[:2], BLOCK // 8, 8)
    r = lanes[:, :, 0, :].clone()
    for i in range(1, BLOCK // 8):
        r = r + lanes[:, :, i, :]
    return ((r[..., 0] + r[..., 1]) + (r[..., 2] + r[..., 3])) + (
        (r[..., 4] + r[..., 5]) + (r[..., 6] + r[..., 7])
    )


def walk(weights: Tensor, draws: Tensor) -> Tensor:
    """Per row, the first token (id order) whose cumulative weight exceeds ``draw`` times the
    row's total weight (float32 [R, V] >= 0, draws float64 [R]); ``sampling.walk``'s
    arithmetic."""
    torch = _torch()
    rows, vocab = weights.shape
    padded = weights
    if vocab % BLOCK:
        padded = torch.nn.functional.pad(weights, (0, BLOCK - vocab % BLOCK))
    blocks = padded.reshape(rows, -1, BLOCK)
    count = blocks.shape[1]
    block_mass = _block_sums(blocks).double().cumsum(dim=1)
    target = draws * block_mass[:, -1]
    block = (block_mass <= target[:, None]).sum(dim=1).clamp(max=count - 1)
    n = torch.arange(rows, device=weights.device)
    before = torch.where(
        block > 0, block_mass[n, (block - 1).clamp(min=0)], torch.zeros_like(target)
    )
    inner = blocks[n, block].double().cumsum(dim=1) + before[:, None]
    offset = (inner <= target[:, None]).sum(dim=1).clamp(max=BLOCK - 1)
    token = block * BLOCK + offset
    # Rounding at the very end of a row must not land on a zero-weight token (or padding).
    positive = weights > 0
    last = vocab - 1 - positive.flip(dims=[1]).int().argmax(dim=1)
    safe = token.clamp(max=vocab - 1)
    bad = (token >= vocab) | ~positive[n, safe]
    return torch.where(bad, last, token)


def keep(probs: Tensor, top_p: Array, top_k: Array, min_p: Array) -> Tensor:
    """``probs`` [R, V] with every token the filters drop set to 0 (``sample_reference``'s
    ``_kept_count`` for every row at once)."""
    torch = _torch()
    rows, vocab = probs.shape
    floor = _on(np.asarray(min_p, np.float64).astype(np.float32), probs, torch.float32)
    probs = torch.where(probs >= floor[:, None], probs, torch.zeros_like(probs))
    ranked, order = probs.sort(dim=1, descending=True, stable=True)
    count = (ranked > 0).sum(dim=1)
    cumulative = ranked.double().cumsum(dim=1)
    mass = probs.double().sum(dim=1)
    k = _on(np.where((top_k > 0) & (top_k < vocab), top_k, 0), probs, torch.int64)
    truncated = (k > 0) & (k < count)
    count = torch.where(truncated, k, count)
    n = torch.arange(rows, device=probs.device)
    mass = torch.where(truncated, cumulative[n, (count - 1).clamp(min=0)], mass)
    p = _on(np.asarray(top_p, np.float64), probs, torch.float64)
    nucleus = (cumulative < (p * mass)[:, None]).sum(dim=1) + 1
    count = torch.where(p < 1.0, torch.minimum(nucleus, count), count).clamp(min=1)
    position = torch.arange(vocab, device=probs.device)[None, :]
    kept_ranked = torch.where(position < count[:, None], ranked, torch.zeros_like(ranked))
    return torch.zeros_like(probs).scatter_(1, order, kept_ranked)


def sample(
    logits: Tensor,
    temperature: Array,
    top_p: Array,
    top_k: Array,
    min_p: Array,
    draws: Array,
) -> Tensor:
    """One token per row of ``logits`` [R, V] (float32 tensor, -inf = masked), int64 on its
    device. The options are host arrays per row, as ``sampling.Sampler.sample`` takes them;
    ``draws``: one uniform [0, 1) per row (used only by sampled rows)."""
    torch = _torch()
    tokens = logits.argmax(dim=1)
    sampled = np.flatnonzero(sampled_rows(temperature, top_k))
    if sampled.size == 0:
        return tokens
    every = sampled.size == len(temperature)
    index = None if every else _on(sampled, logits, torch.int64)
    part = logits if index is None else logits.index_select(0, index)

    def pick(values: Array) -> Array:
        return values if every else values[sampled]

    probs = probabilities(part, pick(temperature))
    ks, ps, mps = pick(top_k), pick(top_p), pick(min_p)
    if ((ks > 0) & (ks < logits.shape[1])).any() or (ps < 1.0).any() or (mps > 0.0).any():
        probs = keep(probs, ps, ks, mps)
    chosen = walk(probs, _on(pick(draws), logits, torch.float64))
    if index is None:
        return chosen
    return tokens.index_copy(0, index, chosen)


# -- the per-request options, batched ---------------------------------------------------------
def add_bias(logits: Tensor, rows: Array, ids: Array, values: Array) -> None:
    """``logits[rows[j], ids[j]] += values[j]`` in place (float32; no (row, id) twice)."""
    torch = _torch()
    r, i = _on(rows, logits, torch.int64), _on(ids, logits, torch.int64)
    logits.index_put_((r, i), _on(values, logits, torch.float32), accumulate=True)


def suppress(logits: Tensor, rows: Array, ids: Array) -> None:
    """``logits[rows[j], ids[j]] = -inf`` in place."""
    torch = _torch()
    r, i = _on(rows, logits, torch.int64), _on(ids, logits, torch.int64)
    logits.index_put_((r, i), torch.tensor(float("-inf"), device=logits.device))


def penalise(
    logits: Tensor,
    rows: Array,
    counts: Array,
    seen: Array,
    repetition: Array,
    frequency: Array,
    presence: Array,
) -> None:
    """Repetition, frequency and presence penalties on ``logits[rows]`` in place.

    ``counts`` int32 [P, V] (tokens generated so far), ``seen`` bool [P, V] (generated or in
    the prompt: where the repetition penalty applies), one factor / penalty per row (1.0 and
    0.0: none). The arithmetic is numpy's in ``_Sequence.process``: repetition divides a
    positive logit and multiplies a negative one (float32); frequency is subtracted in float64
    and rounded to float32; presence in float32. A neutral value changes nothing bit for bit.
    """
    torch = _torch()
    index = _on(rows, logits, torch.int64)
    row = logits.index_select(0, index)
    count = _on(counts, logits, torch.int32)
    factor = _on(np.asarray(repetition, np.float32), logits, torch.float32)[:, None]
    where = _on(seen, logits, torch.bool)
    raised = torch.clamp(row / factor, max=float(FLOAT32_MAX))  # as numpy's: never +inf
    row = torch.where(where, torch.where(row > 0, raised, row * factor), row)
    freq = _on(np.asarray(frequency, np.float32).astype(np.float64), logits, torch.float64)
    row = (row.double() - freq[:, None] * count.double()).float()
    pres = _on(np.asarray(presence, np.float32), logits, torch.float32)[:, None]
    row = row - pres * (count > 0).float()
    logits.index_copy_(0, index, row)


def apply_masks(logits: Tensor, raw: Tensor, rows: Array, allowed: Array) -> None:
    """The constraint hook's masks (bool [M, V], True = allowed) on ``logits[rows]`` in place:
    disallowed tokens to -inf; a row left with nothing finite (min_tokens forbade all the
    grammar allows) gets the model's logits (``raw``) back on the allowed tokens."""
    torch = _torch()
    index = _on(rows, logits, torch.int64)
    mask = _on(allowed, logits, torch.bool)
    row = logits.index_select(0, index)
    row = torch.where(mask, row, torch.full_like(row, float("-inf")))
    dead = ~torch.isfinite(row).any(dim=1, keepdim=True)
    row = torch.where(dead & mask, raw.index_select(0, index), row)
    logits.index_copy_(0, index, row)
