"""Export a causal LM with its KV cache to ONNX and check the graph against torch.

Graph contract (all integer inputs INT64, float tensors FP32):

- inputs ``input_ids`` [B, S], ``attention_mask`` [B, P+S] (0 = padding), ``position_ids`` [B, S],
  ``past_keys`` and ``past_values`` [layers, B, kv_heads, P, head_dim];
- outputs ``logits`` [B, vocab] (last position only: nothing else is needed to sample),
  ``present_keys`` and ``present_values`` [layers, B, kv_heads, P+S, head_dim].

B, S and P are dynamic. Rows of a batch may be left-padded (zeros at the start of their mask):
that is how the Triton model batches sequences of different lengths, and validation checks it.
"""

from __future__ import annotations

import dataclasses
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from genwire_model.checkpoint import CheckpointInfo

INPUT_NAMES = ["input_ids", "attention_mask", "position_ids", "past_keys", "past_values"]
# The additive attention mask's "masked" value: finite in FP16 (largest 65504), where float32's
# minimum (-3.4e38, what transformers uses) overflows to -inf and turns a fully masked row
# (padding in a left-padded batched prefill) into NaN under a TensorRT FP16 engine. exp(-1e4)
# is exactly 0 in FP32 and FP16, so attention over valid positions is unchanged.
MASK_VALUE = -1.0e4
OUTPUT_NAMES = ["logits", "present_keys", "present_values"]
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


