"""One benchmark run: every target under every load, side by side, then traces and resources."""

from __future__ import annotations

import contextlib
import os
import platform
import secrets
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from genwire.service import loop as event_loops
from genwire_bench import loop_thread
from genwire_bench.drivers.base import Driver, new_trace
from genwire_bench.load import closed_loop, open_loop
from genwire_bench.machine import reference_ms
from genwire_bench.prompts import Tokenize, build_requests
from genwire_bench.records import BenchRequest, RequestRecord, SamplingSpec
from genwire_bench.resources import (
    OWN,
    ResourceSampler,
    Usage,
    by_service,
    discover,
    max_known,
    own_process,
    sum_known,
)
from genwire_bench.served import DIRECT_TARGETS
from genwire_bench.stats import Load, Overhead, Summary, compare, summarize
from genwire_bench.steal import cpu_times
from genwire_bench.traces import Breakdown, JaegerClient, breakdown

TARGETS = (
    "triton",
    "triton-stream",
    "grpc",
    "grpc-stream",
    "kafka",
    "kafka-stream",
    "openai-http",
    "openai-http-stream",
)
"""Every target, baselines first."""


@dataclass
class BenchConfig:
    """What to run; the CLI fills it from its flags."""

    targets: Sequence[str] = TARGETS
    concurrency: Sequence[int] = (1,)
    rates: Sequence[float] = ()
    """Open-loop arrival rates (requests/s); when given they replace the concurrency sweep."""
    requests: int = 50
    warmup: int = 5
    rounds: int = 1
    sampling: SamplingSpec = field(default_factory=SamplingSpec)
    model: str = "genwire-gpt"
    model_version: str = ""
    """Version the baseline asks Triton for: the one the pipeline routes to
    (``genwire_bench.served``); ``""``: Triton's default."""
    stop_token_ids: Sequence[int] = ()
    """The model's end-of-sequence ids, sent to Triton directly as preprocess sends them."""
    triton_url: str = "127.0.0.1:8001"
    gateway_address: str = "127.0.0.1:50051"
    gateway_http_url: str = "http://127.0.0.1:8080"
    """The gateway's OpenAI-compatible HTTP API (targets openai-http, openai-http-stream)."""
    kafka_bootstrap: str = "127.0.0.1:9092"
    jaeger_url: str = "http://127.0.0.1:16686"
    run_dir: Path | None = None
    """The stack's pid-file folder (``<GENWIRE_HOME>/run``), to find each service's process."""
    timeout_s: float = 60.0
    traces: bool = True
    trace_sample: int = 30
    sampled: bool = True
    """``--unsampled`` turns it off: requests carry an unsampled trace context, so the pipeline
    records, exports and ingests no span for them (what tracing costs; no per-hop breakdown)."""
    resources: bool = True
    progress: bool = True
    profile_dir: Path | None = None
    """``--profile``: py-spy on every genwire service during each phase (genwire_bench.profile)."""
    profile_rate: int = 100
    """py-spy samples per second with ``profile_dir``."""
    event_loop: str = "auto"
    """``--event-loop``: the loop the CLI runs ``Runner.run`` on (``genwire.service.loop``; auto:
    uvloop when installed, as the services run). The report's ``environment.event_loop`` is the
    loop that actually ran (a caller of ``Runner`` picks its own)."""

    def loads(self) -> list[Load]:
        """The phases' loads, in order."""
        if self.rates:
            return [Load("open", float(r)) for r in self.rates]
        return [Load("closed", float(c)) for c in self.concurrency]


@dataclass
class Phase:
    """One target under one load, over every round."""

    target: str
    load: Load
    records: list[RequestRecord] = field(default_factory=list)
    usage: list[dict[str, Usage]] = field(default_factory=list)
    walls: list[float] = field(default_factory=list)
    profiles: list[dict[str, Any]] = field(default_factory=list)
    """Per round, each profiled service's raw py-spy file (or why there is none)."""
    cpu_ticks: list[tuple[int, int] | None] = field(default_factory=list)
    """Per round, the machine's (steal, total) CPU ticks over the phase (None: unreadable)."""
    model_thread: list[dict[str, float] | None] = field(default_factory=list)
    """Per round, the model's decode thread over the phase (``loop_thread.busiest`` of the
    served version's Triton stub; None where it was not found or not read)."""


