"""Baseline figures of the model alone: tritonclient gRPC (asyncio) straight to Triton, and the
ceiling it is measured against.

Reports, per concurrency level, requests/s, output tokens/s, time to first token and time per
output token (p50, p99). These are the model's own figures: the Kafka pipeline adds to them.

``--in-process`` also runs the same version's graph with the project's own runner, scheduler
and sampler in this process (no Triton, no gRPC, no IPC): the same prompts, sampling (T 0.8,
top-p 0.95, seed = request number), token limit and closed-loop concurrency, the requests
stopping at end-of-sequence as they do through Triton; and a static batch (``concurrency``
requests prefilled together, every one running to ``max_tokens``: the decode step's own cost,
ms per step). It prints Triton's figures as a share of the in-process ones.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import re
import threading
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


@dataclasses.dataclass
class StaticResult:
    """A static batch in-process: ``batch`` requests together, each to ``max_tokens``."""

    batch: int
    tokens: int
    seconds: float
    output_tokens_per_s: float
    ms_per_step: float


class _InProcessSink:
    """Arrival times of one in-process request's tokens (scheduler thread)."""

    def __init__(self, started: float, done: Any) -> None:
        self.result = Generation(started=started)
        self.error = ""
        self._done = done

    def send(self, update: Any) -> None:
        now = time.perf_counter() - self.result.started
        if update.token_ids:
            if self.result.first_token_s is None:
                self.result.first_token_s = now
            self.result.arrivals.append((now, len(update.token_ids)))
            self.result.token_ids.extend(update.token_ids)
        if update.finished:
            self.result.completion_tokens = update.completion_tokens
            self.result.finish_reason = update.finish_reason
            self.result.finished_s = now
        if getattr(update, "last", update.finished):  # (runtimes before n had no ``last``)
            self._done(self)

    def fail(self, message: str) -> None:
        self.error = message
        self._done(self)

    def is_cancelled(self) -> bool:
        return False


def _config_params(version_dir: Path) -> dict[str, str]:
    """The served model's config.pbtxt parameters (what Triton's instance runs with)."""
    text = (version_dir.parent / "config.pbtxt").read_text(encoding="utf-8")
    pattern = r'key: "(\w+)" value \{ string_value: "([^"]*)" \}'
    return dict(re.findall(pattern, text))


def _scheduler(version_dir: Path, stop_at_eos: bool = True) -> Any:
    from genwire_model.runtime.runners import create_runner
    from genwire_model.runtime.scheduler import STREAM_RESPONSES_PER_S, Scheduler

    params = _config_params(version_dir)
    manifest = json.loads((version_dir / "manifest.json").read_text(encoding="utf-8"))
    runner = create_runner(
        version_dir,
        threads=int(params.get("intra_op_threads", "2")),
        prefer=params.get("backend", "auto"),
        allow_spinning=params.get("ort_allow_spinning", "0") == "1",
    )
    return Scheduler(
        runner,
        context=int(manifest["context_length"]),
        eos_ids=tuple(manifest["eos_token_ids"]) if stop_at_eos else (),
        max_batch=int(params.get("max_batch", "32")),
        stream_interval=int(params.get("stream_interval", "1")),
        cancel_check_interval=int(params.get("cancel_check_interval", "4")),
        chunk_batch=int(params.get("stream_chunk_batch", "16")),
        responses_per_s=float(params.get("stream_responses_per_s", str(STREAM_RESPONSES_PER_S))),
    )


def _request(prompt: list[int], max_tokens: int, seed: int, sink: Any, **kw: Any) -> Any:
    import numpy

    from genwire_model.runtime.scheduler import Request

    return Request(
        prompt=numpy.asarray(prompt, dtype=numpy.int64),
        max_tokens=max_tokens,
        temperature=0.8,
        top_p=0.95,
        top_k=0,
        seed=seed,
        stop_ids=frozenset(),
        stream=True,
        sink=sink,
        **kw,
    )


def run_in_process_level(
    scheduler: Any, prompts: list[list[int]], concurrency: int, requests: int, max_tokens: int
) -> LevelResult:
    """Closed loop through the scheduler thread: ``concurrency`` requests in flight."""
    lock = threading.Lock()
    finished = threading.Event()
    results: list[Generation] = []
    errors = 0
    submitted = 0

    def submit() -> None:
        nonlocal submitted
        i = submitted
        submitted += 1
        sink = _InProcessSink(time.perf_counter(), done)
        scheduler.submit(_request(prompts[i % len(prompts)], max_tokens, i, sink))

    def done(sink: _InProcessSink) -> None:
        nonlocal errors
        with lock:
            if sink.error:
                errors += 1
            else:
                results.append(sink.result)
            if len(results) + errors >= requests:
                finished.set()
            elif submitted < requests:
                submit()

    started = time.perf_counter()
    with lock:
        for _ in range(min(concurrency, requests)):
            submit()
    finished.wait()
    return summarize(concurrency, results, time.perf_counter() - started, errors)


