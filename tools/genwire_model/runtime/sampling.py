"""Token sampling on CPU with numpy, vectorised over the batch, with a partial sort.

Definition (the reference, ``sample_reference``, computes it with a full sort per row):

1. ``z = logits / temperature`` (float32), ``e = exp(z - max z)``: unnormalised probabilities,
   the most likely token at 1.0; a logit of -inf (masked) has probability 0.
2. Tokens are ranked by (probability descending, token id ascending): a total order, so ties
   are broken the same way everywhere.
3. ``min_p`` keeps the tokens with ``e >= min_p`` (``p >= min_p * p_max``); ``top_k`` keeps the
   first k of those; ``top_p`` keeps the shortest prefix of the rest whose mass reaches
   ``top_p`` times their mass. Each filter is a prefix of the ranking.
4. One uniform draw ``u`` per sampled row (from the request's own generator) picks the first
   kept token, walking the kept tokens in token-id order, whose cumulative mass exceeds
   ``u`` times the kept mass.

The fast path (``Sampler.sample``) sorts no token ids: it ranks each filtered row's probability
*values* — the head only, selected with ``np.partition`` and then sorted, or the whole row
sorted where numpy's SIMD sort is faster (``partial_is_faster``, measured at start) — and sums the
head for top-p (further only when a nucleus reaches past it), takes the value at the cut as a
threshold on the row and resolves a run of equal values across the cut by lower ids, so the cut
is exact by construction. Walking the kept tokens in id order uses block sums (64 tokens a
block) and one block's cumulative sum, not a cumulative sum over the vocabulary. The reference
and the fast path share the walk, so the same draws give the same tokens (tested, and a
chi-squared test holds the frequencies to the definition). The order of the filters is vLLM V1's
(min_p after temperature, then top-k / top-p over what min_p kept). Temperature 0 or top_k 1 is
greedy (the first maximum), and so is a temperature whose reciprocal overflows float32
(``MIN_TEMPERATURE``: the limit T -> 0). A batch of one row (every decode step of a lone one-choice
request, and each lone prefill) takes the same steps with scalar bookkeeping
(``Sampler._sample_one``, ``walk_one``): 40 % less time per step in the decode loop there.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import numpy.typing as npt

Array = npt.NDArray[Any]


def log_softmax(logits: Array) -> Array:
    """Row-wise log-softmax of a [B, V] float32 array."""
    shifted = logits - logits.max(axis=-1, keepdims=True)
    result: Array = shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))
    return result


def logsumexp(logits: Array) -> Array:
    """Row-wise log of the sum of exponentials of a [B, V] float32 array (float32 [B])."""
    top = logits.max(axis=1)
    result: Array = top + np.log(np.exp(logits - top[:, None]).sum(axis=1))
    return result


def top_logprobs(logits: Array, lse: Array, k: int) -> tuple[Array, Array]:
    """The ``k`` most likely tokens per row (ids int64 [B, k], log-probabilities float32
    [B, k]), most likely first, ties by lower id."""
    rows, vocab = logits.shape
    k = min(k, vocab)
    if k < vocab:
        idx = np.argpartition(-logits, k - 1, axis=1)[:, :k]
    else:
        idx = np.broadcast_to(np.arange(vocab), (rows, vocab))
    vals = np.take_along_axis(logits, idx, axis=1)
    if k < vocab:
        # argpartition picks any of the tokens tied at the k-th value: keep the lower ids.
        kth = vals.min(axis=1)
        for i in np.flatnonzero((logits >= kth[:, None]).sum(axis=1) > k):
            idx[i] = np.lexsort((np.arange(vocab), -logits[i]))[:k]
            vals[i] = logits[i, idx[i]]
    order = np.lexsort((idx, -vals), axis=1)
    idx = np.take_along_axis(idx, order, axis=1)
    lps = np.take_along_axis(vals, order, axis=1) - lse[:, None]
    return idx.astype(np.int64), lps.astype(np.float32)


def _probabilities(logits: Array, temperature: Array) -> Array:
    """Unnormalised probabilities [R, V] float32 after temperature, the most likely at 1:
    ``exp((logits - max) / temperature)`` (three passes, one buffer)."""
    result: Array = np.subtract(logits, logits.max(axis=1, keepdims=True))
    np.multiply(result, (1.0 / temperature).astype(np.float32)[:, None], out=result)
    np.exp(result, out=result)
    return result


FLOAT32_MAX = np.float32(np.finfo(np.float32).max)
"""Where a penalised logit stops (``scheduler._Sequence.process``, ``sampling_torch.penalise``):
+inf cannot be ranked."""


def _least_sampled_temperature() -> float:
    """The least temperature whose reciprocal, as ``_probabilities`` computes it (a float64
    division rounded to float32), is finite."""
    t = 1.0 / (2.0**128 - 2.0**103)  # float32 rounds up to inf from 2**128 - 2**103 (half an ulp)
    with np.errstate(over="ignore"):  # the overflow is what is looked for
        while not np.isfinite(np.float32(1.0 / t)):
            t = float(np.nextafter(t, 1.0))
        while np.isfinite(np.float32(1.0 / float(np.nextafter(t, 0.0)))):
            t = float(np.nextafter(t, 0.0))
    return t


MIN_TEMPERATURE = _least_sampled_temperature()
"""The least temperature that samples (about 2.9e-39); any below it is greedy, as 0 is. The API
takes any temperature >= 0, and below this ``1 / T`` overflows float32: the most likely token's
``exp(0 * inf)`` would be NaN and every other 0, a row nothing can be drawn from. Greedy is the
limit of T -> 0, so it is what such a temperature means."""


def sampled_rows(temperature: Array, top_k: Array) -> Array:
    """Which rows sample (bool [R]); the others are greedy: a temperature under
    ``MIN_TEMPERATURE`` (0 included) or top_k 1."""
    result: Array = (np.asarray(temperature, np.float64) >= MIN_TEMPERATURE) & (
        np.asarray(top_k) != 1
    )
    return result


def is_sampled(temperature: float, top_k: int) -> bool:
    """``sampled_rows`` for one row, on Python scalars."""
    return temperature >= MIN_TEMPERATURE and top_k != 1


BLOCK = 64


def walk(weights: Array, draws: Array) -> Array:
    """Per row, the first token (id order) whose cumulative weight exceeds ``draw`` times the
    row's total weight (weights >= 0, float32 [R, V]; a zero-weight token is never picked)."""
    rows, vocab = weights.shape
    if vocab % BLOCK:
        weights = np.pad(weights, ((0, 0), (0, BLOCK - vocab % BLOCK)))
    blocks = weights.reshape(rows, -1, BLOCK)
    block_mass = np.cumsum(blocks.sum(axis=2), axis=1, dtype=np.float64)
    target = draws * block_mass[:, -1]
    block = np.minimum((block_mass <= target[:, None]).sum(axis=1), blocks.shape[1] - 1)
    positions = np.arange(rows)
    before = np.where(block > 0, block_mass[positions, block - 1], 0.0)
    inner = np.cumsum(blocks[positions, block].astype(np.float64), axis=1) + before[:, None]
    offset = np.minimum((inner <= target[:, None]).sum(axis=1), BLOCK - 1)
    token = block * BLOCK + offset
    # Rounding at the very end of a row must not land on a zero-weight token (or padding).
    bad = np.flatnonzero((token >= vocab) | (weights[positions, np.minimum(token, vocab - 1)] <= 0))
    for i in bad:
        token[i] = int(np.flatnonzero(weights[i, :vocab] > 0)[-1])
    result: Array = token.astype(np.int64)
    return result


