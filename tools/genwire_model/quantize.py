"""``genwire model build --quantize int8``: an INT8 version for the CPU path, measured.

The exported FP32 graph is quantized with ONNX Runtime's own tooling
(``onnxruntime.quantization.quantize_dynamic``: INT8 weights of every MatMul/Gemm, activations
quantized on the fly, per-channel where the op allows), the graph Triton's ONNX Runtime runner
executes. Both graphs are then measured the same way, in this process:

- **size** of ``model.onnx``;
- **speed**: greedy decoding of the same prompts (tokens per second, one sequence at a time
  through the KV cache, as the runtime does);
- **held-out loss** (mean negative log-likelihood, nats/token, teacher-forced through the KV
  cache) on held-out text: the default corpus's held-out documents (every 20th document of the
  standard library's docstrings, what ``genwire model train`` holds out) or ``eval_text``;
- the largest logit difference between the two on that text.

The figures go to the manifest (``quantization``) and are printed; the version's
``model.onnx`` is the INT8 graph (the FP32 one is not kept).
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from genwire_model.checkpoint import CheckpointInfo
from genwire_model.runtime.cache_io import CacheIO

EVAL_TOKENS = 1024
"""Held-out tokens scored per graph."""
WINDOW = 256
"""Teacher-forced window (tokens): at most the context; the loss is averaged over windows."""
SPEED_PROMPTS = 4
SPEED_TOKENS = 32
METHOD = "onnxruntime.quantization.quantize_dynamic(weight_type=QInt8, per_channel=True)"


class QuantizeError(RuntimeError):
    """Quantization failed or is not possible here."""


def _session(path: Path) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 2
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _empty_cache(info: CheckpointInfo) -> Any:
    shape = (info.num_layers, 1, info.num_kv_heads, 0, info.head_dim)
    return np.zeros(shape, dtype=np.float32)


def _io(session: Any, info: CheckpointInfo) -> CacheIO:
    """The cache contract of the session's graph (fp32 and quantized graphs share it)."""
    return CacheIO.of_names((i.name for i in session.get_inputs()), info.num_layers)


def _step(
    session: Any, io: CacheIO, token: int, position: int, keys: Any, values: Any
) -> tuple[Any, ...]:
    got = session.run(
        list(io.output_names),
        io.feeds(
            np.array([[token]], dtype=np.int64),
            np.ones((1, position + 1), dtype=np.int64),
            np.array([[position]], dtype=np.int64),
            (keys, values),
        ),
    )
    keys, values = io.join(got[1:], np.stack)
    return got[0][0], keys, values


def _log_softmax(logits: Any) -> Any:
    shifted = logits - logits.max()
    return shifted - np.log(np.exp(shifted).sum())


def heldout_loss(session: Any, info: CheckpointInfo, ids: list[int]) -> tuple[float, list[Any]]:
    """Mean NLL (nats/token) of ``ids`` teacher-forced in windows; also every step's logits."""
    window = max(2, min(WINDOW, info.context))
    io = _io(session, info)
    total, count, logits_seen = 0.0, 0, []
    for start in range(0, len(ids) - 1, window):
        chunk = ids[start : start + window]
        if len(chunk) < 2:
            break
        keys, values = _empty_cache(info), _empty_cache(info)
        for position, token in enumerate(chunk[:-1]):
            logits, keys, values = _step(session, io, token, position, keys, values)
            total -= float(_log_softmax(logits.astype(np.float64))[chunk[position + 1]])
            count += 1
            logits_seen.append(logits)
    if count == 0:
        raise QuantizeError("no held-out tokens to score")
    return total / count, logits_seen


def tokens_per_second(session: Any, info: CheckpointInfo, prompts: list[list[int]]) -> float:
    """Greedy decoding of ``prompts`` one after another: generated tokens per second."""
    generated = 0
    io = _io(session, info)
    started = time.perf_counter()
    for prompt in prompts:
        keys, values = _empty_cache(info), _empty_cache(info)
        logits: Any = np.zeros(info.vocab_size, dtype=np.float32)
        for position, token in enumerate(prompt):
            logits, keys, values = _step(session, io, token, position, keys, values)
        position = len(prompt)
        for _ in range(min(SPEED_TOKENS, info.context - len(prompt) - 1)):
            token = int(np.argmax(logits))
            logits, keys, values = _step(session, io, token, position, keys, values)
            position += 1
            generated += 1
    return generated / max(time.perf_counter() - started, 1e-9)