def run_static(
    scheduler: Any, prompts: list[list[int]], batch: int, max_tokens: int
) -> StaticResult:
    """``batch`` requests prefilled together, each generating exactly ``max_tokens`` (the
    scheduler is made without end-of-sequence ids)."""
    finished = threading.Semaphore(0)
    sinks = [_InProcessSink(0.0, lambda _: finished.release()) for _ in range(batch)]
    started = time.perf_counter()
    for i, sink in enumerate(sinks):
        sink.result.started = started
        scheduler.submit(_request(prompts[i % len(prompts)], max_tokens, i, sink))
    for _ in sinks:
        finished.acquire()
    seconds = time.perf_counter() - started
    tokens = sum(s.result.completion_tokens for s in sinks)
    return StaticResult(
        batch=batch,
        tokens=tokens,
        seconds=round(seconds, 4),
        output_tokens_per_s=round(tokens / seconds, 1),
        ms_per_step=round(seconds * 1e3 / max_tokens, 3),
    )


def run_in_process(
    version_dir: Path,
    prompts: list[list[int]],
    levels: list[int],
    max_tokens: int,
    requests_per_level: int | None,
) -> tuple[list[LevelResult], list[StaticResult]]:
    """The ceiling: the closed-loop levels and a static batch per level, in this process."""
    static = _scheduler(version_dir, stop_at_eos=False)
    static.start()
    try:
        run_static(static, prompts, 1, 4)  # warm-up
        statics = [run_static(static, prompts, level, max_tokens) for level in levels]
    finally:
        static.stop()
    scheduler = _scheduler(version_dir)
    scheduler.start()
    try:
        loops = [
            run_in_process_level(
                scheduler, prompts, level, requests_per_level or max(16, 4 * level), max_tokens
            )
            for level in levels
        ]
    finally:
        scheduler.stop()
    return loops, statics


def _row(r: LevelResult) -> str:
    return (
        f"{r.concurrency:>4} {r.requests:>5} {r.requests_per_s:>8.2f} "
        f"{r.output_tokens_per_s:>10.1f} {r.mean_output_tokens:>8.1f} "
        f"{r.ttft_ms_p50:>7.1f}ms {r.ttft_ms_p99:>7.1f}ms {r.tpot_ms_p50:>7.2f}ms "
        f"{r.tpot_ms_p99:>7.2f}ms {r.errors:>4}"
    )


def run(
    url: str,
    model: str,
    repository: Path,
    levels: list[int],
    max_tokens: int,
    requests_per_level: int | None,
    out: Path | None,
    in_process: bool = False,
) -> list[LevelResult]:
    """Benchmark every level and print a table (and JSON to ``out`` if given); with
    ``in_process``, the in-process ceiling first and Triton's share of it."""
    version = ModelRepository(repository).latest(model)
    tokenizer = load_tokenizer(version)
    prompts = [tokenizer.encode(p).ids for p in PROMPTS]
    header = (
        f"{'conc':>4} {'reqs':>5} {'req/s':>8} {'out tok/s':>10} {'tok/req':>8} "
        f"{'TTFT p50':>9} {'TTFT p99':>9} {'TPOT p50':>9} {'TPOT p99':>9} {'err':>4}"
    )
    payload: dict[str, Any] = {
        "model": model,
        "version": version.version,
        "url": url,
        "max_tokens": max_tokens,
    }
    ceiling: list[LevelResult] = []
    if in_process:
        print(
            f"in-process: {model} version {version.version} (runner, scheduler and sampler in "
            f"this process): max_tokens {max_tokens}, temperature 0.8, top_p 0.95, streaming"
        )
        ceiling, statics = run_in_process(
            version.path, prompts, levels, max_tokens, requests_per_level
        )
        print(f"{'batch':>5} {'tokens':>7} {'out tok/s':>10} {'ms/step':>8}   (static batch)")
        for st in statics:
            print(
                f"{st.batch:>5} {st.tokens:>7} {st.output_tokens_per_s:>10.1f} "
                f"{st.ms_per_step:>8.3f}"
            )
        print(header + "   (closed loop)")
        for r in ceiling:
            print(_row(r), flush=True)
        payload["in_process"] = [dataclasses.asdict(r) for r in ceiling]
        payload["static"] = [dataclasses.asdict(st) for st in statics]
    print(
        f"model {model} version {version.version} at {url}: max_tokens {max_tokens}, "
        "temperature 0.8, top_p 0.95, streaming"
    )
    print(header)
    results = []
    for level in levels:
        n = requests_per_level or max(16, 4 * level)
        r = asyncio.run(run_level(url, model, prompts, level, n, max_tokens, None))
        results.append(r)
        print(_row(r), flush=True)
    payload["levels"] = [dataclasses.asdict(r) for r in results]
    if ceiling:
        print("Triton as a share of in-process (closed loop): output tokens/s, TPOT p50 ratio")
        shares = []
        for triton, local in zip(results, ceiling, strict=True):
            share = triton.output_tokens_per_s / local.output_tokens_per_s
            tpot = triton.tpot_ms_p50 / local.tpot_ms_p50 if local.tpot_ms_p50 else float("nan")
            shares.append({"concurrency": triton.concurrency, "share": share, "tpot_x": tpot})
            print(f"{triton.concurrency:>4} {share:>7.0%} {tpot:>7.2f}x")
        payload["share"] = shares
    if out is not None:
        out.write_text(json.dumps(payload, indent=2), encoding="utf-8")
    return results