def walk_one(weights: Array, draw: float) -> int:
    """``walk`` on one row (``weights`` float32 [1, V]), with the same arithmetic in the same
    order (so the same token), in under half its numpy calls: at batch 1 the calls' own
    overhead, not the vocabulary, is most of a step's sampling."""
    vocab = weights.shape[1]
    row = weights[0]
    if vocab % BLOCK:
        row = np.pad(row, (0, BLOCK - vocab % BLOCK))
    blocks = row.reshape(-1, BLOCK)
    block_mass = np.cumsum(blocks.sum(axis=1), dtype=np.float64)
    target = draw * float(block_mass[-1])
    block = min(int(np.count_nonzero(block_mass <= target)), len(block_mass) - 1)
    before = float(block_mass[block - 1]) if block > 0 else 0.0
    inner = np.cumsum(blocks[block].astype(np.float64)) + before
    token = block * BLOCK + min(int(np.count_nonzero(inner <= target)), BLOCK - 1)
    # Rounding at the very end of a row must not land on a zero-weight token (or padding).
    if token >= vocab or row[token] <= 0:
        token = int(np.flatnonzero(row[:vocab] > 0)[-1])
    return token


def _kept_count(ranked: Array, mass: float, min_p: Any, top_k: int, top_p: float) -> int:
    """How many of the ranked (descending) probabilities the filters keep; ``mass`` is the
    mass of the row's tokens that pass min_p."""
    count = int(((ranked >= min_p) & (ranked > 0.0)).sum())
    cumulative = np.cumsum(ranked[:count].astype(np.float64))
    if 0 < top_k < count:
        count = top_k
        mass = float(cumulative[count - 1])
    if top_p < 1.0:
        limit = top_p * mass
        count = min(int((cumulative[:count] < limit).sum()) + 1, count)
    return max(count, 1)