@dataclass
class BenchReport:
    """Everything one run measured (serialised as the --json file)."""

    run_id: str
    config: dict[str, Any]
    environment: dict[str, Any]
    summaries: list[Summary]
    overheads: list[Overhead]
    breakdowns: dict[str, Breakdown]
    resources: dict[str, dict[str, Usage]]
    skipped: dict[str, str]
    records: list[RequestRecord]
    profiles: dict[str, Any] = field(default_factory=dict)
    """``--profile``: per phase, the services' profiles and those not profiled (``profile``)."""
    steal: dict[str, float | None] = field(default_factory=dict)
    """Per phase (as ``resources``): the percentage of the machine's CPU time the hypervisor
    took during it (``steal`` in /proc/stat), over its rounds; None where unreadable."""
    model_thread: dict[str, dict[str, float] | None] = field(default_factory=dict)
    """Per phase (as ``resources``): the model's decode thread over its rounds
    (``phase_model_thread``); None where the stub was not found on this machine."""


DriverFactory = Callable[[str, "BenchConfig", dict[str, Any]], Driver]


def make_driver(name: str, cfg: BenchConfig, shared: dict[str, Any]) -> Driver:
    """The driver of a target name (imports stay lazy: each pulls in its client library)."""
    if name in DIRECT_TARGETS:
        from genwire_bench.drivers.triton import TritonDriver

        return TritonDriver(
            cfg.triton_url,
            cfg.model,
            version=cfg.model_version,
            stream=name == "triton-stream",
            timeout_s=cfg.timeout_s,
        )
    if name in ("grpc", "grpc-stream"):
        from genwire_bench.drivers.gateway import GatewayDriver

        return GatewayDriver(
            cfg.gateway_address, cfg.model, stream=name == "grpc-stream", timeout_s=cfg.timeout_s
        )
    if name in ("openai-http", "openai-http-stream"):
        from genwire_bench.drivers.openai_http import OpenAIHttpDriver

        return OpenAIHttpDriver(
            cfg.gateway_http_url,
            cfg.model,
            stream=name == "openai-http-stream",
            timeout_s=cfg.timeout_s,
        )
    if name in ("kafka", "kafka-stream"):
        from genwire_bench.drivers.kafka import KafkaDriver, KafkaReader

        reader = shared.setdefault("kafka_reader", KafkaReader(cfg.kafka_bootstrap))
        return KafkaDriver(
            cfg.kafka_bootstrap,
            cfg.model,
            stream=name == "kafka-stream",
            timeout_s=cfg.timeout_s,
            reader=reader,
        )
    raise ValueError(f"unknown target {name!r}; choose from {', '.join(TARGETS)}")


def phase_steal(phase: Phase) -> float | None:
    """The hypervisor's share of the machine's CPU time over a phase's rounds, in percent."""
    ticks = [t for t in phase.cpu_ticks if t is not None]
    total = sum(t for _, t in ticks)
    return round(100.0 * sum(s for s, _ in ticks) / total, 1) if total > 0 else None


def phase_model_thread(phase: Phase) -> dict[str, float] | None:
    """The decode thread's split of a phase's wall time (on a CPU, waiting for one, asleep, %),
    each round weighted by its wall time, and its core-ms per output token over the rounds that
    read it and made tokens."""
    rounds = [
        (t, wall)
        for t, wall in zip(phase.model_thread, phase.walls, strict=False)
        if t is not None and wall > 0 and t["tokens"] > 0
    ]
    if not rounds:
        return None
    walls = sum(wall for _, wall in rounds)
    out = {
        key: round(sum(t[key] * wall for t, wall in rounds) / walls, 1) for key in loop_thread.SPLIT
    }
    tokens = sum(t["tokens"] for t, _ in rounds)
    out["core_ms_per_token"] = round(sum(t["cpu_ms"] for t, _ in rounds) / tokens, 4)
    return out


