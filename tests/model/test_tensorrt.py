"""TensorRT path: engine build and the GPU runner against ONNX Runtime (GPU machines only)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from genwire_model.build import BuildOptions, build_version
from genwire_model.runtime.runners import (
    OnnxRuntimeRunner,
    TensorRTRunner,
    tensorrt_usable,
)

REASON = tensorrt_usable()
pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(REASON is not None, reason=f"TensorRT tests need a GPU: {REASON}"),
]


def test_engine_matches_onnx_runtime(tiny_checkpoint: Path, tmp_path: Path) -> None:
    version = build_version(
        tiny_checkpoint, "trt", tmp_path, BuildOptions(tensorrt="on", max_batch=4)
    )
    record = version.manifest["build"]["tensorrt"]
    assert record["built"] and record["tensorrt_version"]
    assert (version.path / "model.plan").is_file() and (version.path / "tensorrt.json").is_file()
    trt_runner = TensorRTRunner(version.path / "model.plan", version.manifest)
    ort_runner = OnnxRuntimeRunner(version.path / "model.onnx", version.manifest)
    prompt = np.array([[5, 6, 7, 8, 9, 10]], dtype=np.int64)
    positions = np.arange(6, dtype=np.int64)[None, :]
    # TensorRT prefills with one masked dummy column; ONNX Runtime with none.
    got, kv = trt_runner.forward(
        prompt, np.array([[0] + [1] * 6]), positions, trt_runner.empty(1, 1)
    )
    want, ort_kv = ort_runner.forward(
        prompt, np.ones((1, 6), np.int64), positions, ort_runner.empty(1, 0)
    )
    # FP16 kernels: compare the distributions loosely and the greedy choice exactly.
    assert int(got.argmax()) == int(want.argmax())
    assert np.abs(got - want).max() < 0.1
    step_got, _ = trt_runner.forward(
        np.array([[11]]), np.array([[0] + [1] * 7]), np.array([[6]]), kv
    )
    step_want, _ = ort_runner.forward(
        np.array([[11]]), np.ones((1, 7), np.int64), np.array([[6]]), ort_kv
    )
    assert int(step_got.argmax()) == int(step_want.argmax())