def sample_reference(
    logits: Array,
    temperature: Array,
    top_p: Array,
    top_k: Array,
    min_p: Array,
    draws: Array,
) -> Array:
    """The definition, one full sort per row (for tests)."""
    rows, vocab = logits.shape
    tokens: Array = np.argmax(logits, axis=1).astype(np.int64)
    ids = np.arange(vocab)
    for i in range(rows):
        if not is_sampled(float(temperature[i]), int(top_k[i])):
            continue
        e = _probabilities(logits[i : i + 1], temperature[i : i + 1])[0]
        order = np.lexsort((ids, -e))
        floor = np.float32(min_p[i])  # compared in float32, as the fast path does
        passing = (e >= floor) & (e > 0.0)
        mass = float(np.where(passing, e, np.float32(0.0)).sum(dtype=np.float64))
        k = int(top_k[i]) if 0 < int(top_k[i]) < vocab else 0
        count = _kept_count(e[order], mass, floor, k, float(top_p[i]))
        weights = np.zeros(vocab, np.float32)
        kept = order[:count]
        weights[kept] = e[kept]
        tokens[i] = walk(weights[None, :], draws[i : i + 1])[0]
    return tokens


HEAD = 256  # ranked probabilities summed for top-p before looking further


def ranked_values(values: Array, width: int, partial: bool = True) -> Array:
    """Each row's largest ``width`` values, negated, ascending: ``np.sort(-values)[:, :width]``
    exactly. ``partial``: a selection (``np.partition``), then a sort of those ``width`` values;
    otherwise the whole row sorted (every value, so wider than asked)."""
    negated: Array = np.negative(values)
    if not partial or width >= values.shape[1]:
        negated.sort(axis=1)
        return negated
    head: Array = np.partition(negated, width - 1, axis=1)[:, :width]
    head.sort(axis=1)
    return head


def partial_is_faster(vocab: int, rows: int = 8, tries: int = 5, width: int = 4 * HEAD + 1) -> bool:
    """Whether a selection then a sort of ``width`` values beats a full sort of rows of
    ``vocab`` values on this machine (best of ``tries`` each: ~10 ms once at a vocabulary of
    4,096, growing with it). ``width``: what a head needs in practice (the default model's
    settles at 1,024 at T 0.8, top-p 0.95). The two give the same values; which is faster
    depends on the CPU and numpy: numpy 1.26 sorts float32 rows with SIMD only on AVX-512, and
    on an AVX2 machine a full sort of 4,096 values costs 11x the selection of 256 and 2.5x
    that of 1,025 (docs/model.md *Round 12*)."""
    values = np.random.default_rng(0).random((rows, vocab), dtype=np.float32)
    width = min(vocab, width)
    best: dict[bool, float] = {}
    for _ in range(tries):
        for partial in (True, False):
            started = time.perf_counter()
            ranked_values(values, width, partial)
            spent = time.perf_counter() - started
            best[partial] = min(spent, best.get(partial, spent))
    return best[True] < best[False]


