"""`genwire model build --quantize int8|fp8` on the TensorRT path, the parts a CPU can check.

The plan (what is built where, FP8's compute-capability rule), the calibration batch, the
refusal of FP8 without a GPU, and the orchestration: ModelOpt's call and TensorRT's builder are
stand-ins here (no GPU: ``tests/model/test_tensorrt_quant.py`` builds real engines on one), the
"engine" runs the Q/DQ stand-in graph on ONNX Runtime, everything else (export, ONNX Runtime
INT8, measurements, manifest, the runtime's engine lookup and build-at-load) is the real code.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import types
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from genwire_model import cli, quantize_trt
from genwire_model.build import BuildError, BuildOptions, build_version
from genwire_model.checkpoint import inspect_checkpoint
from genwire_model.quantize_trt import QuantizePlanError, plan_quantization
from genwire_model.runtime import runners, tensorrt_engine
from genwire_model.runtime.tensorrt_engine import (
    MAX_QUANTIZED_KL,
    QDQ_GRAPH,
    TensorRTBuildError,
    check_agreement,
    fp8_unsupported,
)

# -- the plan -----------------------------------------------------------------------------------


def test_int8_without_tensorrt_is_the_cpu_graph_with_the_reason() -> None:
    plan = plan_quantization("int8", "auto", "no CUDA GPU is visible", None, None)
    assert (plan.cpu_int8, plan.engine, plan.reason) == (True, "", "no CUDA GPU is visible")
    off = plan_quantization("int8", "off", None, "9.0", None)
    assert off.engine == "" and "--tensorrt off" in off.reason


def test_int8_on_a_gpu_builds_an_engine_and_keeps_the_cpu_graph() -> None:
    plan = plan_quantization("int8", "auto", None, "8.0", None)
    assert (plan.cpu_int8, plan.engine, plan.reason) == (True, "int8", "")


def test_int8_without_modelopt_says_so_or_fails_with_tensorrt_on() -> None:
    missing = "nvidia-modelopt's ONNX quantization is not installed"
    assert plan_quantization("int8", "auto", None, "9.0", missing).reason == missing
    with pytest.raises(QuantizePlanError, match="--tensorrt on, but nvidia-modelopt"):
        plan_quantization("int8", "on", None, "9.0", missing)
    with pytest.raises(QuantizePlanError, match="--tensorrt on, but no CUDA GPU"):
        plan_quantization("int8", "on", "no CUDA GPU is visible", None, None)


def test_fp8_without_a_gpu_is_refused_clearly() -> None:
    with pytest.raises(QuantizePlanError, match=r"fp8 needs a GPU with TensorRT.*no CUDA GPU"):
        plan_quantization("fp8", "auto", "no CUDA GPU is visible", None, None)
    with pytest.raises(QuantizePlanError, match=r"fp8 needs.*--tensorrt off"):
        plan_quantization("fp8", "off", None, "9.0", None)


def test_fp8_below_compute_capability_8_9_builds_int8_and_says_why() -> None:
    plan = plan_quantization("fp8", "auto", None, "8.0", None)
    assert (plan.requested, plan.engine, plan.cpu_int8) == ("fp8", "int8", True)
    assert "compute capability >= 8.9" in plan.reason and "8.0" in plan.reason
    with pytest.raises(QuantizePlanError, match=r"this GPU is 8\.6"):
        plan_quantization("fp8", "on", None, "8.6", None)


@pytest.mark.parametrize("capability", ["8.9", "9.0", "10.0", "12.0"])
def test_fp8_on_ada_hopper_and_newer_builds_fp8_without_a_cpu_int8_graph(capability: str) -> None:
    assert fp8_unsupported(capability) is None
    plan = plan_quantization("fp8", "auto", None, capability, None)
    assert (plan.engine, plan.cpu_int8, plan.reason) == ("fp8", False, "")


def test_fp8_rule_names_older_and_unknown_gpus() -> None:
    assert "8.6" in str(fp8_unsupported("8.6")) and fp8_unsupported("7.5")
    assert "unknown compute capability" in str(fp8_unsupported(""))


def test_unknown_modes_are_refused() -> None:
    with pytest.raises(QuantizePlanError, match="int8 or fp8, not 'int4'"):
        plan_quantization("int4", "auto", None, "9.0", None)


def test_cli_takes_int8_and_fp8_and_refuses_others(capsys: pytest.CaptureFixture[str]) -> None:
    parser = argparse.ArgumentParser()
    cli.register(parser.add_subparsers())
    base = ["model", "build", "--checkpoint", "ckpt"]
    assert parser.parse_args([*base, "--quantize", "fp8"]).quantize == "fp8"
    assert parser.parse_args([*base, "--quantize", "int8"]).quantize == "int8"
    assert parser.parse_args(base).quantize == "off"
    with pytest.raises(SystemExit):
        parser.parse_args([*base, "--quantize", "int4"])
    assert "invalid choice: 'int4'" in capsys.readouterr().err


def test_fp8_build_without_a_gpu_fails_and_adds_nothing(
    tiny_checkpoint: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(runners, "tensorrt_usable", lambda: "no CUDA GPU is visible")
    with pytest.raises(BuildError, match=r"fp8 needs a GPU with TensorRT.*no CUDA GPU is visible"):
        build_version(tiny_checkpoint, "q8", tmp_path, BuildOptions(quantize="fp8"))
    assert not [p for p in (tmp_path / "q8").iterdir() if not p.name.startswith(".build")]


# -- calibration ----------------------------------------------------------------------------------


def test_calibration_is_one_left_padded_prefill_of_training_text(tiny_checkpoint: Path) -> None:
    info = inspect_checkpoint(tiny_checkpoint)
    shape = {
        "num_layers": 2,
        "num_kv_heads": 2,
        "head_dim": 8,
        "vocab_size": info.vocab_size,
        "cache_io": "per_layer",
    }
    ids = quantize_trt.calibration_ids(info, 8 * 64)
    assert len(ids) == 8 * 64 and max(ids) < info.vocab_size and len(set(ids)) > 50
    feeds = quantize_trt.calibration_feeds(shape, 128, ids)
    assert feeds["input_ids"].shape == (8, 64) and feeds["attention_mask"].shape == (8, 65)
    caches = ["past_key_0", "past_value_0", "past_key_1", "past_value_1"]
    assert list(feeds) == ["input_ids", "attention_mask", "position_ids", *caches]
    assert all(feeds[n].shape == (8, 2, 1, 8) and not feeds[n].any() for n in caches)
    lengths = feeds["attention_mask"].sum(axis=1)
    assert lengths[0] == 64 and lengths[-1] >= 32 and list(lengths) == sorted(lengths)[::-1]
    for row, n in enumerate(lengths):  # left padding: real tokens at the right, positions from 0
        assert not feeds["attention_mask"][row, : 65 - n].any()
        assert list(feeds["position_ids"][row, 64 - n :]) == list(range(n))
        assert list(feeds["input_ids"][row, 64 - n :]) == ids[row * 64 : row * 64 + n]
    # Not the held-out text the loss is measured on.
    from genwire_model.quantize import eval_ids

    heldout = eval_ids(info)
    assert ids[:64] != heldout[:64]
    spec = quantize_trt.shapes_spec(feeds)
    assert spec.startswith(
        "input_ids:8x64,attention_mask:8x65,position_ids:8x64,past_key_0:8x2x1x8,"
    )
    # ModelOpt splits axis 0 by the spec's first dimension: the whole batch is one step.
    assert feeds["input_ids"].shape[0] // int(spec.split(":")[1].split("x")[0]) == 1


def test_a_short_corpus_is_refused_not_padded_with_zeros() -> None:
    shape = {"num_layers": 1, "num_kv_heads": 1, "head_dim": 4, "vocab_size": 10}
    with pytest.raises(QuantizePlanError, match="calibration needs 512 tokens"):
        quantize_trt.calibration_feeds(shape, 128, [1, 2, 3])


# -- the agreement rule for quantized engines ---------------------------------------------------


def test_quantized_engines_are_judged_on_kl_and_heldout_loss() -> None:
    good = {"quantized": "int8", "finite": True, "mean_kl_vs_reference": 0.01}
    check_agreement({**good, "max_abs_logprob_diff": 3.0})  # tails move: not the judge
    check_agreement({**good, "heldout_loss_increase": 0.05})
    for bad in (
        {**good, "mean_kl_vs_reference": MAX_QUANTIZED_KL * 2},
        {**good, "heldout_loss_increase": 0.6},
        {**good, "finite": False},
        {**good, "mean_kl_vs_reference": float("nan")},
        {"quantized": "fp8", "finite": True},  # no KL recorded
    ):
        with pytest.raises(TensorRTBuildError, match="too far from the FP32 reference"):
            check_agreement(bad)
    with pytest.raises(TensorRTBuildError):  # an FP16 engine is still judged on log-probs
        check_agreement({"finite": True, "max_abs_logprob_diff": 3.0, "mean_kl_vs_reference": 0})


def test_mean_kl_is_zero_for_a_shift_and_positive_for_a_change() -> None:
    logits = np.array([[1.0, 2.0, 3.0], [0.5, 0.1, -1.0]])
    assert tensorrt_engine.mean_kl(logits, logits + 7.0) == pytest.approx(0.0, abs=1e-12)
    assert tensorrt_engine.mean_kl(logits, logits[:, ::-1]) > 0.1


# -- orchestration with stand-ins for ModelOpt and the TensorRT builder -------------------------

KEY = {"tensorrt_version": "11.4.0.106", "compute_capability": "9.0", "gpu": "stand-in"}


class _OrtAsEngine(runners.OnnxRuntimeRunner):
    """The "engine": the stand-in plan is an ONNX graph, run on ONNX Runtime."""

    backend = "tensorrt"
    min_past = 1  # as the TensorRT runner: exercises the masked past column

    def __init__(self, plan: Path, manifest: dict[str, Any], device: int = 0) -> None:
        super().__init__(plan, manifest)


@pytest.fixture
def stand_ins(monkeypatch: pytest.MonkeyPatch) -> dict[str, list[Any]]:
    seen: dict[str, list[Any]] = {"modelopt": [], "build": []}
    key = dict(KEY)

    def modelopt_quantize(**kwargs: Any) -> None:
        seen["modelopt"].append(kwargs)
        if kwargs.get("fail"):
            raise RuntimeError("stand-in failure")
        shutil.copy2(kwargs["onnx_path"], kwargs["output_path"])

    def build_engine(
        source: Path,
        out: Path,
        shape: Any,
        max_batch: int,
        context: int,
        progress: Any = None,
        quantized: str = "",
    ) -> dict[str, Any]:
        seen["build"].append({"source": Path(source).name, "quantized": quantized})
        out.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source, out / tensorrt_engine.PLAN)
        record = {**key, "precision": f"{quantized} stand-in", "quantized": quantized}
        record["key"] = tensorrt_engine.key_name(record)
        (out / tensorrt_engine.RECORD).write_text(json.dumps(record))
        return record

    module = types.ModuleType("modelopt.onnx.quantization")
    module.quantize = modelopt_quantize  # type: ignore[attr-defined]
    for name in ("modelopt", "modelopt.onnx"):
        monkeypatch.setitem(sys.modules, name, types.ModuleType(name))
    monkeypatch.setitem(sys.modules, "modelopt.onnx.quantization", module)
    monkeypatch.setattr(runners, "tensorrt_usable", lambda: None)
    monkeypatch.setattr(tensorrt_engine, "current_key", lambda: dict(key))
    monkeypatch.setattr(tensorrt_engine, "build_engine", build_engine)
    monkeypatch.setattr(runners, "TensorRTRunner", _OrtAsEngine)
    seen["key"] = [key]
    return seen


def test_int8_on_a_gpu_records_engine_and_cpu_graph_figures(
    tiny_checkpoint: Path, tmp_path: Path, stand_ins: dict[str, list[Any]]
) -> None:
    lines: list[str] = []
    options = BuildOptions(max_batch=4, quantize="int8", context=128)
    version = build_version(tiny_checkpoint, "q", tmp_path, options, lines.append)
    manifest = version.manifest
    quant = manifest["quantization"]
    # The CPU graph: ONNX Runtime's INT8, as without a GPU.
    assert "quantize_dynamic" in quant["method"] and quant["plan"]["engine"] == "int8"
    # ModelOpt was called on the FP32 graph, calibrated in one step on the left-padded batch.
    (call,) = stand_ins["modelopt"]
    assert call["quantize_mode"] == "int8" and call["calibration_method"] == "entropy"
    width = min(64, manifest["context_length"] - 1)
    assert call["calibration_data"]["input_ids"].shape == (8, width)
    assert call["calibration_shapes"].startswith(f"input_ids:8x{width},")
    assert call["high_precision_dtype"] == "fp16" and call["calibration_eps"][-1] == "cpu"
    # The engine: built from the Q/DQ graph, strongly typed, under engines/<key>/.
    assert stand_ins["build"] == [{"source": QDQ_GRAPH, "quantized": "int8"}]
    engine = quant["tensorrt"]
    assert engine["graph"] == QDQ_GRAPH and (version.path / QDQ_GRAPH).is_file()
    assert engine["key"] == "trt11.4.0.106-sm90"
    assert (version.path / "engines" / "trt11.4.0.106-sm90" / "model.plan").is_file()
    assert manifest["build"]["tensorrt"]["built"] is True
    assert manifest["build"]["tensorrt"]["path"] == "engines/trt11.4.0.106-sm90"
    assert QDQ_GRAPH in manifest["files"]
    # Figures of both: held-out loss, tokens/s on the same prompts, size; agreement recorded.
    for figure in ("heldout_loss", "tokens_per_s"):
        assert set(engine[figure]) == {"fp32", "int8"} and all(
            v > 0 for v in engine[figure].values()
        )
    assert set(engine["size_bytes"]) == {"fp32", "qdq_graph", "engine"}
    assert engine["calibration"]["rows"] == 8 and engine["heldout_tokens"] > 100
    agreement = engine["agreement"]
    assert agreement["quantized"] == "int8" and agreement["finite"]
    # The stand-in "engine" is the FP32 graph itself: it agrees exactly.
    assert engine["heldout_loss"]["int8"] == pytest.approx(engine["heldout_loss"]["fp32"], abs=1e-4)
    assert agreement["mean_kl_vs_reference"] == pytest.approx(0.0, abs=1e-6)
    printed = [line for line in lines if line.startswith("TensorRT INT8 vs ONNX Runtime FP32")]
    assert printed and "tokens/s" in printed[0] and "held-out loss" in printed[0]
    assert not list(version.path.glob(".model.fp32*"))  # the reference copy is gone
    # `genwire model list`: the engine's loss (nothing loaded yet, or the engine serving).
    from genwire_model.lifecycle import describe

    from lifecycle.test_lifecycle_unit import StubTriton

    (row,) = describe(tmp_path, StubTriton([]), "q")
    assert row["quantized"] == "int8/trt-int8"
    assert row["heldout_loss"] == engine["heldout_loss"]["int8"]

    # Served: the engine for this key is found, its recorded agreement judged as quantized.
    runner = runners.create_runner(version.path, prefer="auto", record_status=True)
    assert runner.backend == "tensorrt"
    status = json.loads((version.path / runners.STATUS_FILE).read_text())
    assert status["backend"] == "tensorrt"
    # Another GPU or TensorRT: the engine is built at load from the Q/DQ graph, not model.onnx.
    stand_ins["key"][0]["compute_capability"] = "8.0"
    stand_ins["build"].clear()
    runner = runners.create_runner(version.path, prefer="auto", record_status=True)
    assert runner.backend == "tensorrt"
    assert stand_ins["build"] == [{"source": QDQ_GRAPH, "quantized": "int8"}]
    record = json.loads(
        (version.path / "engines" / "trt11.4.0.106-sm80" / "tensorrt.json").read_text()
    )
    assert record["agreement"]["quantized"] == "int8"


def test_fp8_keeps_the_fp32_cpu_graph_and_is_not_served_below_8_9(
    tiny_checkpoint: Path, tmp_path: Path, stand_ins: dict[str, list[Any]]
) -> None:
    options = BuildOptions(max_batch=4, quantize="fp8", context=128)
    version = build_version(tiny_checkpoint, "f", tmp_path, options, lambda _: None)
    quant = version.manifest["quantization"]
    assert quant["mode"] == "fp8" and "fp32" in quant["cpu_graph"] and "method" not in quant
    assert quant["tensorrt"]["mode"] == "fp8" and stand_ins["modelopt"][0]["quantize_mode"] == "fp8"
    assert stand_ins["modelopt"][0]["calibration_method"] == "max"
    assert set(quant["tensorrt"]["heldout_loss"]) == {"fp32", "fp8"}
    # Loaded on an Ampere GPU: no FP8 engine there; ONNX Runtime serves (FP32), saying why.
    stand_ins["key"][0]["compute_capability"] = "8.0"
    runner = runners.create_runner(version.path, prefer="auto", record_status=True)
    assert runner.backend == "onnxruntime"
    status = json.loads((version.path / runners.STATUS_FILE).read_text())
    (fallback,) = status["fallbacks"]
    assert fallback["stage"] == "build" and "compute capability >= 8.9" in fallback["reason"]


def test_a_failing_int8_engine_leaves_the_cpu_graph_and_fp8_fails_the_build(
    tiny_checkpoint: Path,
    tmp_path: Path,
    stand_ins: dict[str, list[Any]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def fails(**kwargs: Any) -> None:
        raise RuntimeError("stand-in ModelOpt failure")

    monkeypatch.setattr(sys.modules["modelopt.onnx.quantization"], "quantize", fails)
    lines: list[str] = []
    options = BuildOptions(max_batch=4, quantize="int8", context=128)
    version = build_version(tiny_checkpoint, "q", tmp_path, options, lines.append)
    record = version.manifest["build"]["tensorrt"]
    assert record["built"] is False and "INT8 quantize failed" in record["reason"]
    assert "stand-in ModelOpt failure" in record["reason"]
    assert "tensorrt" not in version.manifest["quantization"]
    assert not list(version.path.glob(QDQ_GRAPH + "*")) and not (version.path / "engines").exists()
    assert any("ONNX Runtime serves this version's INT8 graph" in line for line in lines)
    assert runners.create_runner(version.path, prefer="auto").backend == "onnxruntime"
    with pytest.raises(BuildError, match=r"FP8 quantize failed.*stand-in ModelOpt failure"):
        build_version(tiny_checkpoint, "f", tmp_path, BuildOptions(max_batch=4, quantize="fp8"))
    with pytest.raises(BuildError, match="INT8 quantize failed"):
        build_version(
            tiny_checkpoint,
            "g",
            tmp_path,
            BuildOptions(max_batch=4, quantize="int8", tensorrt="on"),
        )


def test_a_gpu_that_cannot_be_queried_leaves_the_int8_cpu_graph(
    tiny_checkpoint: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken() -> dict[str, str]:
        raise RuntimeError("CUDA driver version is insufficient")

    monkeypatch.setattr(runners, "tensorrt_usable", lambda: None)
    monkeypatch.setattr(tensorrt_engine, "current_key", broken)
    options = BuildOptions(max_batch=4, quantize="int8", context=64)
    version = build_version(tiny_checkpoint, "q", tmp_path, options, lambda _: None)
    record = version.manifest["build"]["tensorrt"]
    assert record["built"] is False and "could not be queried" in record["reason"]
    assert "CUDA driver version is insufficient" in record["reason"]
    assert "quantize_dynamic" in version.manifest["quantization"]["method"]
