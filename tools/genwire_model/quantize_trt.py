"""``genwire model build --quantize int8|fp8`` on a GPU: a TensorRT INT8/FP8 engine, measured.

The CPU path (``quantize.py``: ONNX Runtime dynamic INT8) stays what ONNX Runtime serves; on a
GPU with TensorRT the version also gets an engine built from a **Q/DQ graph**:

1. the FP32 graph is quantized with NVIDIA Model Optimizer's ONNX PTQ
   (``modelopt.onnx.quantization.quantize``), calibrated on one left-padded prefill of real
   text (``calibration_feeds``: training documents of the default corpus, never the held-out
   ones the loss is measured on), laid out like the scheduler's prefill and like the
   calibration of the FP16 AutoCast step (one masked past column);
2. TensorRT builds a strongly typed engine from it (``tensorrt_engine.build_engine(...,
   quantized=mode)``) under ``engines/<key>/`` like the FP16 engines; the Q/DQ graph stays in
   the version (``model.qdq.onnx``), so a load on another GPU or TensorRT builds its own;
3. the engine is measured against ONNX Runtime on the FP32 graph: held-out loss (teacher
   forced, the same text as the CPU path), tokens/s (greedy, the same prompts), size, and the
   agreement figures (mean KL on a left-padded prefill); an engine beyond the bounds of
   ``check_agreement`` is not kept (``--tensorrt on``: the build fails).

What is built where is decided by ``plan_quantization`` (pure, tested on CPU): FP8 needs
TensorRT and compute capability >= 8.9 (below it, INT8 is built instead, said so); FP8 has no
CPU graph (ONNX Runtime serves the FP32 one if the engine cannot run).
"""

from __future__ import annotations

import dataclasses
import shutil
import time
from collections.abc import Callable
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from genwire_model.checkpoint import CheckpointInfo
from genwire_model.export import manifest_shape
from genwire_model.runtime.cache_io import CacheIO

MODES = ("int8", "fp8")
CALIBRATION_ROWS = 8
CALIBRATION_WIDTH = 64
HIGH_PRECISION = "fp16"  # what ModelOpt leaves unquantized runs in


class QuantizePlanError(ValueError):
    """The requested quantization cannot be built here; the message says why."""


@dataclasses.dataclass(frozen=True)
class QuantPlan:
    """What a quantized build makes: the CPU graph, the engine, and why not more."""

    requested: str  # int8 | fp8
    cpu_int8: bool  # model.onnx is ONNX Runtime's INT8 graph (else the FP32 one)
    engine: str  # "int8" | "fp8" | "": the TensorRT engine's precision, none when ""
    reason: str = ""  # why no engine, or why another precision than requested

    def to_json(self) -> dict[str, Any]:
        """For the manifest."""
        return dataclasses.asdict(self)


def plan_quantization(
    mode: str,
    tensorrt: str,
    tensorrt_reason: str | None,
    compute_capability: str | None,
    modelopt_reason: str | None,
) -> QuantPlan:
    """Decide a quantized build (no side effects).

    ``tensorrt`` is the build's --tensorrt (auto|on|off), ``tensorrt_reason`` why TensorRT
    cannot run here (None: it can), ``modelopt_reason`` why ModelOpt's PTQ cannot run (None: it
    can). Raises QuantizePlanError when nothing sensible can be built.
    """
    from genwire_model.runtime.tensorrt_engine import fp8_unsupported

    if mode not in MODES:
        raise QuantizePlanError(f"--quantize takes {' or '.join(MODES)}, not {mode!r}")
    if tensorrt == "off":
        why = "disabled (--tensorrt off)"
    else:
        why = tensorrt_reason or modelopt_reason or ""
    if mode == "fp8":
        if why:
            raise QuantizePlanError(
                f"--quantize fp8 needs a GPU with TensorRT and nvidia-modelopt (an FP8 engine; "
                f"ONNX Runtime's CPU path has no FP8): {why}"
            )
        unsupported = fp8_unsupported(compute_capability or "")
        if unsupported is not None:
            if tensorrt == "on":
                raise QuantizePlanError(f"--quantize fp8 with --tensorrt on: {unsupported}")
            return QuantPlan("fp8", True, "int8", f"{unsupported}: an INT8 engine is built")
        return QuantPlan("fp8", False, "fp8")
    if why:
        if tensorrt == "on":
            raise QuantizePlanError(f"--quantize int8 with --tensorrt on, but {why}")
        return QuantPlan("int8", True, "", why)
    return QuantPlan("int8", True, "int8")


