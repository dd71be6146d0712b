"""Export a causal LM with its KV cache to ONNX and check the graph against torch.

Graph contract (all integer inputs INT64, float tensors FP32; ``runtime/cache_io.py``):

- inputs ``input_ids`` [B, S], ``attention_mask`` [B, P+S] (0 = padding), ``position_ids`` [B, S],
  and per layer l ``past_key_<l>``, ``past_value_<l>`` [B, kv_heads, P, head_dim];
- outputs ``logits`` [B, vocab] (last position only: nothing else is needed to sample, so the
  head multiplies that position alone), and per layer ``present_key_<l>``,
  ``present_value_<l>`` [B, kv_heads, P+S, head_dim].

B, S and P are dynamic. Rows of a batch may be left-padded (zeros at the start of their mask):
that is how the Triton model batches sequences of different lengths, and validation checks it.
One tensor per layer rather than the layers stacked: the graph then copies the cache once per
pass (its concatenation with the new column, written into the output the runner binds), where
stacked tensors cost a split and a stack besides (docs/model.md, *Round 17*).
"""

from __future__ import annotations

import dataclasses
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from genwire_model.checkpoint import CheckpointInfo
from genwire_model.runtime.cache_io import CacheIO

# The additive attention mask's "masked" value: finite in FP16 (largest 65504), where float32's
# minimum (-3.4e38, what transformers uses) overflows to -inf and turns a fully masked row
# (padding in a left-padded batched prefill) into NaN under a TensorRT FP16 engine. exp(-1e4)
# is exactly 0 in FP32 and FP16, so attention over valid positions is unchanged.
MASK_VALUE = -1.0e4
OPSET = 17
# fp32 graph vs fp32 torch: anything above this is an export bug, not rounding.
MAX_ABS_LOGIT_DIFF = 1e-3

Array = npt.NDArray[Any]


class ExportError(RuntimeError):
    """The exported graph is missing or disagrees with the torch model."""


def load_model(info: CheckpointInfo) -> Any:
    """The checkpoint's causal LM in fp32 with eager attention (exports cleanly)."""
    import torch
    from transformers import AutoModelForCausalLM

    model: Any = AutoModelForCausalLM.from_pretrained(
        str(info.path), dtype=torch.float32, attn_implementation="eager"
    )
    model.eval()
    return model


def additive_mask(attention_mask: Any, new_tokens: Any) -> Any:
    """The 4D float mask [B, 1, S, P+S] the model adds to its attention scores.

    Built here rather than by transformers (a 4D mask is used as given): causal over the whole
    cache plus the padding of ``attention_mask`` [B, P+S] (1 = attend), 0 where attended and
    the FP16-safe ``MASK_VALUE`` elsewhere. Sizes stay symbolic under the ONNX tracer.
    """
    import torch

    total = attention_mask.shape[1]
    keys = torch.arange(total)
    queries = torch.arange(new_tokens) + (total - new_tokens)  # query i sits at column P+i
    causal = keys[None, :] <= queries[:, None]  # [S, P+S]
    allowed = causal[None, None, :, :] & (attention_mask[:, None, None, :] > 0)
    return torch.where(allowed, 0.0, MASK_VALUE).to(torch.float32)


def cache_io(info: CheckpointInfo) -> CacheIO:
    """The contract every graph exported here has (one tensor per layer)."""
    return CacheIO(info.num_layers)


def manifest_shape(info: CheckpointInfo) -> dict[str, Any]:
    """The manifest's ``shape`` of a graph exported here (what the runners size buffers and
    read the cache contract from); ``cache_io`` is absent in earlier manifests, whose graphs
    take the layers stacked."""
    return {
        "num_layers": info.num_layers,
        "num_kv_heads": info.num_kv_heads,
        "head_dim": info.head_dim,
        "vocab_size": info.vocab_size,
        "cache_io": cache_io(info).kind,
    }


def _wrapper(model: Any, num_layers: int) -> Any:
    import torch
    from transformers import DynamicCache

    class KVWrapper(torch.nn.Module):  # type: ignore[misc]
        """Per-layer past tensors in, last logits and per-layer present tensors out."""

        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(
            self,
            input_ids: torch.Tensor,
            attention_mask: torch.Tensor,
            position_ids: torch.Tensor,
            *past: torch.Tensor,
        ) -> tuple[torch.Tensor, ...]:
            cache = DynamicCache(config=self.model.config)
            for layer in range(num_layers):
                cache.update(past[2 * layer], past[2 * layer + 1], layer)
            out = self.model(
                input_ids=input_ids,
                attention_mask=additive_mask(attention_mask, input_ids.shape[1]),
                position_ids=position_ids,
                cache=cache,
                use_cache=True,
                # The head on the last position only: a prefill of S tokens otherwise
                # multiplies all S hidden states by the vocabulary's matrix to keep one row
                # (docs/model.md, *Round 19*).
                logits_to_keep=1,
            )
            present = out.cache
            tensors = [out.logits[:, -1, :]]
            for layer in range(num_layers):
                tensors += [present.layers[layer].keys, present.layers[layer].values]
            return tuple(tensors)

    return KVWrapper().eval()


