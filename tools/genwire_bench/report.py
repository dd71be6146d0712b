"""The report: a table for people, JSON for machines, and a latency-against-throughput plot."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from genwire_bench.at_model import WIDE, AtModel, at_model
from genwire_bench.machine import ROUNDS
from genwire_bench.resources import JIT_MIN_CPU_S, JIT_WARNING_SHARE
from genwire_bench.runner import BenchReport
from genwire_bench.stats import Dist, Load


def _fmt(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def _pick(dist: Dist | None, attr: str) -> float | None:
    return None if dist is None else float(getattr(dist, attr))


def table(headers: Sequence[str], rows: Sequence[Sequence[str]], left: int = 1) -> str:
    """Columns padded to fit; the first ``left`` columns left-aligned, the rest right-aligned."""
    widths = [max(len(str(c)) for c in col) for col in zip(headers, *rows, strict=True)]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(
            str(c).ljust(w) if i < left else str(c).rjust(w)
            for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        ).rstrip()

    rule = "  ".join("-" * w for w in widths)
    return "\n".join([line(headers), rule, *(line(r) for r in rows)])


def render(report: BenchReport) -> str:
    """The whole report as text."""
    cfg, env = report.config, report.environment
    s = cfg["sampling"]
    out = [
        f"genwire bench — run {report.run_id}, model {cfg['model']}"
        + (f" version {cfg['model_version']}" if cfg.get("model_version") else "")
        + f", {cfg['requests']} requests "
        f"per target and load ({cfg['rounds']} round(s), {cfg['warmup']} warm-up), "
        f"max_tokens {s['max_tokens']}, temperature {s['temperature']:g}, seed {s['seed']}",
        f"{env['cpus']} CPUs, client on {env.get('event_loop', 'asyncio')}, "
        f"load average {env['loadavg_before'][0]:.2f} before, "
        f"{env['loadavg_after'][0]:.2f} after; started {env['started_at']}, "
        f"took {env['duration_s']} s",
        *_machine(env),
        "",
    ]
    if not cfg.get("sampled", True):
        out[2:2] = ["requests sent unsampled: the pipeline recorded no spans (tracing's cost off)"]
    for name, reason in report.skipped.items():
        out.append(f"skipped {name}: {reason}")
    if report.skipped:
        out.append("")
    rows = []
    for x in report.summaries:
        rows.append(
            [
                x.target,
                x.load.label,
                f"{x.requests - x.errors}/{x.errors}",
                _fmt(x.requests_per_s, 2),
                _fmt(x.output_tokens_per_s, 0),
                _fmt(_pick(x.e2e, "p50")),
                _fmt(_pick(x.e2e, "p95")),
                _fmt(_pick(x.e2e, "p99")),
                _fmt(_pick(x.ttft, "p50")),
                _fmt(_pick(x.ttft, "p99")),
                _fmt(_pick(x.tpot, "p50"), 2),
            ]
        )
    out.append("Latency in ms; TTFT and TPOT only where tokens stream")
    out.append(
        table(
            [
                "target",
                "load",
                "ok/err",
                "req/s",
                "tok/s",
                "e2e p50",
                "p95",
                "p99",
                "ttft p50",
                "p99",
                "tpot p50",
            ],
            rows,
            left=2,
        )
    )
    errors = [(x.target, x.load.label, x.error_kinds) for x in report.summaries if x.error_kinds]
    for target, label, kinds in errors:
        listed = ", ".join(f"{k} ×{n}" for k, n in kinds.items())
        out.append(f"  errors {target} {label}: {listed}")
    if report.overheads:
        out += ["", "Pipeline overhead over direct Triton (same requests, same load)"]
        out.append(
            table(
                [
                    "target",
                    "baseline",
                    "load",
                    "+p50 ms",
                    "+p95",
                    "+p99",
                    "×p50",
                    "paired +p50",
                    "+ttft p50",
                    "throughput",
                    "len≠",
                ],
                [
                    [
                        o.target,
                        o.baseline,
                        o.load.label,
                        _fmt(o.p50_ms),
                        _fmt(o.p95_ms),
                        _fmt(o.p99_ms),
                        _fmt(o.ratio_p50, 2),
                        _fmt(o.paired_p50_ms),
                        _fmt(o.ttft_p50_ms),
                        "-" if o.throughput_ratio is None else f"{o.throughput_ratio:.0%}",
                        str(o.token_mismatches),
                    ]
                    for o in report.overheads
                ],
                left=3,
            )
        )
    out += _at_model(report)
    out += _model_thread(report)
    for key, b in report.breakdowns.items():
        out += [
            "",
            f"Per hop: {key} ({b.traces_found}/{b.traces_wanted} traces; trace span p50 "
            f"{_fmt(_pick(b.trace_span, 'p50'))} ms, p95 {_fmt(_pick(b.trace_span, 'p95'))} ms)",
        ]
        if b.hops:
            out.append(
                table(
                    ["hop", "per trace", "at p50 ms", "p50 ms", "p95 ms", "max ms"],
                    [
                        [
                            h.hop,
                            _fmt(h.per_trace, 1),
                            _fmt(h.offset_p50_ms),
                            _fmt(h.ms.p50, 2),
                            _fmt(h.ms.p95, 2),
                            _fmt(h.ms.max, 2),
                        ]
                        for h in b.hops
                    ],
                )
            )
    out += _resources(report)
    out += jit_lines(report)
    out += burst_lines(report)
    out += fork_lines(report)
    out += _costs(report)
    out += _targets(report)
    return "\n".join(out)


def _machine(env: dict[str, Any]) -> list[str]:
    """The machine's speed line (``genwire_bench.machine``); none for a report made before
    the reference workload was read."""
    before, after = env.get("reference_ms_before"), env.get("reference_ms_after")
    if before is None or after is None:
        return []
    return [
        f"machine: reference workload {before:.1f} ms before, {after:.1f} after (best of "
        f"{ROUNDS}, one thread; runs whose reference differs ran on a faster or slower machine)"
    ]


def _at_model(report: BenchReport) -> list[str]:
    rows = at_model(report.summaries, {o.target: o.baseline for o in report.overheads})
    if not rows:
        return []

    def share(v: float | None) -> str:
        return "-" if v is None else f"{v:.0%}"

    def reading(r: AtModel) -> str:
        if r.direct_at_held is None:
            return "-"
        return ("~" if r.rough else "") + f"{r.direct_at_held.value:.1f}"

    out = [
        "",
        "At the model (closed loop; Little's law over the model's own time per request): the "
        "requests it held, and direct Triton's; direct Triton's req/s with as many held as the "
        "pipeline's; that against direct at the same c (at held/at c: lost to time away from "
        "the model) and the pipeline's req/s against it (rest: the model slower beside it)",
        table(
            [
                "target",
                "load",
                "req/s",
                "model ms",
                "held",
                "direct held",
                "direct at held",
                "at held/at c",
                "rest",
            ],
            [
                [
                    r.target,
                    r.load.label,
                    f"{r.requests_per_s:.1f}",
                    f"{r.model_ms_mean:.1f}",
                    f"{r.held:.2f}",
                    _fmt(r.direct_held, 2),
                    reading(r),
                    share(r.held_share),
                    share(r.rest_share),
                ]
                for r in rows
            ],
            left=2,
        ),
    ]
    if any(r.rough for r in rows):
        out.append(
            f"  ~: read between direct phases more than {WIDE:g} held apart, on a straight line "
            "under the bending curve (at held/at c reads low, rest high): sweep -c around it"
        )
    return out


def _model_thread(report: BenchReport) -> list[str]:
    """Per phase, the model's decode thread: its wall time on a CPU, waiting for one and
    asleep, its CPU per output token, and both against the baseline's phase at the same load
    (the thread makes every token, so with the same requests the pipeline's throughput against
    direct Triton is the first ratio over the second)."""
    threads = report.model_thread
    if not any(threads.values()):
        return []
    baselines = {o.target: o.baseline for o in report.overheads}
    rows = []
    for summary in report.summaries:
        key = f"{summary.target} {summary.load.label}"
        mine = threads.get(key)
        if mine is None:
            continue
        base = baselines.get(summary.target)
        theirs = threads.get(f"{base} {summary.load.label}") if base else None

        def ratio(name: str, mine: dict[str, float] = mine, theirs: Any = theirs) -> str:
            return "-" if not theirs or not theirs[name] else f"{mine[name] / theirs[name]:.2f}x"

        rows.append(
            [
                summary.target,
                summary.load.label,
                f"{mine['on_cpu_pct']:.0f}",
                f"{mine['waiting_pct']:.0f}",
                f"{mine['asleep_pct']:.0f}",
                f"{mine['core_ms_per_token']:.3f}",
                ratio("on_cpu_pct"),
                ratio("core_ms_per_token"),
            ]
        )
    return [
        "",
        "The model's decode thread (the served version's Triton stub, its busiest thread; the "
        "kernel's schedstat): % of the phase on a CPU, waiting for one, asleep; its core-ms per "
        "output token; both against the baseline at the same load",
        table(
            [
                "target",
                "load",
                "on CPU %",
                "waiting %",
                "asleep %",
                "core-ms/token",
                "on CPU vs base",
                "CPU/token vs base",
            ],
            rows,
            left=2,
        ),
    ]


PYTHON_SERVICES = ("gateway", "preprocess", "inference", "postprocess", "monitor")
"""The services the 150 MB RSS target is about (Kafka, Triton, Jaeger and Redis are not ours)."""

NOT_PIPELINE = ("bench", "triton")
"""Resource columns that are not the pipeline's cost: the load generator and the model server."""


