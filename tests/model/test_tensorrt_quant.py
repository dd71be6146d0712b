"""`genwire model build --quantize int8|fp8` on a real GPU: ModelOpt's Q/DQ graph, a strongly
typed TensorRT engine, its figures against ONNX Runtime FP32, serving it.

Skipped with the reason where TensorRT or ModelOpt cannot run (no GPU, no gpu extra); FP8 also
needs compute capability >= 8.9. ``make gpu-check`` runs these (deploy/gpu/gpu_check.sh). The
CPU-checkable parts (plan, calibration, orchestration) are tests/lifecycle/test_quantize_trt.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from genwire_model.build import BuildOptions, build_version
from genwire_model.quantize_trt import modelopt_missing
from genwire_model.repository import ModelVersion
from genwire_model.runtime import tensorrt_engine
from genwire_model.runtime.runners import STATUS_FILE, create_runner, tensorrt_usable

REASON = tensorrt_usable() or modelopt_missing()
pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(REASON is not None, reason=f"quantized TensorRT tests need a GPU: {REASON}"),
]


def _fp8_reason() -> str | None:
    if REASON is not None:
        return REASON
    return tensorrt_engine.fp8_unsupported(tensorrt_engine.current_key()["compute_capability"])


def _build(checkpoint: Path, root: Path, mode: str) -> ModelVersion:
    options = BuildOptions(tensorrt="on", max_batch=8, quantize=mode)
    return build_version(checkpoint, f"q-{mode}", root, options)


def _check(version: ModelVersion, mode: str) -> None:
    key = tensorrt_engine.current_key()
    record = version.manifest["build"]["tensorrt"]
    assert record["built"] and record["key"] == tensorrt_engine.key_name(key)
    assert record["quantized"] == mode and "strongly typed" in record["precision"]
    figures = version.manifest["quantization"]["tensorrt"]
    assert figures["mode"] == mode and (version.path / figures["graph"]).is_file()
    assert set(figures["heldout_loss"]) == {"fp32", mode}
    assert figures["agreement"]["finite"]
    assert figures["agreement"]["heldout_loss_increase"] <= (
        tensorrt_engine.MAX_QUANTIZED_LOSS_INCREASE
    )
    assert figures["size_bytes"]["engine"] < figures["size_bytes"]["fp32"] * 1.5
    runner = create_runner(version.path, prefer="tensorrt", record_status=True)
    assert runner.backend == "tensorrt"
    status = json.loads((version.path / STATUS_FILE).read_text())
    assert status["backend"] == "tensorrt" and status["engine"] == record["key"]


def test_int8_engine_is_built_measured_and_served(tiny_checkpoint: Path, tmp_path: Path) -> None:
    version = _build(tiny_checkpoint, tmp_path, "int8")
    _check(version, "int8")
    # The CPU graph is still ONNX Runtime's INT8 one (served when TensorRT is not).
    assert "quantize_dynamic" in version.manifest["quantization"]["method"]
    assert create_runner(version.path, prefer="onnxruntime").backend == "onnxruntime"


def test_fp8_engine_where_the_gpu_has_fp8(tiny_checkpoint: Path, tmp_path: Path) -> None:
    reason = _fp8_reason()
    if reason is not None:
        pytest.skip(f"FP8 engine: {reason}")
    _check(_build(tiny_checkpoint, tmp_path, "fp8"), "fp8")