def _inputs(info: CheckpointInfo, lengths: list[int], new: int, seed: int = 0) -> dict[str, Array]:
    """A left-padded batch: row i has ``lengths[i]`` valid past tokens, all share ``new``."""
    rng = np.random.default_rng(seed)
    batch, width = len(lengths), max(lengths)
    mask = np.zeros((batch, width + new), dtype=np.int64)
    positions = np.zeros((batch, new), dtype=np.int64)
    for row, length in enumerate(lengths):
        mask[row, width - length :] = 1
        positions[row] = np.arange(length, length + new)
    shape = (info.num_layers, batch, info.num_kv_heads, width, info.head_dim)
    kv = (
        rng.standard_normal(shape).astype(np.float32),
        rng.standard_normal(shape).astype(np.float32),
    )
    ids = rng.integers(0, info.vocab_size, (batch, new), dtype=np.int64)
    return cache_io(info).feeds(ids, mask, positions, kv)


def run_graph(
    session: Any, io: CacheIO, ids: Array, mask: Array, positions: Array, kv: tuple[Array, Array]
) -> tuple[Array, Array, Array]:
    """One pass of an ONNX Runtime session over stacked ``kv``: logits, keys, values (stacked)."""
    got = session.run(list(io.output_names), io.feeds(ids, mask, positions, kv))
    keys, values = io.join(got[1:], np.stack)
    return got[0], keys, values


def _empty(info: CheckpointInfo, rows: int = 1) -> tuple[Array, Array]:
    shape = (info.num_layers, rows, info.num_kv_heads, 0, info.head_dim)
    return np.zeros(shape, dtype=np.float32), np.zeros(shape, dtype=np.float32)


def export_onnx(info: CheckpointInfo, model: Any, out: Path) -> None:
    """Write the KV-cache graph of ``model`` to ``out`` (legacy tracer, opset 17)."""
    import torch

    io = cache_io(info)
    wrapper = _wrapper(model, info.num_layers)
    sample = {k: torch.from_numpy(v) for k, v in _inputs(info, [5, 3], 2).items()}
    batch, seq, past, total = "batch", "sequence", "past_sequence", "total_sequence"
    dynamic_axes: dict[str, dict[int, str]] = {
        "input_ids": {0: batch, 1: seq},
        "attention_mask": {0: batch, 1: total},
        "position_ids": {0: batch, 1: seq},
        "logits": {0: batch},
    }
    for name in io.past_names:
        dynamic_axes[name] = {0: batch, io.column_axis: past}
    for name in io.present_names:
        dynamic_axes[name] = {0: batch, io.column_axis: total}
    with warnings.catch_warnings(), torch.no_grad():
        # The tracer warns about branches frozen at trace time; validation below checks
        # every shape the server uses instead.
        warnings.simplefilter("ignore")
        torch.onnx.export(
            wrapper,
            tuple(sample[name] for name in io.input_names),
            str(out),
            input_names=list(io.input_names),
            output_names=list(io.output_names),
            dynamic_axes=dynamic_axes,
            opset_version=OPSET,
            dynamo=False,
            do_constant_folding=True,
        )
    if not out.is_file():
        raise ExportError(f"torch.onnx.export wrote no file at {out}")


@dataclasses.dataclass(frozen=True)
class Validation:
    """Largest absolute logit differences between ONNX Runtime and torch, per case."""

    cases: dict[str, float]
    max_abs_logit_diff: float

    def to_json(self) -> dict[str, Any]:
        """For the manifest."""
        return {"cases": self.cases, "max_abs_logit_diff": self.max_abs_logit_diff}


# name → (valid past lengths per row, new tokens): prefill, decode, padded decode, chunked.
CASES: dict[str, tuple[list[int], int]] = {
    "prefill_b1_s9": ([0], 9),
    "decode_b1_p7": ([7], 1),
    "decode_b4_left_padded": ([7, 3, 1, 5], 1),
    "prefill_b2_s6_p11_padded": ([11, 4], 6),
}


