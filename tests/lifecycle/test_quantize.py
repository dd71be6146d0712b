"""`genwire model build --quantize int8`: ONNX Runtime INT8, measured against FP32."""

from __future__ import annotations

from pathlib import Path

import pytest
from genwire_model.build import BuildError, BuildOptions, build_version
from genwire_model.runtime.runners import create_runner


def test_int8_build_records_size_speed_and_loss_of_both(
    tiny_checkpoint: Path, tmp_path: Path
) -> None:
    lines: list[str] = []
    version = build_version(
        tiny_checkpoint, "q", tmp_path, BuildOptions(max_batch=4, quantize="int8"), lines.append
    )
    quant = version.manifest["quantization"]
    assert quant["mode"] == "int8" and "quantize_dynamic" in quant["method"]
    assert quant["size_bytes"]["int8"] < quant["size_bytes"]["fp32"]
    assert quant["heldout_tokens"] > 100
    for figure in ("heldout_loss", "tokens_per_s"):
        assert set(quant[figure]) == {"fp32", "int8"} and all(v > 0 for v in quant[figure].values())
    # INT8 weights change the logits a little, not the model: same loss within a tenth of a nat.
    assert quant["max_abs_logit_diff_vs_fp32"] > 0
    assert abs(quant["heldout_loss"]["int8"] - quant["heldout_loss"]["fp32"]) < 0.1
    assert version.manifest["build"]["options"]["quantize"] == "int8"
    assert version.manifest["validation"]["smoke"]["greedy_tokens"] == 16  # the INT8 graph ran
    printed = [line for line in lines if line.startswith("INT8 vs FP32")]
    assert printed and "held-out loss" in printed[0] and "tokens/s" in printed[0]
    assert (version.path / "model.onnx").stat().st_size == quant["size_bytes"]["int8"]
    assert not list(version.path.glob("*.fp32.onnx"))
    # ONNX Runtime serves the INT8 graph itself, not a fused copy of the FP32 one.
    assert version.manifest["build"]["onnxruntime_graph"] == {
        "file": None,
        "reason": "--quantize int8: ONNX Runtime serves its INT8 graph",
    }
    assert not (version.path / "model.ort.onnx").exists()
    assert create_runner(version.path, prefer="onnxruntime").vocab_size > 0


def test_unknown_quantization_is_refused(tiny_checkpoint: Path, tmp_path: Path) -> None:
    with pytest.raises(BuildError, match="quantize must be off, int8 or fp8"):
        build_version(tiny_checkpoint, "q", tmp_path, BuildOptions(quantize="int4"))
    assert not (tmp_path / "q").exists() or not any((tmp_path / "q").iterdir())
