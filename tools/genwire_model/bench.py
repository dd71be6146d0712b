"""Baseline figures of the model alone: tritonclient gRPC (asyncio) straight to Triton, and the
ceiling it is measured against.

The client runs on the event loop the services run on (``--event-loop``, default ``auto``:
uvloop when installed, as ``genwire.service.loop`` picks it for the inference service, whose
way of talking to Triton this measures); each level records the loop it ran on.

Reports, per concurrency level, requests/s, output tokens/s, time to first token and time per
output token (p50, p99). These are the model's own figures: the Kafka pipeline adds to them.

``--in-process`` also runs the same version's graph with the project's own runner, scheduler
and sampler in this process (no Triton, no gRPC, no IPC): the same prompts, sampling (T 0.8,
top-p 0.95, seed = request number), token limit and closed-loop concurrency, the requests
stopping at end-of-sequence as they do through Triton; and a static batch (``concurrency``
requests prefilled together, every one running to ``max_tokens``: the decode step's own cost,
ms per step). It prints Triton's figures as a share of the in-process ones.

Every level also reports the CPU it cost per output token (core-ms: this process, plus, when
Triton runs on this machine, the tritonserver process and the model's Python stubs, read from
/proc): a figure that other work on a shared machine disturbs much less than tokens/s.

``--floor`` measures what Triton's decoupled gRPC streaming costs with no model at all: an echo
model (``floor_echo.py``: the same contract, execute path, outbox and response sender as the
real model, one token per response) in a throwaway version, the same client and levels:
responses/s, time to first response and core-ms per response and per request.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import math
import os
import re
import shutil
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np
from genwire_bench import loop_thread
from genwire_bench.served import served_versions
from genwire_bench.steal import CLOCK_TICKS, busy_s, cpu_times, rest_pct, stolen_pct

from genwire.service import loop as event_loops
from genwire_model.client import Generation, generate, generate_shared
from genwire_model.repository import ModelRepository, ModelVersion, load_tokenizer

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
    core_ms_per_token: dict[str, float] = dataclasses.field(default_factory=dict)
    """CPU per output token by process (``client``: this process; ``server``, ``stub``: Triton's
    processes when they run here; ``total``)."""
    responses_per_request: float = 0.0
    """Streamed responses a request got, on average (its first, the final, and those between)."""
    steal_pct: float | None = None
    """Share of the machine's CPU time the hypervisor took from it during the level (``steal``
    in /proc/stat), in percent; None where it cannot be read. Runs that differ in it are not
    comparable: the same work takes longer."""
    rest_pct: float | None = None
    """The CPU the rest of the machine used during the level, in % of one core: the machine's
    busy time less this process's and, through Triton, less the server's and the model's stubs'
    (``steal.rest_pct``; other processes, other models' stubs, and the kernel's interrupt
    time, which no process is charged for); None where /proc/stat cannot be read, or through
    Triton when its processes are not seen here (elsewhere, or in another PID namespace: their
    CPU cannot be told from the rest). Issue 17's goals are for a quiet machine: beside the
    idle native stack (6–10 % of a core in this column) the decode thread gets less of a CPU
    through Triton (docs/model.md *Round 21*)."""
    event_loop: str = ""
    """The client's event loop for the level (``uvloop`` or ``asyncio``; in-process: none)."""
    loop: dict[str, float] | None = None
    """In-process only: where the loop thread's time went, per decode step
    (``scheduler.LoopTimes.per_step``)."""
    loop_thread: dict[str, float] | None = None
    """The decode loop's thread over the level (``loop_thread.busiest``: on a CPU, waiting for
    one, asleep, in % of the wall time; its core-ms per output token); None where the kernel's
    schedstat cannot be read (Triton on another machine)."""


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
        responses_per_request=round(sum(r.responses for r in results) / max(1, len(results)), 2),
    )