class Sampler:
    """The fast path; remembers how far down the ranking recent nuclei reached.

    ``partial``: rank each row's head by selection (``ranked_values``); None measures which is
    faster here (``partial_is_faster``). The tokens are the same either way."""

    def __init__(self, vocab: int, partial: bool | None = None) -> None:
        self.vocab = vocab
        self.head = min(vocab, HEAD)
        self.partial = partial_is_faster(vocab) if partial is None else partial
        self.ties = 0  # rows whose cut fell inside a run of equal probabilities (tests)
        self.beyond = 0  # rows whose nucleus reached past the head (tests)

    def sample(
        self,
        logits: Array,
        temperature: Array,
        top_p: Array,
        top_k: Array,
        min_p: Array,
        draws: Array,
    ) -> Array:
        """One token per row of ``logits`` [R, V] (float32, -inf = masked).

        ``draws``: one uniform [0, 1) per row (used only by sampled rows).
        """
        vocab = self.vocab
        if len(logits) == 1:
            return np.array(
                [self._sample_one(logits, temperature, top_p, top_k, min_p, draws)], np.int64
            )
        tokens: Array = np.argmax(logits, axis=1).astype(np.int64)
        sampled = np.flatnonzero(sampled_rows(temperature, top_k))
        if sampled.size == 0:
            return tokens
        every = sampled.size == len(tokens)  # all rows sampled: slices, not copies
        probs = _probabilities(
            logits if every else logits[sampled], temperature if every else temperature[sampled]
        )
        ks = np.where((top_k > 0) & (top_k < vocab), top_k, 0)
        ps, mps, us = top_p, min_p, draws
        if not every:
            ks, ps, mps, us = ks[sampled], ps[sampled], mps[sampled], us[sampled]
        rows = np.flatnonzero((ks > 0) | (ps < 1.0) | (mps > 0.0))
        if rows.size == len(probs):
            self._keep(probs, ks, ps, mps)
        elif rows.size:
            part = probs[rows]
            self._keep(part, ks[rows], ps[rows], mps[rows])
            probs[rows] = part
        chosen = walk(probs, us)
        if every:
            return chosen
        tokens[sampled] = chosen
        return tokens

    def _sample_one(
        self,
        logits: Array,
        temperature: Array,
        top_p: Array,
        top_k: Array,
        min_p: Array,
        draws: Array,
    ) -> int:
        """``sample`` on a batch of one row, the same steps with Python scalars for the
        bookkeeping (the tests hold it to the reference): at batch 1 the batch path's ~60 numpy
        calls together cost more than the row's own work (docs/model.md, *Round 15*)."""
        t, k = float(temperature[0]), int(top_k[0])
        if not is_sampled(t, k):
            return int(np.argmax(logits[0]))
        probs = _probabilities(logits, temperature[:1])
        k = k if 0 < k < self.vocab else 0
        p, m = float(top_p[0]), float(min_p[0])
        if m > 0.0:
            np.multiply(probs, probs >= np.float32(m), out=probs)
        if k > 0 or p < 1.0:
            count = int(np.count_nonzero(probs))
            if 0 < k < count or p < 1.0:
                self._cut_one(probs, count, k, p)
        return walk_one(probs, float(draws[0]))

    def _cut_one(self, kept: Array, count: int, k: int, p: float) -> None:
        """``_cut`` on one row (``kept`` [1, V]), step for step."""
        vocab = kept.shape[1]
        truncated = 0 < k < count
        if truncated:
            count = k
        head = min(vocab, max(self.head, k))
        ranked = ranked_values(kept, head + 1, self.partial)[0]
        cumulative = -np.cumsum(ranked[:head], dtype=np.float64)
        mass = (
            float(cumulative[min(count, head) - 1])
            if truncated
            else float(kept.sum(axis=1, dtype=np.float64)[0])
        )
        limit = p * mass
        nucleus = int(np.count_nonzero(cumulative < limit)) + 1
        full: Array | None = None
        if p < 1.0 and nucleus > head and count > head:
            self.beyond += 1
            full = ranked if len(ranked) == vocab else np.sort(np.negative(kept[0]))
            more = cumulative[-1] - np.cumsum(full[head:], dtype=np.float64)
            nucleus = head + int(np.count_nonzero(more < limit)) + 1
        nucleus = min(nucleus, count)
        cut = max(nucleus if p < 1.0 else count, 1)
        if p < 1.0:
            self.head = min(vocab, max(HEAD, 1 << max(0, cut - 1).bit_length()))
        follow = min(cut, vocab - 1)
        values = full if full is not None else ranked
        last = len(values) - 1
        threshold, after = -values[min(cut - 1, last)], -values[min(follow, last)]
        row = kept[0]
        if cut < vocab and after == threshold:  # a run of equal values across the cut
            self.ties += 1
            equal = np.flatnonzero(row == threshold)
            above = int(np.count_nonzero(row > threshold))
            row[equal[cut - above :]] = 0.0
        np.multiply(row, row >= threshold, out=row)

    def _keep(self, kept: Array, ks: Array, ps: Array, mps: Array) -> None:
        """Set to 0, in place, the probability of every token the filters drop."""
        rows = kept.shape[0]
        if mps.max() > 0.0:
            np.multiply(kept, kept >= mps.astype(np.float32)[:, None], out=kept)
        count = np.count_nonzero(kept, axis=1)
        cut_rows = np.flatnonzero(((ks > 0) & (ks < count)) | (ps < 1.0))
        if cut_rows.size == 0:
            return  # min_p alone
        if cut_rows.size < rows:
            part = kept[cut_rows]
            self._cut(part, count[cut_rows], ks[cut_rows], ps[cut_rows])
            kept[cut_rows] = part
        else:
            self._cut(kept, count, ks, ps)

    def _cut(self, kept: Array, count: Array, ks: Array, ps: Array) -> None:
        """Top-k / top-p on rows that min_p already filtered (``count``: how many of each row
        are above 0)."""
        vocab = kept.shape[1]
        truncated = (ks > 0) & (ks < count)
        count = np.where(truncated, ks, count)
        mass = kept.sum(axis=1, dtype=np.float64)  # passing mass, id order (as the reference)
        n = np.arange(len(kept))
        head = min(vocab, max(self.head, int(ks.max())))
        # Values only, most likely first (negated: ascending): the head, and the value after
        # it for a cut at its end; no token ids are sorted.
        ranked = ranked_values(kept, head + 1, self.partial)
        # -cumsum(-x) == cumsum(x) exactly: negation is exact.
        cumulative = -np.cumsum(ranked[:, :head], axis=1, dtype=np.float64)
        mass = np.where(truncated, cumulative[n, np.minimum(count, head) - 1], mass)
        limit = ps * mass
        # Prefix (within the head) whose mass stays below the limit: the nucleus ends after it.
        nucleus = (cumulative < limit[:, None]).sum(axis=1) + 1
        beyond: dict[int, Array] = {}  # rows whose nucleus reaches past the head: all values
        for i in np.flatnonzero((ps < 1.0) & (nucleus > head) & (count > head)):
            self.beyond += 1
            full = ranked[i] if ranked.shape[1] == vocab else np.sort(np.negative(kept[i]))
            more = cumulative[i, -1] - np.cumsum(full[head:], dtype=np.float64)
            nucleus[i] = head + int((more < limit[i]).sum()) + 1
            beyond[int(i)] = full
        nucleus = np.minimum(nucleus, count)
        cut = np.maximum(np.where(ps < 1.0, nucleus, count), 1)
        if ps.min() < 1.0:  # the head follows what three rows in four needed recently
            wanted = int(np.sort(cut)[(3 * (cut.size - 1)) // 4])
            self.head = min(vocab, max(HEAD, 1 << max(0, wanted - 1).bit_length()))
        # The value at the cut and the one after it (the cut is inside the head unless the
        # row is one of ``beyond``).
        follow = np.minimum(cut, vocab - 1)
        last = ranked.shape[1] - 1
        threshold = -ranked[n, np.minimum(cut - 1, last)]
        after = -ranked[n, np.minimum(follow, last)]
        for i, full in beyond.items():
            threshold[i], after[i] = -full[cut[i] - 1], -full[follow[i]]
        # A run of equal probabilities across the cut: keep its lower ids only.
        for i in np.flatnonzero((cut < vocab) & (after == threshold)):
            self.ties += 1
            equal = np.flatnonzero(kept[i] == threshold[i])
            above = int((kept[i] > threshold[i]).sum())
            kept[i, equal[cut[i] - above :]] = 0.0
        np.multiply(kept, kept >= threshold[:, None], out=kept)