@dataclasses.dataclass(frozen=True)
class Cost:
    """The pipeline's CPU per successful request of one target under one load."""

    target: str
    load: Load
    requests_per_s: float
    pipeline_core_ms: float
    """Every genwire service, Kafka, Jaeger (tracing) and Redis: Σ CPU % × 10 / req/s."""
    triton_core_ms: float | None


def pipeline_costs(report: BenchReport) -> list[Cost]:
    """Core-ms per request from the resources table, for each target phase that has one.

    A phase's mean CPU (100 % = one core) over its requests per second: idle work during the
    phase (heartbeats, fetch loops, span export) is counted in, as a request's share of it.
    """
    costs = []
    for s in report.summaries:
        usage = report.resources.get(f"{s.target} {s.load.label}")
        if not usage or s.requests_per_s <= 0 or s.target.startswith("triton"):
            continue
        per = {svc: u.cpu_percent * 10 / s.requests_per_s for svc, u in usage.items()}
        pipeline = sum(v for svc, v in per.items() if svc not in NOT_PIPELINE)
        costs.append(Cost(s.target, s.load, s.requests_per_s, pipeline, per.get("triton")))
    return costs


def _costs(report: BenchReport) -> list[str]:
    costs = pipeline_costs(report)
    if not costs:
        return []
    kafka = {c.load.label: c.pipeline_core_ms for c in costs if c.target == "kafka"}
    rows = []
    for c in costs:
        base = kafka.get(c.load.label)
        above = "-" if base is None or c.target == "kafka" else f"{c.pipeline_core_ms - base:+.2f}"
        rows.append(
            [
                c.target,
                c.load.label,
                f"{c.requests_per_s:.1f}",
                f"{c.pipeline_core_ms:.2f}",
                above,
                _fmt(c.triton_core_ms, 2),
            ]
        )
    return [
        "",
        "Pipeline CPU per request (core-ms: every genwire service, Kafka, Jaeger and Redis, from "
        "the resources table; not Triton or the bench)",
        table(["target", "load", "req/s", "pipeline", "vs kafka", "triton"], rows),
    ]


