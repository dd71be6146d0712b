"""The exported graph's attention mask is FP16-safe and still exact (ONNX Runtime, no GPU).

transformers masks with float32's minimum (-3.4e38), which overflows to -inf in FP16: a row
that masks everything (padding in a left-padded batched prefill) turns into NaN under a
TensorRT FP16 engine and poisons the cache. export.py builds the mask itself with a finite
large negative; these tests pin that it is FP16-finite, that no overflowing constant is left in
the graph, and that left-padded multi-row prefills stay finite and equal to single-row ones.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from genwire_model import export
from genwire_model.checkpoint import CheckpointInfo, inspect_checkpoint
from onnx import numpy_helper


def test_mask_value_is_finite_in_fp16_and_masks_completely() -> None:
    assert np.isfinite(np.float16(export.MASK_VALUE))
    assert np.float16(export.MASK_VALUE) == np.float16(-1e4)
    # exp of a masked score underflows to exactly 0 in both precisions: nothing leaks through.
    assert np.exp(np.float16(export.MASK_VALUE)) == 0.0
    assert np.exp(np.float32(export.MASK_VALUE)) == 0.0


def test_additive_mask_is_causal_over_the_cache_and_hides_padding() -> None:
    import torch

    # Row 0: two padded columns, then 3 past + 2 new tokens; row 1: nothing padded.
    mask = torch.tensor([[0, 0, 1, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1, 1]])
    got = export.additive_mask(mask, 2).numpy()
    assert got.shape == (2, 1, 2, 7) and got.dtype == np.float32
    attended = got == 0.0
    # Query 0 sits at column 5: columns 0..5 minus row 0's padding; query 1 also sees column 6.
    assert attended[0, 0].tolist() == [
        [False, False, True, True, True, True, False],
        [False, False, True, True, True, True, True],
    ]
    assert attended[1, 0, 0].tolist() == [True] * 6 + [False]
    assert set(np.unique(got)) == {0.0, np.float32(export.MASK_VALUE)}


@dataclasses.dataclass
class Exported:
    path: Path
    info: CheckpointInfo
    validation: export.Validation


@pytest.fixture(scope="module")
def exported(tiny_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Exported:
    """The tiny checkpoint exported and validated (no version build: export alone)."""
    info = inspect_checkpoint(tiny_checkpoint)
    model = export.load_model(info)
    path = tmp_path_factory.mktemp("export") / "model.onnx"
    export.export_onnx(info, model, path)
    return Exported(path, info, export.validate_onnx(info, model, path))


def test_graph_holds_no_constant_that_overflows_fp16(exported: Exported) -> None:
    graph = onnx.load(str(exported.path)).graph
    tensors = list(graph.initializer)
    for node in graph.node:
        tensors += [a.t for a in node.attribute if a.type == onnx.AttributeProto.TENSOR]
    worst = 0.0
    for tensor in tensors:
        values = numpy_helper.to_array(tensor)
        if values.dtype.kind == "f" and values.size:
            worst = min(worst, float(values.min()))
    assert worst >= -65504.0, f"a constant of {worst:g} overflows FP16 (mask minimum?)"


def test_left_padded_multi_row_prefill_stays_finite_and_exact(exported: Exported) -> None:
    info = exported.info
    layers, heads, dim = info.num_layers, info.num_kv_heads, info.head_dim
    session = ort.InferenceSession(str(exported.path), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(1)
    lengths = (11, 6, 2, 1)
    prompts = [rng.integers(0, info.vocab_size, n, dtype=np.int64) for n in lengths]
    # One masked past column, as the TensorRT runner prefills: every padded query row of the
    # batch masks every column it could see.
    rows, width = len(prompts), max(lengths)
    ids = np.zeros((rows, width), np.int64)
    positions = np.zeros((rows, width), np.int64)
    mask = np.zeros((rows, 1 + width), np.int64)
    for row, prompt in enumerate(prompts):
        n = len(prompt)
        ids[row, width - n :] = prompt
        positions[row, width - n :] = np.arange(n)
        mask[row, 1 + width - n :] = 1
    past = np.zeros((layers, rows, heads, 1, dim), np.float32)
    io = export.cache_io(info)
    logits, keys, values = export.run_graph(session, io, ids, mask, positions, (past, past))
    assert np.isfinite(logits).all()
    assert np.isfinite(keys).all() and np.isfinite(values).all(), "padding poisoned the cache"
    for row, prompt in enumerate(prompts):
        n = len(prompt)
        empty = np.zeros((layers, 1, heads, 0, dim), np.float32)
        single, _, _ = export.run_graph(
            session,
            io,
            prompt[None, :],
            np.ones((1, n), np.int64),
            np.arange(n, dtype=np.int64)[None, :],
            (empty, empty),
        )
        assert np.abs(logits[row] - single[0]).max() < 1e-4, f"row {row} (length {n})"


def test_validation_checks_the_mask_against_the_models_own(exported: Exported) -> None:
    cases = exported.validation.cases
    assert cases["native_mask_vs_exported"] < export.MAX_ABS_LOGIT_DIFF
    assert cases["padded_prefill_vs_single"] < export.MAX_ABS_LOGIT_DIFF


def test_old_style_mask_would_overflow_fp16() -> None:
    """The reason for all this: float32's minimum is -inf in FP16 (what the tests guard)."""
    with np.errstate(over="ignore"):
        assert np.isneginf(np.float16(np.finfo(np.float32).min))