def modelopt_missing() -> str | None:
    """None when ModelOpt's ONNX PTQ imports, else why not."""
    try:
        import modelopt.onnx.quantization  # type: ignore[import-not-found]  # noqa: F401
    except ImportError as exc:
        return f"nvidia-modelopt's ONNX quantization is not installed ({exc})"
    except Exception as exc:  # a broken install is a reason, not a crash
        return f"nvidia-modelopt does not load: {type(exc).__name__}: {exc}"
    return None


# -- calibration ------------------------------------------------------------------------------


def calibration_ids(info: CheckpointInfo, tokens: int) -> list[int]:
    """Token ids of the default corpus's training documents (not the held-out every 20th)."""
    from tokenizers import Tokenizer

    from genwire_model.corpus import extract_documents, stdlib_root

    tokenizer = Tokenizer.from_file(str(info.path / "tokenizer.json"))
    documents = [d for i, d in enumerate(extract_documents(stdlib_root())) if i % 20 != 0]
    ids: list[int] = []
    for document in documents[1::7]:  # spread over the corpus, not its first modules only
        ids.extend(tokenizer.encode(document).ids)
        if len(ids) >= tokens:
            break
    return [i % info.vocab_size for i in ids[:tokens]]


def calibration_feeds(
    shape: dict[str, Any], context: int, ids: list[int], rows: int = CALIBRATION_ROWS
) -> dict[str, Any]:
    """One left-padded prefill of ``rows`` windows of ``ids`` (lengths decreasing, the
    scheduler's layout: one masked past column, positions from 0 at each row's first token)."""
    layers, heads = int(shape["num_layers"]), int(shape["num_kv_heads"])
    dim = int(shape["head_dim"])
    width = max(2, min(CALIBRATION_WIDTH, context - 1))
    if len(ids) < rows * width:
        raise QuantizePlanError(f"calibration needs {rows * width} tokens, got {len(ids)}")
    tokens = np.zeros((rows, width), np.int64)
    mask = np.zeros((rows, width + 1), np.int64)
    positions = np.zeros((rows, width), np.int64)
    for row in range(rows):
        n = max(1, width - (width * row) // (2 * rows))  # from the whole width down to half
        tokens[row, width - n :] = ids[row * width : row * width + n]
        mask[row, 1 + width - n :] = 1
        positions[row, width - n :] = np.arange(n)
    past = np.zeros((layers, rows, heads, 1, dim), np.float32)
    return CacheIO.of_shape(shape).feeds(tokens, mask, positions, (past, past.copy()))


def shapes_spec(feeds: dict[str, Any]) -> str:
    """ModelOpt's ``calibration_shapes`` for the whole batch: one calibration step.

    ModelOpt splits calibration data along axis 0 into steps of the given shape; each input's
    whole shape makes the batch one step (and a stacked cache's axis 0, the layers, is never
    cut)."""
    return ",".join(
        f"{name}:{'x'.join(str(d) for d in array.shape)}" for name, array in feeds.items()
    )


def quantize_graph(
    fp32: Path,
    out: Path,
    mode: str,
    feeds: dict[str, Any],
    progress: Callable[[str], None],
    quantize: Callable[..., Any] | None = None,
) -> dict[str, Any]:
    """Write ModelOpt's Q/DQ graph of ``fp32`` to ``out``; returns how (for the manifest)."""
    if quantize is None:
        from modelopt.onnx.quantization import (  # type: ignore[import-not-found]
            quantize as modelopt_quantize,
        )

        quantize = modelopt_quantize
    try:
        import onnxruntime as ort

        eps = (
            ["cuda:0", "cpu"]
            if "CUDAExecutionProvider" in ort.get_available_providers()
            else ["cpu"]
        )
    except ImportError:
        eps = ["cpu"]
    method = "max" if mode == "fp8" else "entropy"
    large = fp32.stat().st_size >= 1 << 30  # a protobuf holds at most 2 GB
    kwargs: dict[str, Any] = {
        "onnx_path": str(fp32),
        "quantize_mode": mode,
        "calibration_data": feeds,
        "calibration_method": method,
        "calibration_shapes": shapes_spec(feeds),
        "calibration_eps": eps,
        "output_path": str(out),
        "high_precision_dtype": HIGH_PRECISION,
        "use_external_data_format": large,
        "log_level": "WARNING",
    }
    progress(
        f"quantizing {fp32.name} to {mode.upper()} Q/DQ (ModelOpt ONNX PTQ, {method} calibration)"
    )
    started = time.monotonic()
    quantize(**kwargs)
    if not out.is_file():
        raise RuntimeError(f"ModelOpt wrote no {out.name}")
    try:
        version = metadata.version("nvidia-modelopt")
    except metadata.PackageNotFoundError:
        version = "unknown"
    return {
        "method": f"modelopt.onnx.quantization.quantize(quantize_mode={mode}, "
        f"calibration_method={method}, high_precision_dtype={HIGH_PRECISION})",
        "modelopt_version": version,
        "calibration": {
            "source": "default corpus, training documents (not the held-out ones)",
            "rows": int(feeds["input_ids"].shape[0]),
            "width": int(feeds["input_ids"].shape[1]),
            "tokens": int(feeds["attention_mask"].sum()),
            "shapes": kwargs["calibration_shapes"],
            "eps": eps,
        },
        "seconds": round(time.monotonic() - started, 2),
    }


def graph_bytes(graph: Path) -> int:
    """Size of an ONNX graph with any external data files ModelOpt wrote beside it."""
    return sum(p.stat().st_size for p in graph.parent.glob(graph.name + "*") if p.is_file())


# -- measuring runners (any Runner: ONNX Runtime or TensorRT) ---------------------------------


def _prefill(runner: Any, tokens: list[int]) -> tuple[Any, Any]:
    pad = int(getattr(runner, "min_past", 0))
    n = len(tokens)
    mask = np.zeros((1, pad + n), np.int64)
    mask[0, pad:] = 1
    logits, kv = runner.forward(
        np.array([tokens], np.int64), mask, np.arange(n, dtype=np.int64)[None], runner.empty(1, pad)
    )
    return np.asarray(logits, dtype=np.float32)[0], (kv, mask)


def _decode(runner: Any, token: int, position: int, state: tuple[Any, Any]) -> tuple[Any, Any]:
    kv, mask = state
    mask = np.concatenate([mask, np.ones((1, 1), np.int64)], axis=1)
    logits, kv = runner.forward(
        np.array([[token]], np.int64), mask, np.array([[position]], np.int64), kv
    )
    return np.asarray(logits, dtype=np.float32)[0], (kv, mask)


def runner_heldout_loss(runner: Any, ids: list[int], context: int, window: int = 256) -> float:
    """Mean NLL (nats/token) of ``ids`` teacher-forced through the runner's KV cache."""
    from genwire_model.runtime.tensorrt_engine import log_softmax

    window = max(2, min(window, context - 1))
    total, count = 0.0, 0
    for start in range(0, len(ids) - 1, window):
        chunk = ids[start : start + window]
        if len(chunk) < 2:
            break
        logits, state = _prefill(runner, chunk[:1])
        for position in range(1, len(chunk)):
            total -= float(log_softmax(logits[None])[0, chunk[position]])
            count += 1
            if position < len(chunk) - 1:
                logits, state = _decode(runner, chunk[position], position, state)
    if count == 0:
        raise QuantizePlanError("no held-out tokens to score")
    return total / count


def runner_tokens_per_second(
    runner: Any, prompts: list[list[int]], context: int, new_tokens: int = 32
) -> float:
    """Greedy decoding of ``prompts`` one after another: generated tokens per second."""
    generated = 0
    started = time.perf_counter()
    for prompt in prompts:
        logits, state = _prefill(runner, prompt)
        position = len(prompt)
        for _ in range(max(0, min(new_tokens, context - len(prompt) - 1))):
            logits, state = _decode(runner, int(np.argmax(logits)), position, state)
            position += 1
            generated += 1
    return generated / max(time.perf_counter() - started, 1e-9)


# -- the engine -------------------------------------------------------------------------------


def build_quantized_engine(
    info: CheckpointInfo,
    fp32: Path,
    out: Path,
    plan: QuantPlan,
    max_batch: int,
    context: int,
    tensorrt: str,
    progress: Callable[[str], None],
    heldout: list[int],
    prompts: list[list[int]],
) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """(``build.tensorrt`` record, ``quantization.tensorrt`` figures or None) for ``out``.

    ``fp32`` is the FP32 graph (the reference; removed by the caller). In ``auto`` mode an
    INT8 engine that fails (quantize, build, run, agreement) leaves the version to ONNX Runtime
    with the reason; FP8 and ``--tensorrt on`` turn it into an error (QuantizePlanError).
    """
    from genwire_model.runtime.runners import OnnxRuntimeRunner, TensorRTRunner
    from genwire_model.runtime.tensorrt_engine import (
        PLAN,
        QDQ_GRAPH,
        build_engine,
        check_agreement,
        current_key,
        engine_dir,
        key_name,
        record_agreement,
    )
    from genwire_model.runtime.tensorrt_engine import agreement as agree

    mode = plan.engine
    shape = manifest_shape(info)
    graph = out / QDQ_GRAPH
    folder: Path | None = None
    attempted, stage = "", "quantize"
    try:
        key = current_key()
        attempted = key_name(key)
        ids = calibration_ids(info, CALIBRATION_ROWS * CALIBRATION_WIDTH)
        how = quantize_graph(fp32, graph, mode, calibration_feeds(shape, context, ids), progress)
        stage = "build"
        folder = engine_dir(out, key)
        record = build_engine(graph, folder, shape, max_batch, context, progress, quantized=mode)
        stage = "run"
        manifest = {
            "shape": shape,
            "context_length": context,
            "eos_token_ids": [],
            "build": {"options": {"max_batch": max_batch}},
        }
        engine = TensorRTRunner(folder / PLAN, manifest)
        reference = OnnxRuntimeRunner(fp32, manifest)
        figures = agree(engine, reference, info.vocab_size, context)
        loss = {"fp32": runner_heldout_loss(reference, heldout, context)}
        loss[mode] = runner_heldout_loss(engine, heldout, context)
        speed = {
            "fp32": runner_tokens_per_second(reference, prompts, context),
            mode: runner_tokens_per_second(engine, prompts, context),
        }
        figures.update(quantized=mode, heldout_loss_increase=loss[mode] - loss["fp32"])
        record["agreement"] = figures
        stage = "agreement"
        check_agreement(figures)
        record_agreement(folder / PLAN, figures)
    except Exception as exc:
        if folder is not None:
            shutil.rmtree(folder, ignore_errors=True)
        for leftover in out.glob(QDQ_GRAPH + "*"):
            leftover.unlink(missing_ok=True)
        message = f"TensorRT {mode.upper()} {stage} failed: {type(exc).__name__}: {exc}"
        if tensorrt == "on" or plan.requested == "fp8":
            raise QuantizePlanError(message) from exc
        progress(f"{message}; ONNX Runtime serves this version's INT8 graph")
        return {"built": False, "reason": message[:2000], "attempted_key": attempted}, None
    sizes = {
        "fp32": fp32.stat().st_size,
        "qdq_graph": graph_bytes(graph),
        "engine": (folder / PLAN).stat().st_size,
    }
    progress(
        f"TensorRT {mode.upper()} vs ONNX Runtime FP32: engine {sizes['engine'] / 1e6:.2f} MB vs "
        f"{sizes['fp32'] / 1e6:.2f} MB; speed {speed[mode]:.0f} vs {speed['fp32']:.0f} tokens/s "
        f"({speed[mode] / max(speed['fp32'], 1e-9):.2f}x); held-out loss {loss[mode]:.4f} vs "
        f"{loss['fp32']:.4f} nats/token ({loss[mode] - loss['fp32']:+.4f}); mean KL "
        f"{figures['mean_kl_vs_reference']:.4f}"
    )
    quantization = {
        "mode": mode,
        "graph": QDQ_GRAPH,
        **how,
        "key": key_name(record),
        "heldout_tokens": len(heldout) - 1,
        "speed": {"prompts": len(prompts), "max_new_tokens": 32},
        "size_bytes": sizes,
        "tokens_per_s": {k: round(v, 1) for k, v in speed.items()},
        "heldout_loss": {k: round(v, 5) for k, v in loss.items()},
        "agreement": figures,
    }
    tensorrt_record = {"built": True, "path": str(folder.relative_to(out)), **record}
    return tensorrt_record, quantization


def speed_prompts(heldout: list[int], count: int = 4) -> list[list[int]]:
    """The prompts the CPU path times (quantize.quantize_version): 8 tokens every 16."""
    return [[int(t) for t in heldout[i * 16 : i * 16 + 8]] or [0] for i in range(count)]
