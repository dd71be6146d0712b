"""`make gpu-check` step: a TensorRT INT8 (or FP8) engine against the FP16 engine and FP32.

Builds ``--quantize MODE --tensorrt on`` of the default model's checkpoint into a scratch
repository (what Triton serves is left alone), then measures, the same way and on the same
held-out tokens and prompts (genwire_model.quantize_trt): ONNX Runtime on the FP32 graph, the
default version's FP16 engine, and the quantized engine — held-out loss (nats/token), greedy
tokens/s, size. Prints a table and writes JSON (``--json``). Exit status 1 when the quantized
engine was not built or its loss rose past ``MAX_QUANTIZED_LOSS_INCREASE``.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path
from typing import Any


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--mode", choices=["int8", "fp8"], default="int8")
    parser.add_argument("--json", type=Path, help="write the figures here")
    parser.add_argument("--repository", type=Path, help="scratch repository (default: a temp dir)")
    args = parser.parse_args()

    from genwire_model.build import BuildOptions, build_version
    from genwire_model.checkpoint import inspect_checkpoint
    from genwire_model.quantize import eval_ids
    from genwire_model.quantize_trt import (
        runner_heldout_loss,
        runner_tokens_per_second,
        speed_prompts,
    )
    from genwire_model.repository import ModelRepository
    from genwire_model.runtime.runners import (
        OnnxRuntimeRunner,
        TensorRTRunner,
        onnxruntime_graph,
    )
    from genwire_model.runtime.tensorrt_engine import (
        MAX_QUANTIZED_LOSS_INCREASE,
        current_key,
        find_engine,
    )

    from genwire.settings import CommonSettings

    repo = ModelRepository(CommonSettings().repository)
    default = repo.get("genwire-gpt", repo.versions("genwire-gpt")[-1])
    checkpoint = Path(default.manifest["source"]["checkpoint"])
    scratch = args.repository or Path(tempfile.mkdtemp(prefix="gw-quant-"))
    quantized = build_version(
        checkpoint,
        "genwire-gpt",
        scratch,
        BuildOptions(quantize=args.mode, tensorrt="on", max_batch=8),
        progress=print,
    )
    info = inspect_checkpoint(checkpoint)
    heldout = eval_ids(info)
    prompts = speed_prompts(heldout)
    key = current_key()
    arms: dict[str, tuple[Any, Path]] = {}
    context = int(default.manifest["context_length"])
    # The graph ONNX Runtime serves (the fused copy when the version has one).
    served = onnxruntime_graph(default.path, default.manifest)
    arms["fp32 (ONNX Runtime)"] = (OnnxRuntimeRunner(served, default.manifest), served)
    fp16 = find_engine(default.path, key)
    if fp16 is not None:
        arms["fp16 engine"] = (TensorRTRunner(fp16, default.manifest), fp16)
    else:
        print("no FP16 engine in the default version for this key: its row is left out")
    engine = find_engine(quantized.path, key)
    if engine is None:
        print(json.dumps(quantized.manifest["build"]["tensorrt"], indent=2))
        return 1
    arms[f"{args.mode} engine"] = (TensorRTRunner(engine, quantized.manifest), engine)
    rows: list[dict[str, Any]] = []
    for label, (runner, path) in arms.items():
        rows.append(
            {
                "arm": label,
                "heldout_loss": round(runner_heldout_loss(runner, heldout, context), 5),
                "tokens_per_s": round(runner_tokens_per_second(runner, prompts, context), 1),
                "size_bytes": path.stat().st_size,
            }
        )
    print(f"{'arm':<22} {'held-out loss':>14} {'tokens/s':>10} {'size MB':>9}")
    for row in rows:
        print(
            f"{row['arm']:<22} {row['heldout_loss']:>14.4f} {row['tokens_per_s']:>10.1f} "
            f"{row['size_bytes'] / 1e6:>9.2f}"
        )
    report = {
        "key": key,
        "heldout_tokens": len(heldout) - 1,
        "rows": rows,
        "manifest_quantization": quantized.manifest["quantization"],
    }
    if args.json:
        args.json.write_text(json.dumps(report, indent=2, default=str), encoding="utf-8")
    rise = rows[-1]["heldout_loss"] - rows[0]["heldout_loss"]
    if rise > MAX_QUANTIZED_LOSS_INCREASE:
        print(f"the {args.mode} engine's held-out loss rose by {rise:.4f} nats/token")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
