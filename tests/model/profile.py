"""ONNX Runtime's own profile of one prefill through a built graph: the matrix products whose
output is as wide as the vocabulary (the LM head) must cover the last position only."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
from genwire_model.runtime.cache_io import CacheIO

# Kernels that multiply by the head's matrix (ONNX Runtime's op names; FusedMatMul after its
# own fusions, Gemm where a bias is folded in).
PRODUCTS = ("MatMul", "FusedMatMul", "Gemm")


def assert_head_on_last_position(
    graph: Path, shape: dict[str, Any], workdir: Path, rows: int = 2, new: int = 9
) -> None:
    """A ``rows`` × ``new``-token prefill over an empty (one masked column) cache: the profile
    has kernels, a vocabulary-wide product, and every such product has one position per row."""
    import onnxruntime as ort

    vocab, io = int(shape["vocab_size"]), CacheIO.of_shape(shape)
    options = ort.SessionOptions()
    options.enable_profiling = True
    options.profile_file_prefix = str(workdir / f"prefill-{graph.stem}")
    session = ort.InferenceSession(str(graph), options, providers=["CPUExecutionProvider"])
    # The runtime's stacked cache [layers, rows, heads, columns, dim], split as the graph takes it.
    layers, heads, dim = (
        int(shape["num_layers"]),
        int(shape["num_kv_heads"]),
        int(shape["head_dim"]),
    )
    past = np.zeros((layers, rows, heads, 1, dim), np.float32)
    mask = np.concatenate([np.zeros((rows, 1), np.int64), np.ones((rows, new), np.int64)], axis=1)
    positions = np.tile(np.arange(new), (rows, 1))
    feeds = io.feeds(np.ones((rows, new), np.int64), mask, positions, (past, past))
    logits = session.run(["logits"], feeds)[0]
    assert logits.shape == (rows, vocab)
    events = json.loads(Path(session.end_profiling()).read_text())
    kernels = [e for e in events if e.get("cat") == "Node" and e["name"].endswith("_kernel_time")]
    assert kernels, "ONNX Runtime's profile has no kernel events"
    products = [
        dims
        for event in kernels
        if event["args"].get("op_name") in PRODUCTS
        for output in event["args"].get("output_type_shape", [])
        for dims in output.values()
        if dims and dims[-1] == vocab
    ]
    assert products, f"{graph.name}: no vocabulary-wide product in the profile"
    assert all(int(np.prod(dims)) == rows * vocab for dims in products), (graph.name, products)