def eval_ids(info: CheckpointInfo, eval_text: Path | None = None) -> list[int]:
    """Held-out token ids: ``eval_text``, else the default corpus's held-out documents."""
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(info.path / "tokenizer.json"))
    if eval_text is not None:
        documents = [eval_text.read_text(encoding="utf-8")]
    else:
        from genwire_model.corpus import extract_documents, stdlib_root

        documents = extract_documents(stdlib_root())[::20]
    ids: list[int] = []
    eos = info.eos_token_ids[0] if info.eos_token_ids else None
    for document in documents:
        ids.extend(tokenizer.encode(document).ids)
        if eos is not None:
            ids.append(eos)
        if len(ids) > EVAL_TOKENS:
            break
    return [i % info.vocab_size for i in ids[: EVAL_TOKENS + 1]]


def quantize_version(
    info: CheckpointInfo,
    onnx_path: Path,
    mode: str,
    progress: Callable[[str], None],
    eval_text: Path | None = None,
) -> dict[str, Any]:
    """Replace ``onnx_path`` (FP32) by its ``mode`` quantization; returns the figures."""
    if mode != "int8":
        raise QuantizeError(f"--quantize takes int8 on the CPU path, not {mode!r}")
    try:
        from onnxruntime.quantization import QuantType, quantize_dynamic
    except ImportError as exc:
        raise QuantizeError(f"onnxruntime's quantization tooling is missing: {exc}") from None
    fp32 = onnx_path.with_name(".model.fp32.onnx")
    shutil.move(onnx_path, fp32)
    try:
        progress(f"quantizing {fp32.name} to INT8 ({METHOD})")
        started = time.monotonic()
        quantize_dynamic(
            str(fp32),
            str(onnx_path),
            weight_type=QuantType.QInt8,
            per_channel=True,
            op_types_to_quantize=["MatMul", "Gemm"],
        )
        seconds = time.monotonic() - started
        ids = eval_ids(info, eval_text)
        rng = np.random.default_rng(0)
        prompts = [
            [int(t) for t in ids[i * 16 : i * 16 + 8]] or [int(rng.integers(info.vocab_size))]
            for i in range(SPEED_PROMPTS)
        ]
        figures: dict[str, dict[str, float]] = {}
        seen: dict[str, list[Any]] = {}
        for label, path in (("fp32", fp32), ("int8", onnx_path)):
            session = _session(path)
            loss, logits = heldout_loss(session, info, ids)
            seen[label] = logits
            figures[label] = {
                "size_bytes": float(os.path.getsize(path)),
                "heldout_loss": loss,
                "tokens_per_s": tokens_per_second(session, info, prompts),
            }
        diff = max(
            float(np.abs(a - b).max()) for a, b in zip(seen["fp32"], seen["int8"], strict=True)
        )
    except QuantizeError:
        raise
    except Exception as exc:
        raise QuantizeError(f"INT8 quantization failed: {exc!r}") from exc
    finally:
        fp32.unlink(missing_ok=True)
    a, b = figures["fp32"], figures["int8"]
    progress(
        f"INT8 vs FP32: size {b['size_bytes'] / 1e6:.2f} MB vs {a['size_bytes'] / 1e6:.2f} MB "
        f"({b['size_bytes'] / a['size_bytes']:.2f}x); speed {b['tokens_per_s']:.0f} vs "
        f"{a['tokens_per_s']:.0f} tokens/s ({b['tokens_per_s'] / a['tokens_per_s']:.2f}x); "
        f"held-out loss {b['heldout_loss']:.4f} vs {a['heldout_loss']:.4f} nats/token "
        f"({b['heldout_loss'] - a['heldout_loss']:+.4f}) over {len(ids) - 1} tokens"
    )
    return {
        "mode": "int8",
        "method": METHOD,
        "seconds": round(seconds, 2),
        "heldout_tokens": len(ids) - 1,
        "heldout_source": str(eval_text) if eval_text else "default corpus, held-out documents",
        "speed": {"prompts": len(prompts), "max_new_tokens": SPEED_TOKENS},
        "size_bytes": {"fp32": int(a["size_bytes"]), "int8": int(b["size_bytes"])},
        "tokens_per_s": {"fp32": round(a["tokens_per_s"], 1), "int8": round(b["tokens_per_s"], 1)},
        "heldout_loss": {"fp32": round(a["heldout_loss"], 5), "int8": round(b["heldout_loss"], 5)},
        "max_abs_logit_diff_vs_fp32": round(diff, 5),
    }
