"""The run orchestration and the report, with fake drivers (pure logic, no stack)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import pytest
from genwire_bench.cli import register
from genwire_bench.drivers.base import Driver, TraceContext
from genwire_bench.load import poisson_arrivals
from genwire_bench.records import BenchRequest, RequestRecord, SamplingSpec
from genwire_bench.report import render, table, to_json, write_json, write_plot
from genwire_bench.runner import BenchConfig, BenchReport, Runner
from genwire_bench.stats import Load

from genwire.service import loop as event_loops


class FakeDriver(Driver):
    """Answers instantly with a fixed, made-up latency (stamped, not slept)."""

    def __init__(self, name: str, latency_ms: float, baseline: str | None, fail_every: int = 0):
        super().__init__(timeout_s=5)
        self.name = name
        self.baseline = baseline
        self.streaming = name.endswith("stream")
        self.latency_ms = latency_ms
        self.fail_every = fail_every
        self.sent: list[tuple[int, str, str]] = []

    async def _send(self, req: BenchRequest, record: RequestRecord, trace: TraceContext) -> None:
        self.sent.append((req.index, record.request_id, trace.traceparent))
        if self.fail_every and req.index % self.fail_every == 0:
            raise RuntimeError("unavailable: fake")
        record.end = record.start + self.latency_ms / 1000
        record.output_tokens = req.sampling.max_tokens
        if self.streaming:
            record.first_token = record.start + self.latency_ms / 4000


class Broken(Driver):
    name = "kafka"

    async def start(self) -> None:
        raise RuntimeError("no broker")

    async def _send(self, req: BenchRequest, record: RequestRecord, trace: TraceContext) -> None:
        raise AssertionError("never sent")


def _report(**fields: Any) -> BenchReport:
    """A report with nothing in it but ``fields``."""
    empty: dict[str, Any] = {
        "run_id": "x",
        "config": {},
        "environment": {},
        "summaries": [],
        "overheads": [],
        "breakdowns": {},
        "resources": {},
        "skipped": {},
        "records": [],
    }
    return BenchReport(**(empty | fields))


def factory(drivers: dict[str, Driver]) -> Any:
    return lambda name, cfg, shared: drivers[name]


async def run(targets: dict[str, Driver], **kw: Any) -> tuple[BenchReport, list[str]]:
    cfg = BenchConfig(
        targets=list(targets),
        requests=12,
        warmup=2,
        rounds=3,
        sampling=SamplingSpec(max_tokens=5, seed=10),
        traces=False,
        resources=False,
        **kw,
    )
    labels: list[str] = []
    runner = Runner(
        cfg, lambda text: [1, 2, 3], lambda label, r: labels.append(label), factory(targets)
    )
    return await runner.run(), labels


async def test_run_sends_the_same_requests_to_every_target_and_compares() -> None:
    base = FakeDriver("triton", 10.0, None)
    pipe = FakeDriver("grpc", 14.0, "triton", fail_every=5)
    report, labels = await run(
        {"triton": base, "grpc": pipe, "kafka": Broken()}, concurrency=[1, 2]
    )
    assert report.skipped == {"kafka": "RuntimeError: no broker"}
    # warm-up (2) plus 12 per load, for each load; the same indices and seeds for both targets
    assert len(base.sent) == len(pipe.sent) == 2 + 12 * 2
    assert sorted(i for i, _, _ in base.sent) == sorted(i for i, _, _ in pipe.sent)
    ids = [rid for _, rid, _ in pipe.sent]
    assert len(set(ids)) == len(ids)  # request ids never repeat (stages dedupe by id)
    assert all(tp.startswith("00-") and tp.endswith("-01") for _, _, tp in pipe.sent)
    assert {x.load.label for x in report.summaries} == {"c=1", "c=2"}
    grpc = next(x for x in report.summaries if x.target == "grpc" and x.load.label == "c=1")
    assert grpc.requests == 12 and grpc.errors == 3  # indices 0, 5, 10
    assert grpc.error_kinds == {"RuntimeError": 3}
    (o1, _o2) = report.overheads
    assert o1.baseline == "triton" and o1.p50_ms == pytest.approx(4.0, abs=1e-6)
    assert o1.paired_p50_ms == pytest.approx(4.0, abs=1e-6)
    assert o1.token_mismatches == 0
    assert "grpc c=2" in labels and "warmup" in labels


async def test_open_loop_phase_and_the_rendered_report(tmp_path: Path) -> None:
    base = FakeDriver("triton-stream", 20.0, None)
    pipe = FakeDriver("kafka-stream", 26.0, "triton-stream")
    report, _ = await run({"triton-stream": base, "kafka-stream": pipe}, rates=[200.0])
    assert [x.load.label for x in report.summaries] == ["r=200/s", "r=200/s"]
    # An open loop: each round's requests are due at the seeded Poisson arrival times (the same
    # for both targets), none is sent before it is due, and latency counts from the due time:
    # the fake's stamped TTFT (latency / 4) plus however late the request went out.
    for driver in (base, pipe):
        records = [r for r in report.records if r.target == driver.name]
        assert len(records) == 12
        for round_no in range(3):
            due = sorted(r.scheduled or 0.0 for r in records if r.extra["round"] == round_no)
            offsets = poisson_arrivals(len(due), 200.0, seed=10 + round_no)
            assert [d - due[0] for d in due] == pytest.approx(offsets, abs=1e-9)
        for r in records:
            assert r.scheduled is not None and r.origin == r.scheduled
            assert r.first_token is not None and r.start >= r.scheduled - 1e-6
            late_ms = (r.start - r.scheduled) * 1000
            assert r.ttft_ms == pytest.approx(driver.latency_ms / 4 + late_ms)
    # The TTFT overhead is the difference of the two targets' medians.
    triton, kafka = (
        next(x for x in report.summaries if x.target == t) for t in (base.name, pipe.name)
    )
    assert triton.ttft is not None and kafka.ttft is not None
    (o,) = report.overheads
    assert (o.target, o.baseline) == ("kafka-stream", "triton-stream")
    assert o.ttft_p50_ms == pytest.approx(kafka.ttft.p50 - triton.ttft.p50)
    text = render(report)
    assert "kafka-stream" in text and "Pipeline overhead" in text and "r=200/s" in text
    data = to_json(report)
    assert data["summaries"][0]["load"] == {"mode": "open", "value": 200.0, "label": "r=200/s"}
    path = tmp_path / "r.json"
    write_json(report, path)
    loaded = json.loads(path.read_text())
    assert len(loaded["records"]) == 24 and loaded["config"]["loads"] == ["r=200/s"]
    png = tmp_path / "p.png"
    write_plot(report, png)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_table_aligns_columns() -> None:
    text = table(["name", "n"], [["a", "1"], ["long", "100"]])
    lines = text.splitlines()
    assert lines[0] == "name    n"
    assert lines[2] == "a       1"
    assert lines[3] == "long  100"


def test_target_checks_judge_the_measured_figures() -> None:
    from genwire_bench.report import _targets, target_checks
    from genwire_bench.resources import Usage
    from genwire_bench.stats import Load, Overhead

    def overhead(load: Load, p50: float, p99: float, tput: float) -> Overhead:
        return Overhead("kafka", "triton", load, p50, p99, p99, 1.2, p50, None, tput, 0)

    report = _report(
        overheads=[
            overhead(Load("closed", 1), 4.0, 16.0, 0.99),
            overhead(Load("closed", 8), 30.0, 60.0, 0.85),
        ],
        resources={
            "kafka c=1": {
                "gateway": Usage((1,), 5, 9, 120.0, 110.0),
                "kafka": Usage((2,), 5, 9, 900.0, 800.0),
            }
        },
    )
    checks = {goal: (got, ok) for goal, got, ok in target_checks(report)}
    assert checks["kafka c=1 +p50 ≤ 5 ms"] == ("+4.0 ms", True)
    assert checks["kafka c=1 +p99 ≤ 15 ms"] == ("+16.0 ms", False)
    assert checks["kafka c=8 throughput ≥ 90 %"] == ("85%", False)
    assert checks["gateway RSS ≤ 150 MB"] == ("120 MB", True)
    assert not any(goal.startswith("kafka RSS") for goal in checks)  # not a Python service
    assert "MISSED" in "\n".join(_targets(report))


def test_an_open_loop_is_not_judged_on_throughput() -> None:
    from genwire_bench.report import target_checks
    from genwire_bench.stats import Load, Overhead

    report = _report(
        overheads=[Overhead("kafka", "triton", Load("open", 5), 50, 60, 70, 2, 50, None, 0.5, 0)],
    )
    assert not any("throughput" in goal for goal, _, _ in target_checks(report))


def test_pipeline_cost_per_request_comes_from_the_resources_table() -> None:
    from genwire_bench.report import _costs, pipeline_costs, target_checks
    from genwire_bench.resources import Usage
    from genwire_bench.stats import Summary

    def summary(target: str, rps: float) -> Summary:
        return Summary(target, Load("closed", 8), 96, 0, 1.0, rps, rps * 32, None, None, None)

    def usage(cpu: float) -> Usage:
        return Usage((1,), cpu, cpu, 100.0, 90.0)

    report = _report(
        summaries=[summary("triton", 50.0), summary("kafka", 20.0), summary("grpc", 20.0)],
        resources={
            "triton c=8": {"kafka": usage(10.0), "triton": usage(100.0)},
            # 20 req/s: 1 % of a core is 0.5 core-ms per request
            "kafka c=8": {
                "gateway": usage(1.0),
                "kafka": usage(4.0),
                "bench": usage(50.0),
                "triton": usage(80.0),
            },
            "grpc c=8": {
                "gateway": usage(5.0),
                "kafka": usage(4.0),
                "jaeger": usage(2.0),
                "triton": usage(80.0),
            },
        },
    )
    costs = {c.target: c for c in pipeline_costs(report)}
    assert set(costs) == {"kafka", "grpc"}  # direct Triton has no pipeline
    assert costs["kafka"].pipeline_core_ms == pytest.approx(2.5)  # not the bench, not Triton
    assert costs["kafka"].triton_core_ms == pytest.approx(40.0)
    assert costs["grpc"].pipeline_core_ms == pytest.approx(5.5)
    checks = {goal: (got, ok) for goal, got, ok in target_checks(report)}
    assert checks["kafka c=8 pipeline CPU ≤ 3 core-ms/request"] == ("2.50", True)
    assert checks["grpc c=8 pipeline CPU ≤ 3 core-ms/request"] == ("5.50", False)
    assert checks["grpc c=8 ≤ kafka + 1 core-ms/request"] == ("+3.00", False)
    assert "+3.00" in "\n".join(_costs(report))


async def test_unsampled_runs_send_unsampled_trace_contexts_and_say_so() -> None:
    pipe = FakeDriver("kafka", 14.0, None)
    report, _ = await run({"kafka": pipe}, sampled=False)
    assert pipe.sent and all(tp.endswith("-00") for _, _, tp in pipe.sent)
    assert "requests sent unsampled" in render(report)
    sampled, _ = await run({"kafka": FakeDriver("kafka", 14.0, None)})
    assert "requests sent unsampled" not in render(sampled)


def test_the_report_names_the_loop_the_client_ran_on() -> None:
    for name in ("asyncio", "uvloop"):
        pipe = FakeDriver("kafka", 14.0, None)
        report, _ = event_loops.run(run({"kafka": pipe}), name)
        assert report.environment["event_loop"] == name
        assert f" CPUs, client on {name}, load average" in render(report)


def test_the_cli_offers_the_services_event_loops(capsys: pytest.CaptureFixture[str]) -> None:
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers())
    args = parser.parse_args(["bench"])
    assert args.event_loop == "auto"
    with pytest.raises(SystemExit):
        parser.parse_args(["bench", "--event-loop", "libuv"])
    assert "invalid choice: 'libuv'" in capsys.readouterr().err


def test_a_phases_steal_is_the_hypervisors_share_over_its_rounds() -> None:
    from genwire_bench.runner import Phase, phase_steal

    phase = Phase("kafka", Load("closed", 8))
    assert phase_steal(phase) is None  # nothing read
    phase.cpu_ticks = [(10, 100), None, (30, 300)]  # one round unreadable: left out
    assert phase_steal(phase) == 10.0


def test_the_resources_table_shows_each_phases_steal() -> None:
    from genwire_bench.report import _resources
    from genwire_bench.resources import Usage

    report = _report(
        resources={
            "kafka c=8": {"kafka": Usage((1,), 40.0, 60.0, 900.0, 800.0)},
            "grpc c=8": {"kafka": Usage((1,), 50.0, 70.0, 900.0, 800.0)},
        },
        steal={"kafka c=8": 12.5, "grpc c=8": None},
    )
    lines = "\n".join(_resources(report)).splitlines()
    header = next(line for line in lines if line.startswith("phase"))
    assert header.split()[:3] == ["phase", "steal", "%"]
    assert next(line for line in lines if line.startswith("kafka c=8")).split()[2:4] == [
        "12.5",
        "40",
    ]
    assert next(line for line in lines if line.startswith("grpc c=8")).split()[2:4] == ["-", "50"]


async def test_a_run_reads_the_steal_of_every_phase(monkeypatch: pytest.MonkeyPatch) -> None:
    import itertools

    from genwire_bench import runner

    ticks = itertools.count()  # every reading 1 tick of steal and 10 in all after the last

    def reading() -> tuple[int, int]:
        n = next(ticks)
        return n, 10 * n

    monkeypatch.setattr(runner, "cpu_times", reading)
    report, _ = await run({"kafka": FakeDriver("kafka", 14.0, None)}, concurrency=[1, 2])
    assert report.steal == {"kafka c=1": 10.0, "kafka c=2": 10.0}
    monkeypatch.setattr(runner, "cpu_times", lambda: None)  # /proc/stat unreadable
    report, _ = await run({"kafka": FakeDriver("kafka", 14.0, None)})
    assert report.steal == {"kafka c=1": None}


async def test_the_report_shows_the_brokers_jit_share_and_warns_while_it_warms_up() -> None:
    from genwire_bench.report import JIT_WARNING_SHARE, jit_lines, jit_shares
    from genwire_bench.resources import JIT_MIN_CPU_S, Usage

    def broker(cpu_s: float, jit_s: float | None, peak: float | None = None) -> Usage:
        return Usage((1,), 40.0, 60.0, 900.0, 800.0, cpu_s, 1, 5.0, jit_s, peak)

    warm = _report(
        resources={
            "kafka c=8": {"kafka": broker(10.0, 1.2)},
            "grpc c=8": {"kafka": broker(JIT_MIN_CPU_S / 2, JIT_MIN_CPU_S / 2)},  # too little
            "grpc c=1": {"kafka": broker(10.0, None)},  # not read
            "triton c=8": {},
        }
    )
    assert jit_shares(warm) == {"kafka c=8": pytest.approx(0.12)}
    shares_line = "Kafka broker's JIT compiler, share of the broker's CPU: kafka c=8 12%"
    assert jit_lines(warm) == [shares_line]
    over = 4.0 * (JIT_WARNING_SHARE + 0.01)
    fresh = _report(
        resources={
            "triton c=8": {"kafka": broker(4.0, over)},  # direct Triton: no broker in its path
            "kafka c=1": {"kafka": broker(4.0, over)},
            "kafka c=8": {"kafka": broker(4.0, 4.0 * JIT_WARNING_SHARE)},
            "grpc c=8": {"kafka": broker(4.0, 0.4, peak=JIT_WARNING_SHARE + 0.01)},  # one broker
        }
    )
    lines = jit_lines(fresh)
    assert len(lines) == 2
    assert lines[0].endswith("triton c=8 31%, kafka c=1 31%, kafka c=8 30%, grpc c=8 10%")
    assert lines[1].startswith(
        "warning: a Kafka broker was still compiling its hot code in kafka c=1, grpc c=8 "
    )
    whole, _ = await run({"kafka": FakeDriver("kafka", 14.0, None)})
    whole.resources = fresh.resources
    assert lines[1] in render(whole).splitlines()


async def test_the_report_warns_of_a_phase_where_jaeger_burst() -> None:
    from genwire_bench.report import BURST_CORE_MS, BURST_MIN_PERCENT, burst_lines, bursts
    from genwire_bench.resources import Usage
    from genwire_bench.stats import Summary

    def jaeger(cpu: float) -> dict[str, Usage]:
        return {"jaeger": Usage((1,), cpu, cpu, 700.0, 600.0)}

    def rate(target: str, label: str, rps: float) -> Summary:
        load = Load("closed", int(label[2:]))
        return Summary(target, load, 100, 0, 1.0, rps, rps * 32, None, None, None)

    over = BURST_MIN_PERCENT + 5  # % of a core
    report = _report(
        summaries=[
            rate("kafka", "c=8", 90.0),
            rate("grpc", "c=8", 60.0),
            rate("kafka", "c=1", 25.0),
        ],
        resources={
            "triton c=8": jaeger(over),  # direct Triton sends Jaeger nothing: a burst
            "triton c=1": jaeger(BURST_MIN_PERCENT),  # not over the floor
            "kafka c=8": jaeger(over),  # 3.3 core-ms per request at 90 req/s: its spans
            "grpc c=8": jaeger(114.0),  # 19 core-ms per request: a compaction
            "kafka c=1": jaeger(over),  # 12 core-ms per request at 25 req/s: a compaction
            "grpc c=1": jaeger(over),  # no successful request: no spans of its own
        },
    )
    assert over * 10 / 90.0 < BURST_CORE_MS  # kafka c=8's spans explain its CPU
    assert bursts(report) == {
        "triton c=8": over,
        "grpc c=8": 114.0,
        "kafka c=1": over,
        "grpc c=1": over,
    }
    report.config["sampled"] = False  # --unsampled: no phase sends spans
    assert set(bursts(report)) == set(report.resources) - {"triton c=1"}
    report.config["sampled"] = True
    lines = burst_lines(report)
    assert lines[1].startswith("warning: Jaeger took 114 % of a core in grpc c=8, more than")
    whole, _ = await run({"kafka": FakeDriver("kafka", 14.0, None)})
    whole.resources = report.resources
    whole.summaries = report.summaries
    assert lines[1] in render(whole).splitlines()


async def test_the_report_warns_of_a_phase_where_redis_wrote_its_data_set() -> None:
    from genwire_bench.report import fork_lines, forks
    from genwire_bench.resources import Usage

    def redis(fork_s: float | None) -> dict[str, Usage]:
        return {"redis": Usage((1,), 20.0, 100.0, 500.0, 480.0, cpu_s=3.4, fork_cpu_s=fork_s)}

    report = _report(resources={"kafka c=8": redis(3.1), "grpc c=8": redis(None)})
    assert forks(report) == {"kafka c=8": 3.1}
    lines = fork_lines(report)
    assert lines == [
        "warning: Redis wrote its whole data set in kafka c=8 (a snapshot or an append-only "
        "file rewrite, 3.1 CPU-seconds in its forked child, counted in Redis's column): that "
        "phase's figures are disturbed, measure it again"
    ]
    whole, _ = await run({"kafka": FakeDriver("kafka", 14.0, None)})
    whole.resources = report.resources
    assert lines[0] in render(whole).splitlines()


def test_the_report_reads_the_machines_speed_before_and_after_the_run(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from genwire_bench import runner as runner_module

    readings = iter([12.5, 14.25])
    monkeypatch.setattr(runner_module, "reference_ms", lambda: next(readings))
    report, _ = event_loops.run(run({"kafka": FakeDriver("kafka", 14.0, None)}), "asyncio")
    env = report.environment
    assert (env["reference_ms_before"], env["reference_ms_after"]) == (12.5, 14.25)
    assert "machine: reference workload 12.5 ms before, 14.2 after (best of 5" in render(report)
    # A report saved before the reading existed renders without the line.
    env.pop("reference_ms_before")
    assert "machine: reference workload" not in render(report)


def test_the_reference_workload_is_fixed_work_timed_at_its_best() -> None:
    from genwire_bench import machine

    assert machine.workload() == machine.workload() > 0  # the same work every time
    assert 0 < machine.reference_ms(rounds=2) < 5_000


def test_a_phases_model_thread_is_weighted_by_its_rounds() -> None:
    from genwire_bench.runner import Phase, phase_model_thread

    phase = Phase("kafka", Load("closed", 8))
    assert phase_model_thread(phase) is None  # nothing read
    split = {"on_cpu_pct": 80.0, "waiting_pct": 10.0, "asleep_pct": 10.0}
    phase.model_thread = [
        {**split, "cpu_ms": 800.0, "tokens": 1600, "core_ms_per_token": 0.5},
        None,  # not read: left out
        {
            "on_cpu_pct": 100.0,
            "waiting_pct": 0.0,
            "asleep_pct": 0.0,
            "cpu_ms": 3000.0,
            "tokens": 3000,
            "core_ms_per_token": 1.0,
        },
    ]
    phase.walls = [1.0, 5.0, 3.0]
    assert phase_model_thread(phase) == {
        "on_cpu_pct": 95.0,
        "waiting_pct": 2.5,
        "asleep_pct": 2.5,
        "core_ms_per_token": round(3800 / 4600, 4),  # 3,800 ms for 4,600 tokens
    }


async def test_a_run_reads_the_models_decode_thread_in_every_phase(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import itertools

    from genwire_bench import loop_thread, runner

    readings = itertools.count()

    def read(pids: list[int]) -> loop_thread.ThreadTimes:
        # Between two readings: 1 s of wall time, 0.9 s on a CPU, 0.05 s waiting for one.
        n = next(readings)
        threads = {(pid, 7): (n * 900_000_000, n * 50_000_000, n) for pid in pids}
        return loop_thread.ThreadTimes(n * 1_000_000_000, threads)

    monkeypatch.setattr(runner.loop_thread, "read", read)
    monkeypatch.setattr(runner.Runner, "_model_stub", lambda self: 4242)
    targets = {
        "triton": FakeDriver("triton", 10.0, None),
        "kafka": FakeDriver("kafka", 14.0, "triton"),
    }
    report, _ = await run(targets, concurrency=[1, 2])
    # 12 requests a load over 3 rounds of 4, 5 tokens each: 900 ms for 20 tokens a round.
    expected = {
        "on_cpu_pct": 90.0,
        "waiting_pct": 5.0,
        "asleep_pct": 5.0,
        "core_ms_per_token": 45.0,
    }
    assert report.model_thread == {
        key: expected for key in ("triton c=1", "triton c=2", "kafka c=1", "kafka c=2")
    }
    lines = render(report).splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("The model's decode thread"))
    rows = {tuple(line.split()[:2]): line.split()[2:] for line in lines[start + 3 : start + 7]}
    assert rows[("kafka", "c=2")] == ["90", "5", "5", "45.000", "1.00x", "1.00x"]
    assert rows[("triton", "c=1")] == ["90", "5", "5", "45.000", "-", "-"]  # the baseline
    # Where the stub is not on this machine, nothing is read and the table is left out.
    monkeypatch.setattr(runner.Runner, "_model_stub", lambda self: None)
    report, _ = await run(targets)
    assert report.model_thread == {"triton c=1": None, "kafka c=1": None}
    assert "The model's decode thread" not in render(report)