def merge_usage(phase: Phase) -> dict[str, Usage]:
    """Resources of a phase over its rounds: CPU weighted by wall time, peaks as maxima."""
    out: dict[str, Usage] = {}
    names = {n for u in phase.usage for n in u}
    for name in sorted(names):
        items = [(u[name], w) for u, w in zip(phase.usage, phase.walls, strict=True) if name in u]
        total = sum(w for _, w in items) or 1.0
        out[name] = Usage(
            pids=tuple(sorted({p for u, _ in items for p in u.pids})),
            cpu_percent=sum(u.cpu_percent * w for u, w in items) / total,
            cpu_peak_percent=max(u.cpu_peak_percent for u, _ in items),
            rss_peak_mb=max(u.rss_peak_mb for u, _ in items),
            rss_mean_mb=sum(u.rss_mean_mb * w for u, w in items) / total,
            cpu_s=sum(u.cpu_s for u, _ in items),
            instances=max(u.instances for u, _ in items),
            wall_s=sum(u.wall_s for u, _ in items),
            jit_cpu_s=sum_known(u.jit_cpu_s for u, _ in items),
            jit_peak_share=max_known(u.jit_peak_share for u, _ in items),
            fork_cpu_s=sum_known(u.fork_cpu_s for u, _ in items),
        )
    return out