def target_checks(report: BenchReport) -> list[tuple[str, str, bool]]:
    """(goal, measured, met) for each of the project's performance targets that this run measured.

    Targets (docs/benchmarks.md): overhead at concurrency 1 p50 ≤ 5 ms and p99 ≤ 15 ms; at the
    highest load, throughput ≥ 90 % of direct Triton's, the pipeline's CPU ≤ 3 core-ms per
    request and the gRPC/HTTP paths ≤ the Kafka path's + 1; streaming TTFT p50 ≤ direct + 5 ms;
    each Python service ≤ 150 MB RSS.
    """
    checks: list[tuple[str, str, bool]] = []
    # Saturation only means something in a closed loop (an open loop's throughput is its rate).
    top = max((o.load.value for o in report.overheads if o.load.mode == "closed"), default=None)
    for o in report.overheads:
        if o.load.mode == "closed" and o.load.value == 1:
            if o.p50_ms is not None:
                checks.append((f"{o.target} c=1 +p50 ≤ 5 ms", f"{o.p50_ms:+.1f} ms", o.p50_ms <= 5))
            if o.p99_ms is not None:
                checks.append(
                    (f"{o.target} c=1 +p99 ≤ 15 ms", f"{o.p99_ms:+.1f} ms", o.p99_ms <= 15)
                )
            if o.ttft_p50_ms is not None:
                checks.append(
                    (
                        f"{o.target} c=1 +ttft p50 ≤ 5 ms",
                        f"{o.ttft_p50_ms:+.1f} ms",
                        o.ttft_p50_ms <= 5,
                    )
                )
        closed_top = o.load.mode == "closed" and o.load.value == top and top != 1
        if closed_top and o.throughput_ratio is not None:
            checks.append(
                (
                    f"{o.target} {o.load.label} throughput ≥ 90 %",
                    f"{o.throughput_ratio:.0%}",
                    o.throughput_ratio >= 0.9,
                )
            )
    costs = pipeline_costs(report)
    kafka = {c.load.label: c.pipeline_core_ms for c in costs if c.target == "kafka"}
    top_cost = max((c.load.value for c in costs if c.load.mode == "closed"), default=None)
    for c in costs:
        if c.load.mode != "closed" or c.load.value != top_cost or top_cost == 1:
            continue
        checks.append(
            (
                f"{c.target} {c.load.label} pipeline CPU ≤ 3 core-ms/request",
                f"{c.pipeline_core_ms:.2f}",
                c.pipeline_core_ms <= 3,
            )
        )
        base = kafka.get(c.load.label)
        if base is not None and c.target != "kafka":
            extra = c.pipeline_core_ms - base
            checks.append(
                (
                    f"{c.target} {c.load.label} ≤ kafka + 1 core-ms/request",
                    f"{extra:+.2f}",
                    extra <= 1,
                )
            )
    for svc in PYTHON_SERVICES:
        peaks = [u[svc].rss_peak_mb for u in report.resources.values() if svc in u]
        if peaks:
            checks.append((f"{svc} RSS ≤ 150 MB", f"{max(peaks):.0f} MB", max(peaks) <= 150))
    return checks