def validate_onnx(info: CheckpointInfo, model: Any, onnx_path: Path) -> Validation:
    """Run every case through ONNX Runtime and torch; raise ExportError if they disagree.

    Also checks the batching scheme end to end: two prompts prefilled separately, merged into
    one left-padded cache and decoded together give the same logits as decoded one at a time;
    and prompts prefilled together, left-padded, give the same logits as prefilled alone (with
    finite keys and values at the padding, which later steps mask but still multiply).
    """
    import onnxruntime as ort
    import torch

    options = ort.SessionOptions()
    options.intra_op_num_threads = 2
    session = ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
    io = cache_io(info)
    wrapper = _wrapper(model, info.num_layers)
    cases: dict[str, float] = {}
    for name, (lengths, new) in CASES.items():
        feeds = _inputs(info, lengths, new, seed=len(name))
        got = session.run(list(io.output_names), feeds)
        with torch.no_grad():
            want = wrapper(*(torch.from_numpy(feeds[n]) for n in io.input_names))
        diff = float(np.abs(got[0] - want[0].numpy()).max())
        # Only the valid cache columns matter: padded ones are masked out downstream.
        present_diff = max(
            float(np.abs(mine[..., -new:, :] - theirs[..., -new:, :].numpy()).max())
            for mine, theirs in zip(got[1:], want[1:], strict=True)
        )
        cases[name] = max(diff, present_diff)
    cases["native_mask_vs_exported"] = _native_mask_diff(info, model, session)
    cases["merged_batch_vs_single"] = _merged_batch_diff(info, session)
    cases["padded_prefill_vs_single"] = _padded_prefill_diff(info, session)
    worst = max(cases.values())
    if not np.isfinite(worst) or worst > MAX_ABS_LOGIT_DIFF:
        raise ExportError(
            f"ONNX graph disagrees with torch: largest logit difference {worst:.3g} "
            f"> {MAX_ABS_LOGIT_DIFF} ({cases})"
        )
    return Validation(cases, worst)


def _merged_batch_diff(info: CheckpointInfo, session: Any) -> float:
    io = cache_io(info)
    rng = np.random.default_rng(7)
    prompts = [rng.integers(0, info.vocab_size, n, dtype=np.int64) for n in (9, 4)]
    singles, caches = [], []
    for prompt in prompts:
        n = len(prompt)
        ones = np.ones((1, n), dtype=np.int64)
        _, keys, values = run_graph(
            session, io, prompt[None, :], ones, np.arange(n, dtype=np.int64)[None, :], _empty(info)
        )
        logits, _, _ = run_graph(
            session,
            io,
            np.array([[3]], dtype=np.int64),
            np.ones((1, n + 1), dtype=np.int64),
            np.array([[n]], dtype=np.int64),
            (keys, values),
        )
        singles.append(logits[0])
        caches.append((keys, values))
    width = max(len(p) for p in prompts)
    padded = []
    for (keys, values), prompt in zip(caches, prompts, strict=True):
        pad = [(0, 0)] * 3 + [(width - len(prompt), 0), (0, 0)]
        padded.append((np.pad(keys, pad), np.pad(values, pad)))
    mask = np.zeros((2, width + 1), dtype=np.int64)
    for row, prompt in enumerate(prompts):
        mask[row, width - len(prompt) :] = 1
    merged = (
        np.concatenate([k for k, _ in padded], axis=1),
        np.concatenate([v for _, v in padded], axis=1),
    )
    logits, _, _ = run_graph(
        session,
        io,
        np.array([[3], [3]], dtype=np.int64),
        mask,
        np.array([[len(p)] for p in prompts], dtype=np.int64),
        merged,
    )
    return float(max(np.abs(logits[i] - singles[i]).max() for i in range(2)))


def _padded_prefill_diff(info: CheckpointInfo, session: Any) -> float:
    io = cache_io(info)
    rng = np.random.default_rng(11)
    lengths = (9, 4, 1)
    prompts = [rng.integers(0, info.vocab_size, n, dtype=np.int64) for n in lengths]
    singles = []
    for prompt in prompts:
        n = len(prompt)
        logits, _, _ = run_graph(
            session,
            io,
            prompt[None, :],
            np.ones((1, n), dtype=np.int64),
            np.arange(n, dtype=np.int64)[None, :],
            _empty(info),
        )
        singles.append(logits[0])
    width, rows = max(lengths), len(lengths)
    ids = np.zeros((rows, width), dtype=np.int64)
    positions = np.zeros((rows, width), dtype=np.int64)
    mask = np.zeros((rows, width), dtype=np.int64)
    for row, prompt in enumerate(prompts):
        n = len(prompt)
        ids[row, width - n :] = prompt
        positions[row, width - n :] = np.arange(n)
        mask[row, width - n :] = 1
    logits, keys, values = run_graph(session, io, ids, mask, positions, _empty(info, rows))
    if not (np.isfinite(keys).all() and np.isfinite(values).all()):
        return float("inf")  # NaN at padded positions would poison every later step
    return float(max(np.abs(logits[i] - singles[i]).max() for i in range(rows)))


def _native_mask_diff(info: CheckpointInfo, model: Any, session: Any) -> float:
    """The exported graph (its own FP16-safe mask) against the model's native masking."""
    import torch

    rng = np.random.default_rng(5)
    n = min(12, info.context)
    prompt = rng.integers(0, info.vocab_size, (1, n), dtype=np.int64)
    logits, _, _ = run_graph(
        session,
        cache_io(info),
        prompt,
        np.ones((1, n), dtype=np.int64),
        np.arange(n, dtype=np.int64)[None, :],
        _empty(info),
    )
    with torch.no_grad():
        native = model(input_ids=torch.from_numpy(prompt), use_cache=False).logits[0, -1]
    return float(np.abs(logits[0] - native.numpy()).max())
