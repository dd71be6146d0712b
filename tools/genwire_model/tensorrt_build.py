"""Build a TensorRT engine from the KV-cache ONNX graph (GPU machines only).

Precision depends on the TensorRT major version:

- TensorRT 10: the network is weakly typed by default, so the ``FP16`` builder flag lets
  TensorRT pick FP16 kernels where the GPU has fast FP16.
- TensorRT 11 removed the precision builder flags: networks are always strongly typed and run
  in the precisions the ONNX graph itself declares. Reduced precision therefore means an FP16
  graph: Model Optimizer's AutoCast (``modelopt.onnx.autocast``) converts a copy, keeping FP32
  inputs and outputs so the runner's KV tensors are unchanged. Without ModelOpt the engine is
  built in FP32 and the manifest says so.

The TensorRT version, precision and profiles are recorded in ``tensorrt.json`` beside the
engine: an engine only deserializes with the TensorRT version (and GPU) that built it.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from genwire_model.checkpoint import CheckpointInfo

log = logging.getLogger(__name__)

WORKSPACE_BYTES = 1 << 30


class TensorRTBuildError(RuntimeError):
    """TensorRT could not parse or build the graph; the message carries its errors."""


def _fp16_graph(onnx_path: Path, out: Path, progress: Callable[[str], None]) -> str | None:
    """Write an FP16 copy of the graph (FP32 I/O) for strongly typed TensorRT; how, or None."""
    try:
        import onnx
        from modelopt.onnx.autocast import (  # type: ignore[import-not-found]
            convert_to_mixed_precision,
        )
    except ImportError:
        progress("TensorRT >= 11 without nvidia-modelopt: building the engine in FP32")
        return None
    converted = convert_to_mixed_precision(
        onnx_path=str(onnx_path), low_precision_type="fp16", keep_io_types=True
    )
    onnx.save(converted, str(out))
    return "fp16 (strongly typed graph converted by modelopt.onnx.autocast)"


def profile_shapes(
    info: CheckpointInfo, max_batch: int, context: int
) -> dict[str, tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]]:
    """min/opt/max shapes per input: decode-sized opt, the whole context as max.

    The runner prefills with one masked past column (``min_past = 1``), so no tensor is ever
    zero-sized; the cache can be one column wider than the context for the same reason.
    """
    layers, heads, dim = info.num_layers, info.num_kv_heads, info.head_dim
    opt_batch = min(8, max_batch)
    opt_past = min(128, context)
    return {
        "input_ids": ((1, 1), (opt_batch, 1), (max_batch, context)),
        "position_ids": ((1, 1), (opt_batch, 1), (max_batch, context)),
        "attention_mask": ((1, 2), (opt_batch, opt_past + 1), (max_batch, context + 2)),
        "past_keys": (
            (layers, 1, heads, 1, dim),
            (layers, opt_batch, heads, opt_past, dim),
            (layers, max_batch, heads, context + 1, dim),
        ),
        "past_values": (
            (layers, 1, heads, 1, dim),
            (layers, opt_batch, heads, opt_past, dim),
            (layers, max_batch, heads, context + 1, dim),
        ),
    }


def build_engine(
    info: CheckpointInfo,
    onnx_path: Path,
    out_dir: Path,
    max_batch: int,
    context: int,
    progress: Callable[[str], None] = log.info,
) -> dict[str, Any]:
    """Write ``model.plan`` and ``tensorrt.json`` into ``out_dir``; returns the record."""
    import tensorrt as trt

    major = int(trt.__version__.split(".")[0])
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    source, precision = onnx_path, "fp32"
    if major >= 11:
        fp16_path = out_dir / "model.fp16.onnx"
        how = _fp16_graph(onnx_path, fp16_path, progress)
        if how:
            source, precision = fp16_path, how
    # No creation flags: explicit batch is the only mode since 10.0, and 11.x networks are
    # always strongly typed.
    network = builder.create_network(0)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(source)):
        errors = [str(parser.get_error(i)) for i in range(parser.num_errors)]
        raise TensorRTBuildError(f"TensorRT could not parse {source.name}: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, WORKSPACE_BYTES)
    # platform_has_fast_fp16 is deprecated in 10.x; treat its absence as "yes".
    if major < 11 and getattr(builder, "platform_has_fast_fp16", True):
        config.set_flag(trt.BuilderFlag.FP16)
        precision = "fp16 (builder flag, weakly typed network)"
    profile = builder.create_optimization_profile()
    shapes = profile_shapes(info, max_batch, context)
    for name, (low, opt, high) in shapes.items():
        profile.set_shape(name, low, opt, high)
    config.add_optimization_profile(profile)
    progress(f"building the TensorRT {trt.__version__} engine ({precision})")
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise TensorRTBuildError("TensorRT failed to build the engine; see its log above")
    (out_dir / "model.plan").write_bytes(bytes(serialized))
    if source != onnx_path:
        source.unlink(missing_ok=True)  # the FP16 copy only fed the builder
    record: dict[str, Any] = {
        "tensorrt_version": trt.__version__,
        "precision": precision,
        "max_batch": max_batch,
        "context": context,
        "profiles": [{k: [list(s) for s in v] for k, v in shapes.items()}],
    }
    try:
        import torch

        record["gpu"] = torch.cuda.get_device_name(0)
        record["compute_capability"] = ".".join(map(str, torch.cuda.get_device_capability(0)))
    except Exception:  # the record is informative; a missing GPU name is not an error
        log.debug("could not read the GPU name", exc_info=True)
    (out_dir / "tensorrt.json").write_text(json.dumps(record, indent=2), encoding="utf-8")
    return record
