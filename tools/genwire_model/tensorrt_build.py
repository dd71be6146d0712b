"""The TensorRT engine of a version at build time (GPU machines only).

The engine itself is built by ``runtime/tensorrt_engine.py`` (shared with the runner, which
builds one at load time for a GPU or TensorRT version the repository has none for); here the
build-time steps around it: the engine goes under ``engines/<key>/`` of the version being
assembled, is run once on validation prompts against ONNX Runtime (a left-padded multi-row
prefill and a greedy decode), and its agreement goes into the manifest. In ``auto`` mode any
failure (build, load or run) leaves the version without an engine (ONNX Runtime serves it)
and the manifest says why; ``on`` turns the failure into a build error.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from genwire_model.checkpoint import CheckpointInfo
from genwire_model.export import manifest_shape
from genwire_model.runtime.tensorrt_engine import (
    MAX_ENGINE_LOGIT_DIFF,
    MAX_ENGINE_LOGPROB_DIFF,
    PLAN,
    TensorRTBuildError,
    agreement,
    build_engine,
    check_agreement,
    current_key,
    engine_dir,
    key_name,
    prefill_rows,
    profile_shapes,
    record_agreement,
)

log = logging.getLogger(__name__)

__all__ = [
    "MAX_ENGINE_LOGIT_DIFF",
    "MAX_ENGINE_LOGPROB_DIFF",
    "TensorRTBuildError",
    "build_for_version",
    "prefill_rows",
    "profile_shapes",
]


def build_for_version(
    info: CheckpointInfo,
    onnx_path: Path,
    out: Path,
    max_batch: int,
    context: int,
    mode: str,
    reason: str | None,
    progress: Callable[[str], None] = log.info,
) -> dict[str, Any]:
    """The manifest's ``build.tensorrt`` record for a version being assembled in ``out``.

    ``reason`` is why TensorRT cannot run here (None: it can). Raises TensorRTBuildError only
    when ``mode`` is "on" and no working engine could be made.
    """
    if reason is not None:
        if mode == "on":
            raise TensorRTBuildError(f"--tensorrt on, but {reason}")
        progress(f"TensorRT engine skipped: {reason}")
        return {"built": False, "reason": reason}
    stage = "build"
    folder: Path | None = None
    attempted = ""
    try:
        key = current_key()
        attempted = key_name(key)
        folder = engine_dir(out, key)
        record = build_engine(onnx_path, folder, manifest_shape(info), max_batch, context, progress)
        stage = "run"
        record["agreement"] = verify(out, folder / PLAN, manifest_shape(info), context, max_batch)
        figures = record["agreement"]
        check_agreement(figures)
        record_agreement(folder / PLAN, figures)
        progress(
            f"TensorRT vs ONNX Runtime: largest log-probability difference "
            f"{figures['max_abs_logprob_diff']:.3g}, greedy agreement "
            f"{figures['greedy_token_agreement']:.0%} over {figures['cases']['decode_steps']} "
            "decode steps"
        )
        return {"built": True, "path": str(folder.relative_to(out)), **record}
    except Exception as exc:
        if folder is not None:
            shutil.rmtree(folder, ignore_errors=True)
        message = f"TensorRT {stage} failed: {type(exc).__name__}: {exc}"
        if mode == "on":
            raise TensorRTBuildError(message) from exc
        log.warning("%s; the version is served with ONNX Runtime", message, exc_info=True)
        progress(f"{message}; ONNX Runtime will serve this version")
        # The key tried: `genwire up` does not rebuild the default model for it again.
        return {"built": False, "reason": message[:2000], "attempted_key": attempted}


def verify(
    version_dir: Path, plan: Path, shape: dict[str, Any], context: int, max_batch: int = 8
) -> dict[str, Any]:
    """Run the engine and ONNX Runtime side by side on validation prompts (see agreement)."""
    from genwire_model.runtime.runners import OnnxRuntimeRunner, TensorRTRunner

    # What the runners read of a version's manifest (it is written after this step).
    manifest: dict[str, Any] = {
        "shape": shape,
        "context_length": context,
        "eos_token_ids": [],
        "build": {"options": {"max_batch": max_batch}},
    }
    engine = TensorRTRunner(plan, manifest)
    reference = OnnxRuntimeRunner(version_dir / "model.onnx", manifest)
    return agreement(engine, reference, int(shape["vocab_size"]), context)