def _wrapper(model: Any, num_layers: int) -> Any:
    import torch
    from transformers import DynamicCache

    class KVWrapper(torch.nn.Module):  # type: ignore[misc]
        """Stacked past tensors in, last logits and stacked present tensors out."""

        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(
            self,
            input_ids: torch.Tensor,
            attention_mask: torch.Tensor,
            position_ids: torch.Tensor,
            past_keys: torch.Tensor,
            past_values: torch.Tensor,
        ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
            cache = DynamicCache(config=self.model.config)
            for layer in range(num_layers):
                cache.update(past_keys[layer], past_values[layer], layer)
            out = self.model(
                input_ids=input_ids,
                attention_mask=additive_mask(attention_mask, input_ids.shape[1]),
                position_ids=position_ids,
                past_key_values=cache,
                use_cache=True,
            )
            present = out.past_key_values
            keys = torch.stack([present.layers[i].keys for i in range(num_layers)])
            values = torch.stack([present.layers[i].values for i in range(num_layers)])
            return out.logits[:, -1, :], keys, values

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
    return {
        "input_ids": rng.integers(0, info.vocab_size, (batch, new), dtype=np.int64),
        "attention_mask": mask,
        "position_ids": positions,
        "past_keys": rng.standard_normal(shape).astype(np.float32),
        "past_values": rng.standard_normal(shape).astype(np.float32),
    }


def export_onnx(info: CheckpointInfo, model: Any, out: Path) -> None:
    """Write the KV-cache graph of ``model`` to ``out`` (legacy tracer, opset 17)."""
    import torch

    wrapper = _wrapper(model, info.num_layers)
    sample = {k: torch.from_numpy(v) for k, v in _inputs(info, [5, 3], 2).items()}
    batch, seq, past, total = "batch", "sequence", "past_sequence", "total_sequence"
    dynamic_axes = {
        "input_ids": {0: batch, 1: seq},
        "attention_mask": {0: batch, 1: total},
        "position_ids": {0: batch, 1: seq},
        "past_keys": {1: batch, 3: past},
        "past_values": {1: batch, 3: past},
        "logits": {0: batch},
        "present_keys": {1: batch, 3: total},
        "present_values": {1: batch, 3: total},
    }
    with warnings.catch_warnings(), torch.no_grad():
        # The tracer warns about branches frozen at trace time; validation below checks
        # every shape the server uses instead.
        warnings.simplefilter("ignore")
        torch.onnx.export(
            wrapper,
            tuple(sample[name] for name in INPUT_NAMES),
            str(out),
            input_names=INPUT_NAMES,
            output_names=OUTPUT_NAMES,
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
    wrapper = _wrapper(model, info.num_layers)
    cases: dict[str, float] = {}
    for name, (lengths, new) in CASES.items():
        feeds = _inputs(info, lengths, new, seed=len(name))
        got = session.run(OUTPUT_NAMES, feeds)
        with torch.no_grad():
            want = wrapper(*(torch.from_numpy(feeds[n]) for n in INPUT_NAMES))
        diff = float(np.abs(got[0] - want[0].numpy()).max())
        # Only the valid cache columns matter: padded ones are masked out downstream.
        present_diff = float(np.abs(got[1][..., -new:, :] - want[1][..., -new:, :].numpy()).max())
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
    rng = np.random.default_rng(7)
    prompts = [rng.integers(0, info.vocab_size, n, dtype=np.int64) for n in (9, 4)]
    shape = (info.num_layers, 1, info.num_kv_heads, 0, info.head_dim)
    empty = np.zeros(shape, dtype=np.float32)
    singles, caches = [], []
    for prompt in prompts:
        n = len(prompt)
        _, keys, values = session.run(
            OUTPUT_NAMES,
            {
                "input_ids": prompt[None, :],
                "attention_mask": np.ones((1, n), dtype=np.int64),
                "position_ids": np.arange(n, dtype=np.int64)[None, :],
                "past_keys": empty,
                "past_values": empty,
            },
        )
        nxt = np.array([[3]], dtype=np.int64)
        logits, _, _ = session.run(
            OUTPUT_NAMES,
            {
                "input_ids": nxt,
                "attention_mask": np.ones((1, n + 1), dtype=np.int64),
                "position_ids": np.array([[n]], dtype=np.int64),
                "past_keys": keys,
                "past_values": values,
            },
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
    logits, _, _ = session.run(
        OUTPUT_NAMES,
        {
            "input_ids": np.array([[3], [3]], dtype=np.int64),
            "attention_mask": mask,
            "position_ids": np.array([[len(p)] for p in prompts], dtype=np.int64),
            "past_keys": np.concatenate([k for k, _ in padded], axis=1),
            "past_values": np.concatenate([v for _, v in padded], axis=1),
        },
    )
    return float(max(np.abs(logits[i] - singles[i]).max() for i in range(2)))


def _padded_prefill_diff(info: CheckpointInfo, session: Any) -> float:
    rng = np.random.default_rng(11)
    lengths = (9, 4, 1)
    prompts = [rng.integers(0, info.vocab_size, n, dtype=np.int64) for n in lengths]
    shape = (info.num_layers, 1, info.num_kv_heads, 0, info.head_dim)
    singles = []
    for prompt in prompts:
        n = len(prompt)
        logits, _, _ = session.run(
            OUTPUT_NAMES,
            {
                "input_ids": prompt[None, :],
                "attention_mask": np.ones((1, n), dtype=np.int64),
                "position_ids": np.arange(n, dtype=np.int64)[None, :],
                "past_keys": np.zeros(shape, dtype=np.float32),
                "past_values": np.zeros(shape, dtype=np.float32),
            },
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
    batch_shape = (info.num_layers, rows, info.num_kv_heads, 0, info.head_dim)
    logits, keys, values = session.run(
        OUTPUT_NAMES,
        {
            "input_ids": ids,
            "attention_mask": mask,
            "position_ids": positions,
            "past_keys": np.zeros(batch_shape, dtype=np.float32),
            "past_values": np.zeros(batch_shape, dtype=np.float32),
        },
    )
    if not (np.isfinite(keys).all() and np.isfinite(values).all()):
        return float("inf")  # NaN at padded positions would poison every later step
    return float(max(np.abs(logits[i] - singles[i]).max() for i in range(rows)))


def _native_mask_diff(info: CheckpointInfo, model: Any, session: Any) -> float:
    """The exported graph (its own FP16-safe mask) against the model's native masking."""
    import torch

    rng = np.random.default_rng(5)
    n = min(12, info.context)
    prompt = rng.integers(0, info.vocab_size, (1, n), dtype=np.int64)
    empty = np.zeros((info.num_layers, 1, info.num_kv_heads, 0, info.head_dim), np.float32)
    logits, _, _ = session.run(
        OUTPUT_NAMES,
        {
            "input_ids": prompt,
            "attention_mask": np.ones((1, n), dtype=np.int64),
            "position_ids": np.arange(n, dtype=np.int64)[None, :],
            "past_keys": empty,
            "past_values": empty,
        },
    )
    with torch.no_grad():
        native = model(input_ids=torch.from_numpy(prompt), use_cache=False).logits[0, -1]
    return float(np.abs(logits[0] - native.numpy()).max())
