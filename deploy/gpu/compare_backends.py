#!/usr/bin/env python3
"""TensorRT against ONNX Runtime on this machine, runner against runner (``make gpu-check``).

Loads the newest version of a model from the repository twice, with its TensorRT engine and
with ONNX Runtime, and for each batch size runs the same left-padded batched prefill and
greedy decode (tensorrt_engine.greedy, what the scheduler does per step): time to first token
(the prefill) and decode tokens/s per backend, plus how many greedy tokens agree.

    ~/.cache/genwire/venv/bin/python deploy/gpu/compare_backends.py [--batch 1,8,32]
        [--steps 64] [--name genwire-gpt] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np


def measure(runner: Any, prompts: list[Any], steps: int) -> dict[str, Any]:
    from genwire_model.runtime.tensorrt_engine import greedy

    reserve = getattr(runner, "reserve", None)  # the decode loop's buffers, before timing
    if reserve is not None:
        reserve(len(prompts), runner.min_past + max(len(p) for p in prompts) + steps)
    greedy(runner, prompts[:1], 2)  # warm-up: kernels, allocations
    started = time.perf_counter()
    greedy(runner, prompts, 0)
    ttft = time.perf_counter() - started
    started = time.perf_counter()
    _, tokens = greedy(runner, prompts, steps)
    total = time.perf_counter() - started
    decode = max(total - ttft, 1e-9)
    return {
        "ttft_ms": round(ttft * 1e3, 2),
        "decode_tokens_per_s": round(len(prompts) * steps / decode, 1),
        "tokens": tokens,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--name", default="genwire-gpt")
    parser.add_argument("--repository", type=Path)
    parser.add_argument("--batch", default="1,8,32")
    parser.add_argument("--steps", type=int, default=64)
    parser.add_argument("--prompt-tokens", type=int, default=32)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)

    from genwire_model.repository import ModelRepository
    from genwire_model.runtime.runners import create_runner

    from genwire.settings import CommonSettings

    repository = ModelRepository(args.repository or CommonSettings().repository)
    version = repository.get(args.name, repository.versions(args.name)[-1])
    manifest = version.manifest
    context = int(manifest["context_length"])
    steps = min(args.steps, context - args.prompt_tokens - 2)
    vocab = int(manifest["shape"]["vocab_size"])
    backends = {
        "tensorrt": create_runner(version.path, prefer="tensorrt"),
        "onnxruntime": create_runner(version.path, prefer="onnxruntime"),
    }
    rng = np.random.default_rng(0)
    results: list[dict[str, Any]] = []
    print(f"{args.name} version {version.version}: {steps} greedy decode steps per row")
    print(f"{'batch':>5} {'backend':>12} {'TTFT ms':>9} {'decode tok/s':>13} {'agree':>6}")
    for batch in (int(b) for b in args.batch.split(",")):
        lengths = rng.integers(max(1, args.prompt_tokens // 2), args.prompt_tokens + 1, batch)
        prompts = [rng.integers(0, vocab, int(n), dtype=np.int64) for n in lengths]
        figures = {name: measure(r, prompts, steps) for name, r in backends.items()}
        if getattr(backends["tensorrt"], "failed", False):
            # FallbackRunner reran a failing pass on ONNX Runtime and stays there: the
            # "tensorrt" figures would be ONNX Runtime's (the reason is in the log above).
            print(f"TensorRT failed at batch {batch}: no comparison", file=sys.stderr)
            return 1
        want = figures["onnxruntime"]["tokens"]
        got = figures["tensorrt"]["tokens"]
        agree = sum(
            a == b for g, w in zip(got, want, strict=True) for a, b in zip(g, w, strict=True)
        )
        share = agree / max(1, sum(len(w) for w in want))
        for name, fig in figures.items():
            print(
                f"{batch:>5} {name:>12} {fig['ttft_ms']:>9.2f} "
                f"{fig['decode_tokens_per_s']:>13.1f} {share:>6.0%}"
            )
            results.append(
                {
                    "batch": batch,
                    "backend": name,
                    "ttft_ms": fig["ttft_ms"],
                    "decode_tokens_per_s": fig["decode_tokens_per_s"],
                    "greedy_agreement": round(share, 4),
                }
            )
    record = {"model": args.name, "version": version.version, "steps": steps, "results": results}
    record["tensorrt"] = {
        k: v for k, v in manifest["build"]["tensorrt"].items() if k not in ("profiles",)
    }
    if args.json:
        args.json.write_text(json.dumps(record, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