def _targets(report: BenchReport) -> list[str]:
    checks = target_checks(report)
    if not checks:
        return []
    rows = [[goal, got, "met" if ok else "MISSED"] for goal, got, ok in checks]
    return ["", "Against the project's targets", table(["target", "measured", ""], rows)]


def _resources(report: BenchReport) -> list[str]:
    """One row per phase (mean CPU % per service), then the peak RSS of each service."""
    services = sorted({s for usage in report.resources.values() for s in usage})
    if not services:
        return []
    rows = []
    for phase, usage in report.resources.items():
        steal = report.steal.get(phase)
        rows.append(
            [
                phase,
                "-" if steal is None else f"{steal:.1f}",
                *("-" if svc not in usage else f"{usage[svc].cpu_percent:.0f}" for svc in services),
            ]
        )
    peaks = [
        max((u[svc].rss_peak_mb for u in report.resources.values() if svc in u), default=0.0)
        for svc in services
    ]
    rows.append(["RSS peak (MB)", "", *(f"{p:.0f}" for p in peaks)])
    return [
        "",
        "Resources: mean CPU % of one core per service (process tree) during each phase; "
        "steal: % of the machine's CPU time the hypervisor took during the phase (a phase that "
        "lost more ran slower, whatever the code); last row: peak RSS over the run",
        table(["phase", "steal %", *services], rows),
    ]


def jit_shares(report: BenchReport, service: str = "kafka") -> dict[str, float]:
    """Per phase, the share of ``service``'s CPU its JVM's JIT compiler threads took.

    Phases where the service used under ``JIT_MIN_CPU_S`` or no JVM was read are left out.
    """
    shares = {}
    for phase, usage in report.resources.items():
        one = usage.get(service)
        if one is not None and one.jit_cpu_s is not None and one.cpu_s >= JIT_MIN_CPU_S:
            shares[phase] = one.jit_cpu_s / one.cpu_s
    return shares


def jit_warnings(report: BenchReport, service: str = "kafka") -> list[str]:
    """The phases of a target through Kafka whose broker (or one broker of a cluster) was
    still compiling: over ``JIT_WARNING_SHARE`` of its CPU. Direct Triton's phases use no
    broker; one compiling then only takes CPU the baseline could have had."""
    shares = jit_shares(report, service)
    warm = []
    for phase, usage in report.resources.items():
        one = usage.get(service)
        if one is None or phase.split(" ", 1)[0].startswith("triton"):
            continue
        worst = max(shares.get(phase, 0.0), one.jit_peak_share or 0.0)
        if worst > JIT_WARNING_SHARE:
            warm.append(phase)
    return warm


def jit_lines(report: BenchReport, where: str = "") -> list[str]:
    """The broker's JIT share per phase and, if it was still warming up, a warning; ``where``
    (e.g. ``"with 2 instance(s), "``) goes before the phases named."""
    shares = jit_shares(report)
    if not shares:
        return []
    listed = ", ".join(f"{phase} {share:.0%}" for phase, share in shares.items())
    out = [f"Kafka broker's JIT compiler, share of the broker's CPU: {where}{listed}"]
    warm = jit_warnings(report)
    if warm:
        out.append(
            f"warning: a Kafka broker was still compiling its hot code {where}in "
            f"{', '.join(warm)} (over {JIT_WARNING_SHARE:.0%} of its CPU): its CPU per request "
            "and the pipeline's latency read high there; warm it with a few thousand requests "
            "and measure again"
        )
    return out