class Runner:
    """Drives the phases; ``progress`` receives every finished record (for the progress bar)."""

    def __init__(
        self,
        cfg: BenchConfig,
        tokenize: Tokenize,
        progress: Callable[[str, RequestRecord | None], None] | None = None,
        driver_factory: DriverFactory | None = None,
    ) -> None:
        self.cfg = cfg
        self._make_driver = driver_factory or make_driver
        self.tokenize = tokenize
        self.run_id = secrets.token_hex(4)
        self._progress = progress or (lambda _label, _record: None)
        self._phase_no = 0
        self.active = len(cfg.targets)
        """How many targets are running (those that failed to start are skipped)."""
        self.reference_before: float | None = None
        """The machine's reference workload before the run (ms; ``genwire_bench.machine``)."""
        self.model_stub: int | None = None
        """The served version's Triton stub, whose decode thread each phase reads."""

    def total_requests(self, targets: int | None = None) -> int:
        """How many requests the run sends (progress-bar total)."""
        n = len(self.cfg.targets) if targets is None else targets
        return n * (self.cfg.warmup + self.cfg.requests * len(self.cfg.loads()))

    async def run(self) -> BenchReport:
        """Start the drivers, run every phase, fetch traces, and build the report."""
        cfg = self.cfg
        started = time.time()
        load_before = os.getloadavg()
        self.reference_before = reference_ms()
        shared: dict[str, Any] = {}
        drivers: list[Driver] = []
        skipped: dict[str, str] = {}
        for name in cfg.targets:
            driver = self._make_driver(name, cfg, shared)
            try:
                await driver.start()
            except Exception as exc:
                skipped[name] = f"{type(exc).__name__}: {exc}"
                with contextlib.suppress(Exception):
                    await driver.close()
                continue
            drivers.append(driver)
        self.active = len(drivers)
        try:
            phases = await self._run_phases(drivers)
        finally:
            for driver in drivers:
                with contextlib.suppress(Exception):
                    await driver.close()
        breakdowns = await self._breakdowns(phases, drivers) if cfg.traces else {}
        return self._report(phases, drivers, skipped, breakdowns, started, load_before)

    async def _run_phases(self, drivers: Sequence[Driver]) -> list[Phase]:
        cfg = self.cfg
        stops = cfg.stop_token_ids
        warm = build_requests(cfg.warmup, cfg.sampling, self.tokenize, cfg.requests, stops)
        for driver in drivers:
            await closed_loop(self._sender(driver, "warmup"), warm, min(2, max(cfg.warmup, 1)))
        processes = discover(cfg.run_dir) if cfg.resources else {}
        if cfg.resources:
            processes[OWN] = own_process()
        self.model_stub = self._model_stub()
        requests = build_requests(cfg.requests, cfg.sampling, self.tokenize, 0, stops)
        rounds = _split(requests, cfg.rounds)
        phases = {(d.name, load): Phase(d.name, load) for d in drivers for load in cfg.loads()}
        for load in cfg.loads():
            for r, chunk in enumerate(rounds):
                # Rotate the order each round, so no target always runs first (drift, caches).
                order = list(drivers[r % len(drivers) :]) + list(drivers[: r % len(drivers)])
                for driver in order:
                    phase = phases[(driver.name, load)]
                    await self._run_phase(driver, load, chunk, r, phase, processes)
        return list(phases.values())

    def _model_stub(self) -> int | None:
        """The served version's Triton stub on this machine (None: Triton runs elsewhere, or
        the stack's run records are not here)."""
        from genwire_bench import profile

        try:
            targets = profile.profile_targets(
                self.cfg.run_dir, self.cfg.model, self.cfg.model_version
            )
        except Exception:  # psutil's or the run records' errors: the table is left out
            return None
        return targets.get(profile.MODEL_SERVICE)

    async def _run_phase(
        self,
        driver: Driver,
        load: Load,
        requests: Sequence[BenchRequest],
        round_no: int,
        phase: Phase,
        processes: dict[str, Any],
    ) -> None:
        profiler = None
        if self.cfg.profile_dir is not None:
            from genwire_bench import profile

            label = f"{driver.name} {load.label}"
            profiler = profile.PhaseProfiler(
                profile.py_spy() or "py-spy",
                profile.profile_targets(self.cfg.run_dir, self.cfg.model, self.cfg.model_version),
                profile.phase_folder(self.cfg.profile_dir, label) / f"round{round_no}",
                self.cfg.profile_rate,
            )
            await profiler.start()
        sampler = ResourceSampler(processes) if processes else None
        if sampler:
            sampler.start()
        machine = cpu_times()
        stub = [self.model_stub] if self.model_stub is not None else []
        threads = loop_thread.read(stub)
        t0 = time.perf_counter()
        send = self._sender(driver, f"{driver.name} {load.label}")
        if load.mode == "closed":
            records = await closed_loop(send, requests, int(load.value))
        else:
            seed = self.cfg.sampling.seed + round_no
            records = await open_loop(send, requests, load.value, seed)
        phase.walls.append(time.perf_counter() - t0)
        tokens = sum(r.output_tokens for r in records if r.ok)
        phase.model_thread.append(loop_thread.busiest(threads, loop_thread.read(stub), tokens))
        after = cpu_times()
        phase.cpu_ticks.append(
            (after[0] - machine[0], after[1] - machine[1]) if machine and after else None
        )
        if sampler:
            # Instances of a scaled service (gateway-2…) count as that service.
            phase.usage.append(by_service(await sampler.stop()))
        if profiler is not None:
            phase.profiles.append(await profiler.stop())
        for rec in records:
            rec.extra["round"] = float(round_no)
        phase.records.extend(records)

    def _sender(self, driver: Driver, label: str) -> Callable[[BenchRequest], Any]:
        self._phase_no += 1
        phase_no = self._phase_no

        async def send(req: BenchRequest) -> RequestRecord:
            request_id = f"bench-{self.run_id}-{driver.name}-{phase_no}-{req.index}"
            record = await driver.send(req, request_id, new_trace(self.cfg.sampled))
            self._progress(label, record)
            return record

        return send

    async def _breakdowns(
        self, phases: Sequence[Phase], drivers: Sequence[Driver]
    ) -> dict[str, Breakdown]:
        pipeline = {d.name for d in drivers if d.baseline is not None}
        jaeger = JaegerClient(self.cfg.jaeger_url)
        out: dict[str, Breakdown] = {}
        try:
            if not await jaeger.reachable():
                return out
            self._progress("fetching traces", None)
            wanted = {
                f"{p.target} {p.load.label}": [r for r in p.records if r.ok and r.trace_id][
                    : self.cfg.trace_sample
                ]
                for p in phases
                if p.target in pipeline
            }
            every = sorted({r.trace_id for rs in wanted.values() for r in rs if r.trace_id})
            fetched = await jaeger.fetch_many(every)
            for key, records in wanted.items():
                out[key] = breakdown(
                    [fetched.get(r.trace_id or "", []) for r in records],
                    len(records),
                    [_client_window(r) for r in records],
                )
        finally:
            await jaeger.close()
        return out

    def _report(
        self,
        phases: Sequence[Phase],
        drivers: Sequence[Driver],
        skipped: dict[str, str],
        breakdowns: dict[str, Breakdown],
        started: float,
        load_before: tuple[float, float, float],
    ) -> BenchReport:
        summaries = {(p.target, p.load): summarize(p.target, p.load, p.records) for p in phases}
        by_key = {(p.target, p.load): p for p in phases}
        overheads = []
        for d in drivers:
            if d.baseline is None:
                continue
            for load in self.cfg.loads():
                base = summaries.get((d.baseline, load))
                if base is None:
                    continue
                overheads.append(
                    compare(
                        summaries[(d.name, load)],
                        base,
                        by_key[(d.name, load)].records,
                        by_key[(d.baseline, load)].records,
                    )
                )
        environment = {
            "host": platform.node(),
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
            "event_loop": event_loops.describe(),
            "loadavg_before": load_before,
            "loadavg_after": os.getloadavg(),
            "reference_ms_before": self.reference_before,
            "reference_ms_after": reference_ms(),
            "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
            "duration_s": round(time.time() - started, 1),
        }
        resources = {f"{p.target} {p.load.label}": merge_usage(p) for p in phases}
        steal = {f"{p.target} {p.load.label}": phase_steal(p) for p in phases}
        model_thread = {f"{p.target} {p.load.label}": phase_model_thread(p) for p in phases}
        profiles = {}
        if self.cfg.profile_dir is not None:
            from genwire_bench.profile import summarise_run

            profiles = summarise_run(self.cfg.profile_dir, phases, resources, self.cfg.profile_rate)
        return BenchReport(
            run_id=self.run_id,
            config=config_dict(self.cfg),
            environment=environment,
            summaries=list(summaries.values()),
            overheads=overheads,
            breakdowns=breakdowns,
            resources=resources,
            skipped=skipped,
            records=[r for p in phases for r in p.records],
            profiles=profiles,
            steal=steal,
            model_thread=model_thread,
        )


def _client_window(record: RequestRecord) -> tuple[float, float] | None:
    """(send, answer) of a request in wall-clock ms, when the driver stamped its wall start."""
    start = record.extra.get("wall_start_ms")
    if start is None:
        return None
    return start, start + (record.end - record.start) * 1000.0


def _split(requests: Sequence[BenchRequest], rounds: int) -> list[list[BenchRequest]]:
    """``rounds`` consecutive, nearly equal slices (none empty)."""
    rounds = max(1, min(rounds, len(requests)))
    size, extra = divmod(len(requests), rounds)
    out, start = [], 0
    for i in range(rounds):
        end = start + size + (1 if i < extra else 0)
        out.append(list(requests[start:end]))
        start = end
    return out


def config_dict(cfg: BenchConfig) -> dict[str, Any]:
    """``cfg`` as JSON data, with its loads' labels."""
    from dataclasses import asdict

    data = asdict(cfg)
    data["loads"] = [load.label for load in cfg.loads()]
    return data


async def run_bench(
    cfg: BenchConfig,
    tokenize: Tokenize,
    progress: Callable[[str, RequestRecord | None], None] | None = None,
) -> BenchReport:
    """Run ``cfg`` and return its report."""
    return await Runner(cfg, tokenize, progress).run()
