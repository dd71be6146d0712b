"""TensorRT engines of the KV-cache graph: where they live, how they are built, how they agree.

Runs both at build time (``genwire model build``) and inside Triton's Python stub, whose Python
is older than genwire's (3.10 in NGC's images), so it imports nothing from genwire and only
``tensorrt``, ``numpy`` and (for the comparison) ``torch`` lazily.

**Where.** An engine only deserializes with the TensorRT version and the GPU architecture that
built it, so each lives under its key: ``<version>/engines/trt<version>-sm<cc>/model.plan`` with a
``tensorrt.json`` record beside it. A version built without a GPU gets an engine later (built at
load time by the runner), and a ``pip install -U tensorrt`` or another GPU simply adds a key.

**Precision.** TensorRT 10 networks are weakly typed: the ``FP16`` builder flag lets TensorRT
pick FP16 kernels. TensorRT 11 removed that flag (networks are always strongly typed): reduced
precision means an FP16 graph, made by Model Optimizer's AutoCast (``nvidia-modelopt[onnx]``)
with FP32 inputs and outputs and calibration data drawn from a real prefill. Any AutoCast
failure builds an FP32 engine instead, and the record says why.

**Profiles.** Two optimization profiles, one execution context each: *prefill* (up to the whole
context in one pass, at most ``prefill_rows`` rows: its activation memory grows with rows x
context², so the row count is bounded by a token budget and the runner splits larger prefills)
and *decode* (one new token per row, up to ``max_batch`` rows, a cache up to the context).
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from .cache_io import CacheIO

log = logging.getLogger(__name__)

ENGINES_DIR = "engines"
PLAN = "model.plan"
RECORD = "tensorrt.json"
WORKSPACE_BYTES = 1 << 30
# Padded tokens of the prefill profile's largest corner (rows x context): bounds its memory.
PREFILL_TOKEN_BUDGET = 8192
PROFILE_NAMES = ("prefill", "decode")
# The engine runs FP16 kernels: greedy tokens may part from FP32 ONNX Runtime's after a near
# tie, but the log-probabilities must stay close; above this the engine is not used. Compared
# as log-probabilities, not raw logits: a shift common to a row's logits changes nothing that
# is sampled or reported, and FP16's absolute error grows with the logits' magnitude (GPT-2's
# sit near -100), which would refuse sound engines.
MAX_ENGINE_LOGPROB_DIFF = 0.5
MAX_ENGINE_LOGIT_DIFF = MAX_ENGINE_LOGPROB_DIFF  # its former name
# A quantized engine (--quantize int8|fp8) is judged on distributions, not on the largest
# log-probability difference: mean KL from the FP32 reference over the check's prefill rows,
# and (at build) the held-out loss increase, nats/token.
MAX_QUANTIZED_KL = 0.25
MAX_QUANTIZED_LOSS_INCREASE = 0.25

Shapes = dict[str, tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]]


class TensorRTBuildError(RuntimeError):
    """TensorRT could not parse, build or load the graph; the message carries its errors."""


# -- keys -------------------------------------------------------------------------------------


def current_key() -> dict[str, str]:
    """TensorRT version, compute capability and name of GPU 0 (raises without either)."""
    import tensorrt as trt
    import torch

    major, minor = torch.cuda.get_device_capability(0)
    return {
        "tensorrt_version": str(trt.__version__),
        "compute_capability": f"{major}.{minor}",
        "gpu": str(torch.cuda.get_device_name(0)),
    }


def key_name(key: dict[str, Any]) -> str:
    """``trt10.13.3.9-sm90``: the folder of an engine under ``engines/``."""
    cc = str(key.get("compute_capability", "")).replace(".", "")
    return f"trt{key.get('tensorrt_version', '')}-sm{cc}"


def engine_dir(version_dir: Path, key: dict[str, Any]) -> Path:
    """Where the engine for ``key`` lives inside a version folder."""
    return Path(version_dir) / ENGINES_DIR / key_name(key)


def find_engine(version_dir: Path, key: dict[str, Any]) -> Path | None:
    """The plan built for ``key`` in this version (or a legacy top-level one with that key)."""
    folder = engine_dir(version_dir, key)
    candidates = [folder]
    if (Path(version_dir) / PLAN).is_file():
        candidates.append(Path(version_dir))  # versions built before engines/ existed
    for candidate in candidates:
        plan, record = candidate / PLAN, candidate / RECORD
        if not (plan.is_file() and record.is_file()):
            continue
        try:
            built = json.loads(record.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if key_name(built) == key_name(key):
            return plan
    return None


def recorded_keys(manifest: dict[str, Any]) -> list[str]:
    """Key names of the engines a manifest says were built with the version."""
    record = manifest.get("build", {}).get("tensorrt", {})
    if not record.get("built"):
        return []
    return [key_name(record)]


# -- quantized versions (--quantize int8|fp8) --------------------------------------------------

QDQ_GRAPH = "model.qdq.onnx"
FP8_MIN_CC = (8, 9)  # FP8 tensor cores: Ada (8.9), Hopper (9.0) and newer


def fp8_unsupported(compute_capability: str) -> str | None:
    """None when a GPU of ``compute_capability`` ("9.0") runs FP8 engines, else why not."""
    try:
        major, minor = (int(part) for part in str(compute_capability).split(".")[:2])
    except ValueError:
        return f"unknown compute capability {compute_capability!r}"
    if (major, minor) >= FP8_MIN_CC:
        return None
    return (
        f"FP8 needs compute capability >= {FP8_MIN_CC[0]}.{FP8_MIN_CC[1]} (Ada, Hopper or "
        f"newer); this GPU is {major}.{minor}"
    )


def quantized_graph(manifest: dict[str, Any]) -> tuple[str, str] | None:
    """(mode, file) of the version's Q/DQ graph for TensorRT, or None when it has none."""
    record = manifest.get("quantization") or {}
    engine = record.get("tensorrt") if isinstance(record, dict) else None
    if not isinstance(engine, dict) or not engine.get("graph"):
        return None
    return str(engine.get("mode", "int8")), str(engine["graph"])