BURST_MIN_PERCENT = 25.0
BURST_CORE_MS = 4.0
"""Jaeger bursts in a phase when it takes over ``BURST_MIN_PERCENT`` of a core and, in a
pipeline target's phase, over ``BURST_CORE_MS`` per request. In direct Triton's phases, in an
``--unsampled`` run and in a phase with no successful request it gets no new spans (only what
earlier phases left on ``otlp_spans``): the floor alone decides. Calm, it took 1–16 % of a
core here, 0.6–1.6 core-ms per request (up to 3.3 at c=1); while Badger compacted, 30–114 % of
a core and 4–28 core-ms per request (docs/benchmarks.md, *Jaeger's compactions and its CPU
priority*)."""


def bursts(report: BenchReport, service: str = "jaeger") -> dict[str, float]:
    """Phases where ``service`` (Jaeger) burst: phase → its CPU % of a core."""
    rates = {f"{x.target} {x.load.label}": x.requests_per_s for x in report.summaries}
    traced = report.config.get("sampled", True)
    found = {}
    for phase, usage in report.resources.items():
        one = usage.get(service)
        if one is None or one.cpu_percent <= BURST_MIN_PERCENT:
            continue
        rate = rates.get(phase) or 0.0
        spans = traced and rate > 0 and not phase.split(" ", 1)[0].startswith("triton")
        if not spans or one.cpu_percent * 10 / rate > BURST_CORE_MS:
            found[phase] = one.cpu_percent
    return found


def burst_lines(report: BenchReport, where: str = "") -> list[str]:
    """A warning for each phase where Jaeger burst; ``where`` as in :func:`jit_lines`."""
    return [
        f"warning: Jaeger took {cpu:.0f} % of a core {where}in {phase}, more than its spans "
        "explain: most likely one of Badger's compactions, which takes CPU from the model and "
        "the stages; that phase's figures are disturbed, measure it again"
        for phase, cpu in bursts(report).items()
    ]


def forks(report: BenchReport) -> dict[str, float]:
    """Phases where Redis forked a child to write its whole data set: phase → its CPU seconds."""
    found = {}
    for phase, usage in report.resources.items():
        redis = usage.get("redis")
        if redis is not None and redis.fork_cpu_s is not None:
            found[phase] = redis.fork_cpu_s
    return found


def fork_lines(report: BenchReport, where: str = "") -> list[str]:
    """A warning for each phase where Redis wrote its whole data set; ``where`` as in
    :func:`jit_lines`."""
    return [
        f"warning: Redis wrote its whole data set {where}in {phase} (a snapshot or an "
        f"append-only file rewrite, {seconds:.1f} CPU-seconds in its forked child, counted in "
        "Redis's column): that phase's figures are disturbed, measure it again"
        for phase, seconds in forks(report).items()
    ]


def jsonable(value: Any) -> Any:
    """Dataclasses, loads, paths and containers as plain JSON data."""
    if isinstance(value, Load):
        return {"mode": value.mode, "value": value.value, "label": value.label}
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value


def to_json(report: BenchReport) -> dict[str, Any]:
    """The report as plain JSON data (every record included, times in perf_counter seconds)."""
    data: dict[str, Any] = jsonable(report)
    return data


def write_json(report: BenchReport, path: Path) -> None:
    """Write ``to_json(report)`` to ``path``."""
    path.write_text(json.dumps(to_json(report), indent=2) + "\n", encoding="utf-8")


def write_plot(report: BenchReport, path: Path) -> None:
    """End-to-end latency p50 and p99 against output tokens/s, one line per target."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5), sharex=True)
    targets = sorted({x.target for x in report.summaries})
    for target in targets:
        points = sorted(
            (x for x in report.summaries if x.target == target and x.e2e is not None),
            key=lambda x: x.load.value,
        )
        if not points:
            continue
        xs = [p.output_tokens_per_s for p in points]
        style = "--" if target.startswith("triton") else "-"
        for ax, attr in zip(axes, ("p50", "p99"), strict=True):
            ys = [getattr(p.e2e, attr) for p in points]
            ax.plot(xs, ys, style, marker="o", label=target)
            for p, x, y in zip(points, xs, ys, strict=True):
                ax.annotate(
                    p.load.label, (x, y), fontsize=7, xytext=(3, 3), textcoords="offset points"
                )
    for ax, attr in zip(axes, ("p50", "p99"), strict=True):
        ax.set_xlabel("output tokens/s")
        ax.set_ylabel(f"end-to-end latency {attr} (ms)")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle(
        f"genwire bench {report.run_id}: latency against throughput "
        f"({report.environment['cpus']} CPUs)"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
