"""Baseline figures of the model alone: tritonclient gRPC (asyncio) straight to Triton.

Reports, per concurrency level, requests/s, output tokens/s, time to first token and time per
output token (p50, p99). These are the model's own figures: the Kafka pipeline adds to them.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import time
from pathlib import Path
from typing import Any

import numpy as np

from genwire_model.client import Generation, generate
from genwire_model.repository import ModelRepository, load_tokenizer

PROMPTS = (
    "Return the number of",
    "Create a new",
    "This module provides",
    "Raise an exception if the",
    "The default value is",
    "Convert a string to",
    "Read and return",
    "If the file does not exist,",
)


@dataclasses.dataclass
class LevelResult:
    """Figures of one concurrency level."""

    concurrency: int
    requests: int
    seconds: float
    requests_per_s: float
    output_tokens_per_s: float
    mean_output_tokens: float
    ttft_ms_p50: float
    ttft_ms_p99: float
    tpot_ms_p50: float
    tpot_ms_p99: float
    errors: int


def _pct(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


def summarize(
    concurrency: int, results: list[Generation], seconds: float, errors: int
) -> LevelResult:
    """Turn per-request figures into a level's figures."""
    tokens = sum(r.completion_tokens for r in results)
    ttft = [r.first_token_s * 1e3 for r in results if r.first_token_s is not None]
    tpot = [
        (r.finished_s - r.first_token_s) * 1e3 / (r.completion_tokens - 1)
        for r in results
        if r.first_token_s is not None and r.completion_tokens > 1
    ]
    return LevelResult(
        concurrency=concurrency,
        requests=len(results),
        seconds=round(seconds, 3),
        requests_per_s=round(len(results) / seconds, 2),
        output_tokens_per_s=round(tokens / seconds, 1),
        mean_output_tokens=round(tokens / max(1, len(results)), 1),
        ttft_ms_p50=round(_pct(ttft, 50), 2),
        ttft_ms_p99=round(_pct(ttft, 99), 2),
        tpot_ms_p50=round(_pct(tpot, 50), 3),
        tpot_ms_p99=round(_pct(tpot, 99), 3),
        errors=errors,
    )


async def run_level(
    url: str,
    model: str,
    prompts: list[list[int]],
    concurrency: int,
    requests: int,
    max_tokens: int,
    stop_ids: list[int] | None,
) -> LevelResult:
    """``requests`` requests, ``concurrency`` at a time, each on its own gRPC stream."""
    from tritonclient.grpc.aio import InferenceServerClient

    client = InferenceServerClient(url)
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(requests):
        queue.put_nowait(i)
    results: list[Generation] = []
    errors = 0

    async def worker() -> None:
        nonlocal errors
        while True:
            try:
                i = queue.get_nowait()
            except asyncio.QueueEmpty:
                return
            try:
                results.append(
                    await generate(
                        client,
                        model,
                        prompts[i % len(prompts)],
                        max_tokens,
                        temperature=0.8,
                        top_p=0.95,
                        seed=i,
                        stop_token_ids=stop_ids,
                    )
                )
            except Exception:
                errors += 1

    try:
        # One warm-up request so connection set-up is not measured.
        await generate(client, model, prompts[0], 4)
        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        seconds = time.perf_counter() - started
    finally:
        await client.close()
    return summarize(concurrency, results, seconds, errors)


def run(
    url: str,
    model: str,
    repository: Path,
    levels: list[int],
    max_tokens: int,
    requests_per_level: int | None,
    out: Path | None,
) -> list[LevelResult]:
    """Benchmark every level and print a table (and JSON to ``out`` if given)."""
    version = ModelRepository(repository).latest(model)
    tokenizer = load_tokenizer(version)
    prompts = [tokenizer.encode(p).ids for p in PROMPTS]
    print(
        f"model {model} version {version.version} at {url}: max_tokens {max_tokens}, "
        "temperature 0.8, top_p 0.95, streaming"
    )
    header = (
        f"{'conc':>4} {'reqs':>5} {'req/s':>8} {'out tok/s':>10} {'tok/req':>8} "
        f"{'TTFT p50':>9} {'TTFT p99':>9} {'TPOT p50':>9} {'TPOT p99':>9} {'err':>4}"
    )
    print(header)
    results = []
    for level in levels:
        n = requests_per_level or max(16, 4 * level)
        r = asyncio.run(run_level(url, model, prompts, level, n, max_tokens, None))
        results.append(r)
        print(
            f"{r.concurrency:>4} {r.requests:>5} {r.requests_per_s:>8.2f} "
            f"{r.output_tokens_per_s:>10.1f} {r.mean_output_tokens:>8.1f} "
            f"{r.ttft_ms_p50:>7.1f}ms {r.ttft_ms_p99:>7.1f}ms {r.tpot_ms_p50:>7.2f}ms "
            f"{r.tpot_ms_p99:>7.2f}ms {r.errors:>4}",
            flush=True,
        )
    if out is not None:
        payload: dict[str, Any] = {
            "model": model,
            "version": version.version,
            "url": url,
            "max_tokens": max_tokens,
            "levels": [dataclasses.asdict(r) for r in results],
        }
        out.write_text(json.dumps(payload, indent=2), encoding="utf-8")
    return results