# -- profiles ---------------------------------------------------------------------------------


def prefill_rows(max_batch: int, context: int, budget: int = PREFILL_TOKEN_BUDGET) -> int:
    """Rows of the prefill profile: as many full-context prompts as the budget allows."""
    return max(1, min(max_batch, budget // max(1, context)))


def profile_shapes(
    layers: int, heads: int, dim: int, max_batch: int, context: int, io: CacheIO | None = None
) -> dict[str, Shapes]:
    """min/opt/max per input for the ``prefill`` and ``decode`` profiles.

    ``io``: the graph's cache tensors (default: one per layer, what export.py writes).
    Prefill: S new tokens over one masked past column (the runner's ``min_past``: no tensor is
    ever zero-sized). Decode: one new token over a cache of up to ``context + 1`` columns (the
    prefill's dummy column stays until the batch's leading columns are trimmed).
    """
    io = io or CacheIO(layers)
    rows = prefill_rows(max_batch, context)
    opt_rows, opt_seq = min(4, rows), min(64, context)
    opt_batch, opt_past = min(8, max_batch), min(128, context)

    def kv(low: tuple[int, int], opt: tuple[int, int], high: tuple[int, int]) -> Any:
        return tuple(io.tensor_shape(b, heads, p, dim) for b, p in (low, opt, high))

    prefill: Shapes = {
        "input_ids": ((1, 1), (opt_rows, opt_seq), (rows, context)),
        "position_ids": ((1, 1), (opt_rows, opt_seq), (rows, context)),
        "attention_mask": ((1, 2), (opt_rows, opt_seq + 1), (rows, context + 1)),
        **{name: kv((1, 1), (opt_rows, 1), (rows, 1)) for name in io.past_names},
    }
    decode: Shapes = {
        "input_ids": ((1, 1), (opt_batch, 1), (max_batch, 1)),
        "position_ids": ((1, 1), (opt_batch, 1), (max_batch, 1)),
        "attention_mask": ((1, 2), (opt_batch, opt_past + 1), (max_batch, context + 2)),
        **{
            name: kv((1, 1), (opt_batch, opt_past), (max_batch, context + 1))
            for name in io.past_names
        },
    }
    return {"prefill": prefill, "decode": decode}


# -- build ------------------------------------------------------------------------------------


def calibration_feeds(shape: dict[str, Any], context: int, rows: int = 2) -> dict[str, Any]:
    """A left-padded prefill like the scheduler's (real token ids, one masked past column)."""
    layers, heads = int(shape["num_layers"]), int(shape["num_kv_heads"])
    dim, vocab = int(shape["head_dim"]), int(shape["vocab_size"])
    width = max(2, min(16, context - 1))
    rng = np.random.default_rng(0)
    ids = rng.integers(0, vocab, (rows, width), dtype=np.int64)
    mask = np.zeros((rows, width + 1), np.int64)
    positions = np.zeros((rows, width), np.int64)
    for row in range(rows):
        n = max(1, width - 3 * row)
        mask[row, 1 + width - n :] = 1
        positions[row, width - n :] = np.arange(n)
    past = np.zeros((layers, rows, heads, 1, dim), np.float32)
    return CacheIO.of_shape(shape).feeds(ids, mask, positions, (past, past.copy()))


def external_data(graph: Path) -> Path:
    """The file beside an AutoCast graph that holds its weights."""
    return graph.with_name(graph.name + ".data")


def _autocast(
    onnx_path: Path, out: Path, feeds: dict[str, Any], progress: Callable[[str], None]
) -> tuple[Path | None, str]:
    """An FP16 copy of the graph (FP32 I/O) via ModelOpt AutoCast, or None and why not."""
    try:
        import onnx
        from modelopt.onnx.autocast import (  # type: ignore[import-not-found]
            convert_to_mixed_precision,
        )
    except ImportError as exc:
        return None, f"nvidia-modelopt is not installed ({exc})"
    calibration = out.with_suffix(".calibration.npz")
    np.savez(calibration, **feeds)
    data = external_data(out)
    failures = []
    # Calibrated first (real magnitudes decide which nodes stay FP32); some ModelOpt releases
    # refuse calibration data for dynamic shapes, so once more with its random data.
    for source in (str(calibration), None):
        try:
            converted = convert_to_mixed_precision(
                onnx_path=str(onnx_path),
                low_precision_type="fp16",
                keep_io_types=True,
                calibration_data=source,
            )
            # Weights beside the graph: a protobuf holds at most 2 GB (a 1B model in FP16 is
            # more). onnx appends to an existing data file, so a failed try's is removed first.
            data.unlink(missing_ok=True)
            onnx.save(
                converted,
                str(out),
                save_as_external_data=True,
                all_tensors_to_one_file=True,
                location=data.name,
            )
            calibration.unlink(missing_ok=True)
            how = "calibrated on a real prefill" if source else "uncalibrated"
            return out, f"fp16 (strongly typed graph from modelopt.onnx.autocast, {how})"
        except Exception as exc:  # any AutoCast failure: try the next way, then FP32
            failures.append(f"{type(exc).__name__}: {exc}")
            progress(f"AutoCast failed ({failures[-1][:200]})")
    calibration.unlink(missing_ok=True)
    out.unlink(missing_ok=True)
    data.unlink(missing_ok=True)
    return None, "AutoCast failed: " + " | ".join(f[:300] for f in failures)


def build_engine(
    onnx_path: Path,
    out_dir: Path,
    shape: dict[str, Any],
    max_batch: int,
    context: int,
    progress: Callable[[str], None] = log.info,
    quantized: str = "",
) -> dict[str, Any]:
    """Write ``model.plan`` and ``tensorrt.json`` into ``out_dir``; returns the record.

    ``quantized`` ("int8" or "fp8") says ``onnx_path`` is a Q/DQ graph (ModelOpt's ONNX PTQ,
    ``genwire model build --quantize``): it is built as it stands, strongly typed (the flag is
    required on TensorRT 10, ignored on 11), with no FP16 flag and no AutoCast.

    Raises TensorRTBuildError when TensorRT cannot parse or build the graph; every TensorRT
    call whose result can signal failure is checked.
    """
    import tensorrt as trt

    out_dir.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    layers, heads = int(shape["num_layers"]), int(shape["num_kv_heads"])
    dim = int(shape["head_dim"])
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    if builder is None:
        raise TensorRTBuildError("trt.Builder failed (no CUDA device or driver?)")
    weak_fp16 = hasattr(trt.BuilderFlag, "FP16") and not quantized  # TensorRT 10; gone in 11
    source, precision, note = onnx_path, "fp32", ""
    flags = 0
    if quantized:
        precision = f"{quantized} (ModelOpt Q/DQ graph, strongly typed network)"
        strongly = getattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED", None)
        if strongly is not None:
            flags = 1 << int(strongly)
    elif not weak_fp16:
        fp16_path = out_dir / "model.fp16.onnx"
        made, how = _autocast(onnx_path, fp16_path, calibration_feeds(shape, context), progress)
        if made is not None:
            source, precision = made, how
        else:
            note = how
            progress(f"building an FP32 engine: {how}")
    try:
        # Explicit batch is the only mode since 10.0, and 11.x networks are always strongly
        # typed; a Q/DQ graph asks for strong typing on 10.x too (flags).
        network = builder.create_network(flags)
        parser = trt.OnnxParser(network, logger)
        if not parser.parse_from_file(str(source)):
            errors = [str(parser.get_error(i)) for i in range(parser.num_errors)]
            raise TensorRTBuildError(f"TensorRT could not parse {source.name}: {errors}")
        config = builder.create_builder_config()
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, WORKSPACE_BYTES)
        if weak_fp16:
            config.set_flag(trt.BuilderFlag.FP16)
            precision = "fp16 (builder flag, weakly typed network)"
        shapes = profile_shapes(layers, heads, dim, max_batch, context, CacheIO.of_shape(shape))
        for name in PROFILE_NAMES:
            profile = builder.create_optimization_profile()
            for tensor, (low, opt, high) in shapes[name].items():
                profile.set_shape(tensor, low, opt, high)
            if config.add_optimization_profile(profile) < 0:
                raise TensorRTBuildError(f"TensorRT rejected the {name} profile: {shapes[name]}")
        progress(f"building the TensorRT {trt.__version__} engine ({precision})")
        serialized = builder.build_serialized_network(network, config)
        if serialized is None:
            raise TensorRTBuildError("TensorRT failed to build the engine; see its log above")
        _write_atomic(out_dir / PLAN, bytes(serialized))
    finally:
        if source != onnx_path:
            source.unlink(missing_ok=True)  # the FP16 copy only fed the builder
            external_data(source).unlink(missing_ok=True)
    record: dict[str, Any] = {
        "tensorrt_version": str(trt.__version__),
        "precision": precision,
        **({"quantized": quantized} if quantized else {}),
        "max_batch": max_batch,
        "prefill_rows": prefill_rows(max_batch, context),
        "context": context,
        "profiles": {
            name: {k: [list(s) for s in v] for k, v in shapes[name].items()}
            for name in PROFILE_NAMES
        },
        "build_seconds": round(time.monotonic() - started, 2),
    }
    if note:
        record["fp16_unavailable"] = note
    try:
        record.update(current_key())
    except Exception:  # the record is informative; a missing GPU name is not an error
        log.debug("could not read the GPU name", exc_info=True)
    record["key"] = key_name(record)
    _write_atomic(out_dir / RECORD, json.dumps(record, indent=2).encode())
    return record


def _write_atomic(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=str(path.parent))
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
    os.replace(tmp, path)


# -- agreement with ONNX Runtime --------------------------------------------------------------


def prefill(runner: Any, prompts: list[Any]) -> tuple[Any, Any, Any, list[int]]:
    """A left-padded batched prefill like the scheduler's: (logits, cache, mask, lengths)."""
    rows, width, pad = len(prompts), max(len(p) for p in prompts), int(runner.min_past)
    ids = np.zeros((rows, width), np.int64)
    positions = np.zeros((rows, width), np.int64)
    mask = np.zeros((rows, pad + width), np.int64)
    for row, prompt in enumerate(prompts):
        n = len(prompt)
        ids[row, width - n :] = prompt
        positions[row, width - n :] = np.arange(n)
        mask[row, pad + width - n :] = 1
    logits, kv = runner.forward(ids, mask, positions, runner.empty(rows, pad))
    return logits, kv, mask, [len(p) for p in prompts]


def greedy(runner: Any, prompts: list[Any], steps: int) -> tuple[Any, list[list[int]]]:
    """Left-padded batched prefill then ``steps`` greedy decode steps, like the scheduler.

    The steps go through the runner's ``step`` where it has one (into the buffers its
    ``reserve`` made, the decode loop's path; ``forward`` without them). Returns the prefill
    logits [rows, vocab] and each row's greedy tokens.
    """
    logits, kv, mask, lengths = prefill(runner, prompts)
    rows = len(prompts)
    first = np.array(logits, dtype=np.float32, copy=True)
    tokens: list[list[int]] = [[] for _ in prompts]
    nxt = logits.argmax(axis=1)
    step = getattr(runner, "step", None) or runner.forward
    for _ in range(steps):
        for row in range(rows):
            tokens[row].append(int(nxt[row]))
        mask = np.concatenate([mask, np.ones((rows, 1), np.int64)], axis=1)
        step_pos = np.array([[n] for n in lengths], np.int64)
        logits, kv = step(nxt[:, None].astype(np.int64), mask, step_pos, kv)
        lengths = [n + 1 for n in lengths]
        nxt = logits.argmax(axis=1)
    return first, tokens


def agreement(
    engine_runner: Any, reference: Any, vocab: int, context: int, decode_steps: int = 32
) -> dict[str, Any]:
    """How closely the engine follows ONNX Runtime on a left-padded multi-row prefill and a
    greedy decode: largest logit difference, whether every logit is finite, greedy agreement."""
    rng = np.random.default_rng(3)
    longest = max(2, min(24, context // 2))
    lengths = [longest, max(1, longest // 2), 1]
    prompts = [rng.integers(0, vocab, n, dtype=np.int64) for n in lengths]
    steps = max(1, min(decode_steps, context - longest - 1))
    for runner in (engine_runner, reference):
        # The decode steps in the runners' own buffers, as the decode loop runs them.
        reserve = getattr(runner, "reserve", None)
        if reserve is not None:
            reserve(len(prompts), int(runner.min_past) + longest + steps)
    got, got_tokens = greedy(engine_runner, prompts, steps)
    want, want_tokens = greedy(reference, prompts, steps)
    same = [
        next((i for i, (a, b) in enumerate(zip(g, w, strict=True)) if a != b), len(g))
        for g, w in zip(got_tokens, want_tokens, strict=True)
    ]
    total = sum(len(t) for t in want_tokens)
    return {
        "cases": {"left_padded_prefill_rows": lengths, "decode_steps": steps},
        "max_abs_logit_diff": float(np.abs(got - want).max()),
        "max_abs_logprob_diff": float(np.abs(log_softmax(got) - log_softmax(want)).max()),
        "finite": bool(np.isfinite(got).all()),
        # Mean KL(ONNX Runtime || engine) over the prefill rows, nats: scale-free, what judges
        # a quantized engine (whose tail log-probabilities move more than FP16's).
        "mean_kl_vs_reference": mean_kl(want, got),
        "prefill_greedy_agree": bool((got.argmax(axis=1) == want.argmax(axis=1)).all()),
        # Tokens that match before the first divergence of each row, over all tokens.
        "greedy_token_agreement": round(sum(same) / max(1, total), 4),
    }


def log_softmax(logits: Any) -> Any:
    """Log-probabilities of logits [rows, vocab], in float64."""
    values = np.asarray(logits, dtype=np.float64)
    top = values.max(axis=-1, keepdims=True)
    return values - top - np.log(np.exp(values - top).sum(axis=-1, keepdims=True))


def mean_kl(reference: Any, other: Any) -> float:
    """Mean over rows of KL(softmax(reference) || softmax(other)), nats (NaN stays NaN)."""
    want, got = log_softmax(reference), log_softmax(other)
    return float((np.exp(want) * (want - got)).sum(axis=-1).mean())


def check_agreement(figures: dict[str, Any]) -> None:
    """Raise TensorRTBuildError when the engine's figures rule it out (records made before
    the log-probability figure existed are judged on their logits).

    A quantized engine's figures (``quantized`` set) are judged on the mean KL divergence
    from the reference and, where measured (at build), the held-out loss increase."""
    if figures.get("quantized"):
        kl = figures.get("mean_kl_vs_reference", np.inf)
        rise = figures.get("heldout_loss_increase", 0.0)
        if (
            not figures.get("finite")
            or not kl <= MAX_QUANTIZED_KL
            or not rise <= MAX_QUANTIZED_LOSS_INCREASE
        ):
            raise TensorRTBuildError(
                f"the quantized engine is too far from the FP32 reference (mean KL <= "
                f"{MAX_QUANTIZED_KL}, held-out loss increase <= {MAX_QUANTIZED_LOSS_INCREASE} "
                f"nats/token): {figures}"
            )
        return
    diff = figures.get("max_abs_logprob_diff", figures.get("max_abs_logit_diff", np.inf))
    if not figures.get("finite") or not diff <= MAX_ENGINE_LOGPROB_DIFF:
        raise TensorRTBuildError(f"the engine disagrees with ONNX Runtime: {figures}")


def record_agreement(plan: Path, figures: dict[str, Any]) -> None:
    """Add the agreement figures to the engine's ``tensorrt.json``."""
    path = plan.parent / RECORD
    record = json.loads(path.read_text(encoding="utf-8"))
    record["agreement"] = figures
    _write_atomic(path, json.dumps(record, indent=2).encode())