def _cpu_s(pid: int) -> float | None:
    """User + system CPU seconds of a process (None when it is gone)."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as handle:
            fields = handle.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def triton_processes(model: str, proc: Path = Path("/proc")) -> dict[str, list[int]]:
    """``model``'s Python stubs on this machine (instance ``<model>_N_M`` in their arguments)
    and the tritonserver processes that run them, by pid; empty when Triton runs elsewhere."""
    found: dict[str, list[int]] = {"server": [], "stub": []}
    for entry in proc.iterdir() if proc.is_dir() else []:
        if not entry.name.isdigit():
            continue
        try:
            argv = [
                a.decode(errors="replace") for a in (entry / "cmdline").read_bytes().split(b"\0")
            ]
            if os.path.basename(argv[0]) != "triton_python_backend_stub" or not any(
                re.fullmatch(rf"{re.escape(model)}_\d+_\d+", a) for a in argv
            ):
                continue
            parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        found["stub"].append(int(entry.name))
        if parent not in found["server"]:
            found["server"].append(parent)
    return found


class CpuMeter:
    """CPU seconds spent by this process and Triton's (server, the model's stubs) over a span."""

    def __init__(self, model: str | None) -> None:
        self.pids = triton_processes(model) if model else {"server": [], "stub": []}
        self._last: dict[int, float] = {}

    def _read(self, pid: int) -> float:
        # A process that ended (a replaced version's stub) keeps its last reading.
        value = _cpu_s(pid)
        if value is not None:
            self._last[pid] = value
        return self._last.get(pid, 0.0)

    def sample(self) -> dict[str, float]:
        out = {name: sum(self._read(pid) for pid in pids) for name, pids in self.pids.items()}
        out["client"] = time.process_time()
        return out

    @staticmethod
    def per_unit(start: dict[str, float], end: dict[str, float], units: float) -> dict[str, float]:
        """Core-ms per unit (token, response, request) by process, and their total; a process
        not found here is left out."""
        out: dict[str, float] = {
            name: round((end[name] - start[name]) * 1e3 / max(units, 1.0), 3)
            for name in ("server", "stub", "client")
            if name in start and (name == "client" or end[name] > 0)
        }
        out["total"] = round(sum(out.values()), 3)
        return out

    @staticmethod
    def used_s(start: dict[str, float], end: dict[str, float]) -> float:
        """CPU seconds the measured processes used between two samples, together."""
        return sum(end[name] - start[name] for name in start)


async def run_level(
    url: str,
    model: str,
    prompts: list[list[int]],
    concurrency: int,
    requests: int,
    max_tokens: int,
    stop_ids: list[int] | None,
    shared: bool = False,
    min_gap_ms: float = 0.0,
) -> LevelResult:
    """``requests`` requests, ``concurrency`` at a time, each on its own gRPC stream, or with
    ``shared`` all on one (rotated every second, as the inference service does); with
    ``min_gap_ms``, each asks for its responses at least that far apart."""
    from tritonclient.grpc.aio import InferenceServerClient

    from genwire.triton_stream import SharedStreams

    client = InferenceServerClient(url)
    streams = SharedStreams(client._client_stub.ModelStreamInfer, 1.0) if shared else None

    async def one(
        prompt: list[int], tokens: int, seed: int = 0, sampled: bool = True
    ) -> Generation:
        sampling: dict[str, Any] = {"temperature": 0.8, "top_p": 0.95} if sampled else {}
        sampling.update(seed=seed, stop_token_ids=stop_ids if sampled else None)
        sampling.update(min_gap_ms=min_gap_ms)
        if streams is not None:
            return await generate_shared(streams, model, prompt, tokens, **sampling)
        return await generate(client, model, prompt, tokens, **sampling)

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
                results.append(await one(prompts[i % len(prompts)], max_tokens, seed=i))
            except Exception:
                errors += 1

    try:
        # One warm-up request so connection set-up is not measured.
        await one(prompts[0], 4, sampled=False)
        meter = CpuMeter(model)
        cpu = meter.sample()
        machine, busy = cpu_times(), busy_s()
        threads = loop_thread.read(meter.pids["stub"])
        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        seconds = time.perf_counter() - started
        threads_after = loop_thread.read(meter.pids["stub"])
        used = meter.sample()
        stolen, busy_after = stolen_pct(machine, cpu_times()), busy_s()
    finally:
        if streams is not None:
            await streams.close(5.0)
        await client.close()
    result = summarize(concurrency, results, seconds, errors)
    tokens = sum(r.completion_tokens for r in results)
    result.core_ms_per_token = CpuMeter.per_unit(cpu, used, tokens)
    result.loop_thread = loop_thread.busiest(threads, threads_after, tokens)
    result.steal_pct = stolen
    # Triton's CPU is only the rest's to subtract where its processes are seen.
    if meter.pids["stub"]:
        result.rest_pct = rest_pct(busy, busy_after, CpuMeter.used_s(cpu, used), seconds)
    result.event_loop = event_loops.describe()
    return result


@dataclasses.dataclass
class StaticResult:
    """A static batch in-process: ``batch`` requests together, each to ``max_tokens``."""

    batch: int
    tokens: int
    seconds: float
    output_tokens_per_s: float
    ms_per_step: float
    loop: dict[str, float] | None = None
    """Where the loop thread's time went, per decode step (``scheduler.LoopTimes.per_step``)."""


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
    from genwire_model.runtime.runners import create_runner, version_options
    from genwire_model.runtime.scheduler import STREAM_RESPONSES_PER_S, Scheduler

    params = _config_params(version_dir)
    manifest = json.loads((version_dir / "manifest.json").read_text(encoding="utf-8"))
    options = version_options(params, manifest)
    runner = create_runner(
        version_dir,
        threads=options["intra_op_threads"],
        prefer=params.get("backend", "auto"),
        allow_spinning=params.get("ort_allow_spinning", "0") == "1",
    )
    return Scheduler(
        runner,
        context=int(manifest["context_length"]),
        eos_ids=tuple(manifest["eos_token_ids"]) if stop_at_eos else (),
        max_batch=options["max_batch"],
        stream_interval=options["stream_interval"],
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

    from genwire_model.runtime.scheduler import LoopTimes

    cpu = CpuMeter(None).sample()
    machine, busy = cpu_times(), busy_s()
    threads = loop_thread.read([os.getpid()])
    scheduler.times = times = LoopTimes()  # (the loop is idle: the next iteration counts here)
    started = time.perf_counter()
    with lock:
        for _ in range(min(concurrency, requests)):
            submit()
    finished.wait()
    seconds = time.perf_counter() - started
    threads_after = loop_thread.read([os.getpid()])  # the same window as the tokens per second
    # One window for the CPU, steal and the rest, as through Triton: the level's, not the idle
    # wait after it.
    used, busy_after, machine_after = CpuMeter(None).sample(), busy_s(), cpu_times()
    result = summarize(concurrency, results, seconds, errors)
    scheduler.wait_idle(1.0)  # the iteration that sent the last response counted in ``times``
    result.loop = times.per_step()
    tokens = sum(r.completion_tokens for r in results)
    result.core_ms_per_token = CpuMeter.per_unit(cpu, used, tokens)
    result.loop_thread = loop_thread.busiest(threads, threads_after, tokens)
    result.steal_pct = stolen_pct(machine, machine_after)
    result.rest_pct = rest_pct(busy, busy_after, CpuMeter.used_s(cpu, used), seconds)
    return result


def run_static(
    scheduler: Any, prompts: list[list[int]], batch: int, max_tokens: int
) -> StaticResult:
    """``batch`` requests prefilled together, each generating exactly ``max_tokens`` (the
    scheduler is made without end-of-sequence ids)."""
    from genwire_model.runtime.scheduler import LoopTimes

    finished = threading.Semaphore(0)
    sinks = [_InProcessSink(0.0, lambda _: finished.release()) for _ in range(batch)]
    scheduler.times = times = LoopTimes()  # (the loop is idle: the next iteration counts here)
    started = time.perf_counter()
    for i, sink in enumerate(sinks):
        sink.result.started = started
        scheduler.submit(_request(prompts[i % len(prompts)], max_tokens, i, sink))
    for _ in sinks:
        finished.acquire()
    seconds = time.perf_counter() - started
    scheduler.wait_idle(1.0)  # the iteration that sent the last response counted in ``times``
    tokens = sum(s.result.completion_tokens for s in sinks)
    return StaticResult(
        batch=batch,
        tokens=tokens,
        seconds=round(seconds, 4),
        output_tokens_per_s=round(tokens / seconds, 1),
        ms_per_step=round(seconds * 1e3 / max_tokens, 3),
        loop=times.per_step(),
    )


LOOP_PARTS = (
    ("step_ms", "step"),
    ("pass_ms", "pass"),
    ("sampling_ms", "sampling"),
    ("admit_ms", "admit"),
    ("prefill_pass_ms", "(prefill)"),
    ("reform_ms", "re-form"),
    ("other_ms", "other"),
)


def print_loop_times(statics: list[StaticResult], loops: list[LevelResult]) -> None:
    """The loop thread's time per decode step by part, the static batch beside the closed
    loop at each level: what the closed loop's TPOT pays that the static step does not."""
    print(
        "where the loop's time goes, ms per decode step (pass: the decode pass; admit: new "
        "requests' prefill passes and first tokens; rows fed / sampled; cache width; on "
        "TensorRT a pass is its launch, the GPU's time shows in sampling):"
    )
    names = " ".join(f"{label:>9}" for _, label in LOOP_PARTS)
    print(f"{'batch':>5} {'loop':>7} {names} {'rows':>6} {'sampled':>7} {'width':>6}")
    for st, lv in zip(statics, loops, strict=True):
        for kind, times in (("static", st.loop), ("closed", lv.loop)):
            if not times:
                continue
            parts = " ".join(f"{times[key]:>9.3f}" for key, _ in LOOP_PARTS)
            print(
                f"{st.batch:>5} {kind:>7} {parts} {times['rows']:>6.1f} "
                f"{times['live_rows']:>7.1f} {times['width']:>6.1f}"
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


def _loop_ratio(triton: LevelResult, local: LevelResult, key: str) -> float:
    """Triton's decode-thread figure over the in-process one (NaN where either is missing)."""
    mine, theirs = local.loop_thread, triton.loop_thread
    if not mine or not theirs or not mine[key] or math.isnan(mine[key]):
        return math.nan
    return theirs[key] / mine[key]


def compare(triton: LevelResult, local: LevelResult, static: StaticResult) -> dict[str, Any]:
    """Triton's level against the in-process one: share of output tokens/s, TPOT p50 over
    the in-process TPOT p50 and over the static batch's ms per step, TTFT p50 minus the
    in-process TTFT p50, CPU per token over the in-process CPU per token; and the share's two
    factors (``loop_thread``): the decode thread's time on a CPU over the in-process one's
    (``loop_on_cpu_x``) and its CPU per token over the in-process one's (``loop_cpu_x``): the
    share is about the first divided by the second."""
    nan = float("nan")
    return {
        "concurrency": triton.concurrency,
        "share": triton.output_tokens_per_s / local.output_tokens_per_s
        if local.output_tokens_per_s
        else nan,
        "tpot_x": triton.tpot_ms_p50 / local.tpot_ms_p50 if local.tpot_ms_p50 else nan,
        "tpot_step_x": triton.tpot_ms_p50 / static.ms_per_step if static.ms_per_step else nan,
        "ttft_extra_ms": triton.ttft_ms_p50 - local.ttft_ms_p50,
        "cpu_x": triton.core_ms_per_token.get("total", nan)
        / local.core_ms_per_token.get("total", nan),
        "loop_on_cpu_x": _loop_ratio(triton, local, "on_cpu_pct"),
        "loop_cpu_x": _loop_ratio(triton, local, "core_ms_per_token"),
    }


def times_x(value: float) -> str:
    """A ratio as ``1.23x``, ``–`` where there is none (NaN)."""
    return "–" if math.isnan(value) else f"{value:.2f}x"


def loop_split(times: dict[str, float] | None) -> str:
    """The decode thread's ``on CPU/waiting/asleep`` percentages, ``–`` where unread."""
    if not times:
        return "–"
    return f"{times['on_cpu_pct']:.0f}/{times['waiting_pct']:.0f}/{times['asleep_pct']:.0f}"


def _streams(shared: bool) -> str:
    return "one gRPC stream for all requests" if shared else "a gRPC stream per request"


def _row(r: LevelResult) -> str:
    return (
        f"{r.concurrency:>4} {r.requests:>5} {r.requests_per_s:>8.2f} "
        f"{r.output_tokens_per_s:>10.1f} {r.mean_output_tokens:>8.1f} "
        f"{r.ttft_ms_p50:>7.1f}ms {r.ttft_ms_p99:>7.1f}ms {r.tpot_ms_p50:>7.2f}ms "
        f"{r.tpot_ms_p99:>7.2f}ms {r.errors:>4} {rest_text(r.rest_pct):>5} "
        f"{_cpu_text(r.core_ms_per_token)}"
    )


def rest_text(value: float | None) -> str:
    """The rest of the machine's CPU, ``12%`` of a core, ``–`` where unread."""
    return "–" if value is None else f"{value:.0f}%"


def _cpu_text(cpu: dict[str, float]) -> str:
    """``total (server + stub + client)`` core-ms, the parts that were measured."""
    parts = " + ".join(f"{cpu[k]:.3f} {k}" for k in ("server", "stub", "client") if k in cpu)
    return f"{cpu.get('total', float('nan')):>6.3f} ({parts})" if cpu else ""


def served_version(url: str, model: str, repository: Path) -> ModelVersion:
    """The version the requests reach (they name none: Triton's newest served), so the
    tokenizer, the in-process ceiling and the label are of it; the repository's newest when
    Triton serves none (the Triton phase then fails on its own)."""
    served = asyncio.run(served_versions(url, model))
    repo = ModelRepository(repository)
    if not served:
        return repo.latest(model)
    if int(served[-1]) not in repo.versions(model):
        raise SystemExit(
            f"genwire model bench: Triton at {url} serves {model} version {served[-1]}, which "
            f"is not in {repository}: name Triton's model repository with --repository"
        )
    return repo.get(model, int(served[-1]))


def run(
    url: str,
    model: str,
    repository: Path,
    levels: list[int],
    max_tokens: int,
    requests_per_level: int | None,
    out: Path | None,
    in_process: bool = False,
    shared_stream: bool = False,
    min_gap_ms: float = 0.0,
    event_loop: str = "auto",
) -> list[LevelResult]:
    """Benchmark every level and print a table (and JSON to ``out`` if given); with
    ``in_process``, the in-process ceiling first and Triton's share of it; with
    ``shared_stream``, every request of a level on one gRPC stream (the inference service's
    way) instead of one stream each; with ``min_gap_ms``, every request asks for streamed
    responses at least that far apart (what the inference service asks for); the client runs
    on ``event_loop`` (``genwire.service.loop``)."""
    client_loop = event_loops.label(event_loop)
    version = served_version(url, model, repository)
    tokenizer = load_tokenizer(version)
    prompts = [tokenizer.encode(p).ids for p in PROMPTS]
    header = (
        f"{'conc':>4} {'reqs':>5} {'req/s':>8} {'out tok/s':>10} {'tok/req':>8} "
        f"{'TTFT p50':>9} {'TTFT p99':>9} {'TPOT p50':>9} {'TPOT p99':>9} {'err':>4} "
        f"{'rest':>5} core-ms/token"
    )
    payload: dict[str, Any] = {
        "model": model,
        "version": version.version,
        "url": url,
        "max_tokens": max_tokens,
        "shared_stream": shared_stream,
        "min_response_gap_ms": min_gap_ms,
        "event_loop": client_loop,
    }
    ceiling: list[LevelResult] = []
    statics: list[StaticResult] = []
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
        print_loop_times(statics, ceiling)
        payload["in_process"] = [dataclasses.asdict(r) for r in ceiling]
        payload["static"] = [dataclasses.asdict(st) for st in statics]
    print(
        f"model {model} version {version.version} at {url}: max_tokens {max_tokens}, "
        f"temperature 0.8, top_p 0.95, streaming, {_streams(shared_stream)}, client on "
        f"{client_loop}"
        + (f", responses at least {min_gap_ms:g} ms apart" if min_gap_ms > 0 else "")
    )
    print(header)
    results = []
    for level in levels:
        n = requests_per_level or max(16, 4 * level)
        r = event_loops.run(
            run_level(
                url,
                model,
                prompts,
                level,
                n,
                max_tokens,
                None,
                shared=shared_stream,
                min_gap_ms=min_gap_ms,
            ),
            event_loop,
        )
        results.append(r)
        print(_row(r), flush=True)
    print(
        "responses per request (the first, the final and those between): "
        + ", ".join(f"conc {r.concurrency} {r.responses_per_request:.2f}" for r in results)
    )
    payload["levels"] = [dataclasses.asdict(r) for r in results]
    if ceiling:
        print(
            "Triton against in-process: share of output tokens/s; TPOT p50 / in-process TPOT "
            "p50 and / the static batch's ms per step; TTFT p50 minus in-process TTFT p50; "
            "core-ms per token / in-process; the share's factors: the decode thread's time on a "
            "CPU / in-process and its CPU per token / in-process, and its wall time on a CPU / "
            "waiting for one / asleep, % (in-process; Triton)"
        )
        shares = []
        for triton, local, st in zip(results, ceiling, statics, strict=True):
            c = compare(triton, local, st)
            shares.append(c)
            print(
                f"{triton.concurrency:>4} {c['share']:>7.0%} {c['tpot_x']:>7.2f}x "
                f"{c['tpot_step_x']:>7.2f}x {c['ttft_extra_ms']:>+7.1f}ms {c['cpu_x']:>7.2f}x "
                f"{times_x(c['loop_on_cpu_x']):>8} {times_x(c['loop_cpu_x']):>8}  "
                f"{loop_split(local.loop_thread)}; {loop_split(triton.loop_thread)}"
            )
        payload["share"] = shares
    if out is not None:
        out.write_text(json.dumps(payload, indent=2), encoding="utf-8")
    return results


FLOOR_MODEL = "genwire-floor-echo"
"""Name prefix of the throwaway echo model ``--floor`` loads (a random suffix is added)."""


def write_echo_model(repository: Path, name: str) -> Path:
    """A throwaway model folder in ``repository``: the genwire model's config.pbtxt, and a
    version 1 whose ``model.py`` is ``floor_echo.py`` beside the real ``triton_model.py`` and
    ``genwire_runtime`` (so its execute path, outbox and response sender are the real ones)."""
    from genwire_model.build import _copy_runtime, render_config

    model_dir = repository / name
    version = model_dir / "1"
    version.mkdir(parents=True)
    (model_dir / "config.pbtxt").write_text(render_config(name), encoding="utf-8")
    _copy_runtime(version)  # model.py (triton_model.py), genwire_runtime/, genwire_env.json
    shutil.move(version / "model.py", version / "triton_model.py")
    shutil.copy2(Path(__file__).with_name("floor_echo.py"), version / "model.py")
    return model_dir


def run_floor(
    url: str,
    http_url: str,
    repository: Path,
    levels: list[int],
    max_tokens: int,
    requests_per_level: int | None,
    out: Path | None,
    headers: dict[str, str] | None = None,
    shared_stream: bool = False,
    event_loop: str = "auto",
) -> tuple[list[LevelResult], list[LevelResult]]:
    """Triton's streaming cost with no model: an echo model loaded for the run (then unloaded
    and removed), the same client and levels as the model bench. Returns the per-response
    levels (``max_tokens`` one-token responses per request) and the per-request levels (one
    response per request); the client runs on ``event_loop``."""
    import httpx

    client_loop = event_loops.label(event_loop)

    name = f"{FLOOR_MODEL}-{uuid.uuid4().hex[:6]}"
    model_dir = repository / name
    base = f"http://{http_url}"
    loading = False
    try:
        write_echo_model(repository, name)  # (a part written is removed too)
        loading = True
        loaded = httpx.post(
            f"{base}/v2/repository/models/{name}/load", headers=headers or {}, timeout=120.0
        )
        if loaded.status_code != 200:
            raise RuntimeError(f"could not load the echo model {name}: {loaded.text}")
        try:
            header = (
                f"{'conc':>4} {'reqs':>5} {'req/s':>8} {'resp/s':>10} {'resp/req':>8} "
                f"{'TTFT p50':>9} {'TTFT p99':>9} {'gap p50':>9} {'gap p99':>9} {'err':>4} "
                f"{'rest':>5} "
            )
            prompt = [[5, 6, 7]]
            tables: list[list[LevelResult]] = []
            for tokens, unit in ((max_tokens, "response"), (1, "request")):
                print(
                    f"floor: echo model {name} at {url}, no model work: {tokens} one-token "
                    f"response(s) per request, {_streams(shared_stream)}, client on "
                    f"{client_loop}; core-ms per {unit}"
                )
                print(header + f"core-ms/{unit}")
                table = []
                for level in levels:
                    n = requests_per_level or max(16, 4 * level)
                    if tokens == 1:
                        n *= 4  # requests are short: more of them for a steady figure
                    r = event_loops.run(
                        run_level(url, name, prompt, level, n, tokens, None, shared=shared_stream),
                        event_loop,
                    )
                    table.append(r)
                    print(_row(r), flush=True)
                tables.append(table)
        finally:
            loading = False
            httpx.post(
                f"{base}/v2/repository/models/{name}/unload", headers=headers or {}, timeout=60.0
            )
    finally:
        if loading:  # a load refused or timed out may still have started the model
            try:
                httpx.post(
                    f"{base}/v2/repository/models/{name}/unload",
                    headers=headers or {},
                    timeout=60.0,
                )
            except httpx.HTTPError as exc:
                print(f"floor: could not unload the echo model {name}: {exc}", flush=True)
        shutil.rmtree(model_dir, ignore_errors=True)
    if out is not None:
        payload = {
            "model": name,
            "url": url,
            "max_tokens": max_tokens,
            "shared_stream": shared_stream,
            "event_loop": client_loop,
            "per_response": [dataclasses.asdict(r) for r in tables[0]],
            "per_request": [dataclasses.asdict(r) for r in tables[1]],
        }
        out.write_text(json.dumps(payload, indent=2), encoding="utf-8")
    return tables[0], tables[1]
