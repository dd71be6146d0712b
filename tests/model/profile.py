"""ONNX Runtime's own profile of one prefill through a built graph: the matrix products whose
output is as wide as the vocabulary (the LM head), with their output shapes."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
from genwire_model.runtime.cache_io import CacheIO

# Kernels that multiply by the head's matrix (ONNX Runtime's op names; FusedMatMul after its
# own fusions, Gemm where a bias is folded in).
PRODUCTS = ("MatMul", "FusedMatMul", "Gemm")


def head_outputs(
    graph: Path, shape: dict[str, Any], rows: int, new: int, workdir: Path
) -> list[list[int]]:
    """The output shapes of every vocabulary-wide product in a ``rows`` × ``new``-token prefill
    over an empty (one masked column) cache; fails if the profile has no kernel events."""
    import onnxruntime as ort

    vocab, io = int(shape["vocab_size"]), CacheIO.of_shape(shape)
    options = ort.SessionOptions()
    options.enable_profiling = True
    options.profile_file_prefix = str(workdir / f"prefill-{graph.stem}")
    session = ort.InferenceSession(str(graph), options, providers=["CPUExecutionProvider"])
    empty = np.zeros((rows, int(shape["num_kv_heads"]), 1, int(shape["head_dim"])), np.float32)
    feeds = {
        "input_ids": np.ones((rows, new), np.int64),
        "attention_mask": np.concatenate(
            [np.zeros((rows, 1), np.int64), np.ones((rows, new), np.int64)], axis=1
        ),
        "position_ids": np.tile(np.arange(new), (rows, 1)),
        **{name: empty for name in io.past_names},
    }
    logits = session.run(["logits"], feeds)[0]
    assert logits.shape == (rows, vocab)
    events = json.loads(Path(session.end_profiling()).read_text())
    kernels = [e for e in events if e.get("cat") == "Node" and e["name"].endswith("_kernel_time")]
    assert kernels, "ONNX Runtime's profile has no kernel events"
    return [
        dims
        for event in kernels
        if event["args"].get("op_name") in PRODUCTS
        for output in event["args"].get("output_type_shape", [])
        for dims in output.values()
        if dims and dims[-1] == vocab
    ]
