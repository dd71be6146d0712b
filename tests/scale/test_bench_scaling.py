"""``genwire bench --scaling``: the steps, the spread over gateways, the CPU sums and the
gateway's line, with fake drivers and a fake scaler (pure logic, no stack)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pytest
from genwire_bench.drivers.base import Driver, TraceContext
from genwire_bench.records import BenchRequest, RequestRecord, SamplingSpec
from genwire_bench.resources import Usage, by_service, service_of
from genwire_bench.runner import BenchConfig, BenchReport
from genwire_bench.scaling import (
    STAGE_GROUPS,
    ScalingReport,
    ScalingStep,
    checked,
    flatness,
    gateway_addresses,
    gateway_costs,
    render_scaling,
    run_scaling,
    scaling_json,
    settled,
)
from genwire_bench.stats import Load, Summary


class Instance(Driver):
    """A gateway instance's client: answers at once and remembers what it was sent."""

    def __init__(self, name: str, address: str) -> None:
        super().__init__(timeout_s=5)
        self.name = name
        self.address = address
        self.sent: list[str] = []

    async def _send(self, req: BenchRequest, record: RequestRecord, trace: TraceContext) -> None:
        self.sent.append(record.request_id)
        record.end = record.start + 0.01
        record.output_tokens = req.sampling.max_tokens


def _cfg(**kw: Any) -> BenchConfig:
    return BenchConfig(
        targets=["grpc"],
        requests=12,
        warmup=0,
        rounds=2,
        sampling=SamplingSpec(max_tokens=4),
        traces=False,
        resources=False,
        gateway_address="127.0.0.1:50051",
        **kw,
    )


def test_each_step_scales_first_spreads_over_every_gateway_and_the_layout_is_restored() -> None:
    events: list[Any] = []
    made: list[Instance] = []

    def factory(name: str, cfg: BenchConfig, shared: dict[str, Any]) -> Driver:
        made.append(Instance(name, cfg.gateway_address))
        return made[-1]

    def scale(counts: Mapping[str, int]) -> None:
        events.append(dict(counts))

    def settle(n: int) -> float:
        events.append(("settle", n))
        return 0.5

    report = run_scaling(
        _cfg(),
        [1, 2, 3],
        lambda text: [1, 2],
        scale=scale,
        settle=settle,
        restore=dict.fromkeys(("gateway", "preprocess", "inference", "postprocess"), 1),
        base_factory=factory,
    )
    every = ("gateway", "preprocess", "inference", "postprocess")
    assert events == [
        dict.fromkeys(every, 1),
        ("settle", 1),
        dict.fromkeys(every, 2),
        ("settle", 2),
        dict.fromkeys(every, 3),
        ("settle", 3),
        dict.fromkeys(every, 1),
    ]
    assert [s.instances for s in report.steps] == [1, 2, 3]
    assert [a.address for a in made] == gateway_addresses("127.0.0.1:50051", 1) + (
        gateway_addresses("127.0.0.1:50051", 2) + gateway_addresses("127.0.0.1:50051", 3)
    )
    # Step 3's twelve requests: four through each of the three gateways.
    assert [len(a.sent) for a in made[3:]] == [4, 4, 4]
    assert all(x.requests == 12 and x.errors == 0 for s in report.steps for x in s.summaries)
    assert report.restored == "gateway=1, preprocess=1, inference=1, postprocess=1"


def test_the_layout_is_restored_when_a_step_fails() -> None:
    scaled: list[dict[str, int]] = []

    def settle(n: int) -> float:
        if n == 2:
            raise RuntimeError("the consumer groups did not settle")
        return 0.0

    with pytest.raises(RuntimeError, match="did not settle"):
        run_scaling(
            _cfg(),
            [1, 2],
            lambda text: [1],
            scale=lambda counts: scaled.append(dict(counts)),
            settle=settle,
            restore={"gateway": 1, "preprocess": 1},
            base_factory=lambda name, cfg, shared: Instance(name, cfg.gateway_address),
        )
    assert scaled[-1] == {"gateway": 1, "preprocess": 1}


def test_gateway_addresses_follow_the_instance_ports() -> None:
    assert gateway_addresses("127.0.0.1:50051", 3) == [
        "127.0.0.1:50051",
        "127.0.0.1:50151",
        "127.0.0.1:50251",
    ]


def test_instances_sum_their_cpu_and_keep_the_largest_rss() -> None:
    usage = {
        "gateway": Usage((1,), 10.0, 30.0, 90.0, 80.0, cpu_s=2.0),
        "gateway-2": Usage((2,), 15.0, 20.0, 95.0, 70.0, cpu_s=3.0),
        "kafka": Usage((3,), 5.0, 9.0, 900.0, 800.0, cpu_s=1.0),
    }
    merged = by_service(usage)
    assert set(merged) == {"gateway", "kafka"}
    gw = merged["gateway"]
    assert (gw.cpu_percent, gw.cpu_s, gw.cpu_peak_percent) == (25.0, 5.0, 50.0)
    assert (gw.rss_peak_mb, gw.rss_mean_mb, gw.instances, gw.pids) == (95.0, 80.0, 2, (1, 2))
    assert merged["kafka"] == usage["kafka"]
    assert [service_of(n) for n in ("preprocess-3", "kafka-1", "monitor")] == [
        "preprocess",
        "kafka",
        "monitor",
    ]


def test_a_group_settles_when_its_members_split_every_partition_once() -> None:
    topic = STAGE_GROUPS["genwire-preprocess"]
    assert settled([{topic: [0, 1, 2]}], topic, 1)
    assert not settled([{topic: [0, 1, 2]}], topic, 2)  # the new member has not joined yet
    assert settled([{topic: [0, 2]}, {topic: [1]}], topic, 2)
    assert not settled([{topic: [0, 1]}, {topic: [1, 2]}], topic, 2)  # overlap
    assert settled([{topic: [0]}, {topic: [1]}, {topic: [2]}], topic, 3)
    # More instances than partitions: three members own one each, the fourth idles.
    assert settled([{topic: [0]}, {topic: [1]}, {topic: [2]}, {}], topic, 4)
    replies = STAGE_GROUPS["genwire-gateway-replies"]  # 24 partitions, one member per gateway
    halves = [{replies: list(range(0, 24, 2))}, {replies: list(range(1, 24, 2))}]
    assert settled(halves, replies, 2)
    assert not settled(halves[:1], replies, 2)


def _summary(ok: int) -> Summary:
    return Summary("grpc", Load("closed", 4), ok, 0, 10.0, ok / 10.0, 0.0, None, None, None)


def _step(n: int, gateway_cpu_s: float, ok: int = 100) -> ScalingStep:
    usage = {
        "gateway": Usage((1,), 0.0, 0.0, 90.0, 80.0, cpu_s=gateway_cpu_s, instances=n),
        "inference": Usage((2,), 0.0, 0.0, 90.0, 80.0, cpu_s=4.0, instances=n),
    }
    return ScalingStep(n, [_summary(ok)], {"grpc c=4": usage}, {}, 1.0)


def _report(*steps: ScalingStep) -> ScalingReport:
    return ScalingReport(
        run_id="r",
        config={
            "model": "m",
            "requests": 100,
            "rounds": 2,
            "warmup": 5,
            "sampling": {"max_tokens": 32},
            "scaled": ["gateway"],
        },
        environment={
            "cpus": 2,
            "loadavg_before": (1.0, 1.0, 1.0),
            "loadavg_after": (1.0, 1.0, 1.0),
            "started_at": "now",
            "duration_s": 1.0,
        },
        steps=list(steps),
        restored="gateway=1",
    )


def test_the_gateway_line_says_whether_its_cpu_per_request_stays_flat() -> None:
    flat = _report(_step(1, 0.30), _step(2, 0.33), _step(3, 0.35))
    assert gateway_costs(flat) == {"grpc c=4": [(1, 3.0), (2, 3.3), (3, 3.5)]}
    assert flatness(gateway_costs(flat)["grpc c=4"]) == pytest.approx(0.1667, abs=1e-3)
    text = render_scaling(flat)
    assert "gateway CPU per request, grpc c=4: 1 → 3.00 ms, 2 → 3.30 ms, 3 → 3.50 ms" in text
    assert "3 vs 1: +17% (flat within 20%)" in text
    # The table: CPU ms per request per service (inference 4 s over 100 requests = 40 ms).
    assert "40.00" in text
    growing = _report(_step(1, 0.30), _step(3, 0.60))
    assert "3 vs 1: +100% (NOT flat within 20%)" in render_scaling(growing)
    data = scaling_json(growing)
    assert data["gateway_cpu_ms_per_request"]["grpc c=4"][1] == {"instances": 3, "cpu_ms": 6.0}
    assert data["steps"][1]["resources"]["grpc c=4"]["gateway"]["instances"] == 3


def test_no_flatness_without_two_steps_or_requests() -> None:
    assert flatness([(1, 3.0)]) is None
    assert gateway_costs(_report(_step(1, 0.3, ok=0))) == {}


async def test_the_bench_counts_itself_alone_not_the_instances_it_started() -> None:
    import asyncio
    import os
    import sys
    import time

    from genwire_bench.resources import OWN, ResourceSampler, own_process

    # A service instance the scaling run starts is the bench's child until the bench exits.
    child = await asyncio.create_subprocess_exec(
        sys.executable, "-c", "import time; time.sleep(30)"
    )
    try:
        sampler = ResourceSampler({OWN: own_process(), "tree": own_process()}, interval_s=0.05)
        sampler.start()
        # CPU time, not an amount of work: /proc counts in 10 ms ticks, and 200,000 squares
        # took ~6 ms here, so the bench's own CPU could read 0 (it did once in CI).
        spent = time.process_time() + 0.05
        while time.process_time() < spent:
            sum(i * i for i in range(10_000))
        usage = await sampler.stop()
    finally:
        child.kill()
        await child.wait()
    assert usage[OWN].pids == (os.getpid(),)
    assert child.pid in usage["tree"].pids
    # the 50 ms burnt above, in whole ticks: 4 of them sum to 0.03999... in floating point
    assert usage[OWN].cpu_s >= 0.04 - 1e-9


def test_net_cost_takes_each_instance_s_idle_rate_off() -> None:
    from genwire_bench.scaling import net_cpu_ms_per_request

    # Three gateways idle at 0.02 CPU-s per second each (0.06 together); a 10 s phase of
    # 100 requests used 1.6 CPU-s: 0.6 of it idle work, 1.0 the requests: 10 ms each.
    idle = Usage((1,), 0.0, 0.0, 90.0, 80.0, cpu_s=0.3, instances=3, wall_s=5.0)
    usage = Usage((1,), 0.0, 0.0, 90.0, 80.0, cpu_s=1.6, instances=3, wall_s=10.0)
    assert net_cpu_ms_per_request(usage, idle, _summary(100)) == pytest.approx(10.0)
    assert net_cpu_ms_per_request(usage, None, _summary(100)) is None
    step = ScalingStep(3, [_summary(100)], {"grpc c=4": {"gateway": usage}}, {}, 1.0, {})
    assert gateway_costs(_report(step), net=True) == {}  # no idle baseline measured
    step = ScalingStep(
        3, [_summary(100)], {"grpc c=4": {"gateway": usage}}, {}, 1.0, {"gateway": idle}
    )
    assert gateway_costs(_report(step), net=True) == {"grpc c=4": [(3, pytest.approx(10.0))]}
    text = render_scaling(_report(step))
    assert "gateway CPU per request above idle, grpc c=4: 3 → 10.00 ms" in text
    assert "Idle: CPU ms per second" in text and "60.0" in text


def _run(kafka: Usage, jaeger: Usage) -> BenchReport:
    """One step's run: ``grpc c=4`` at 10 requests/s with the broker and Jaeger given."""
    return BenchReport(
        run_id="s",
        config={"sampled": True},
        environment={},
        summaries=[_summary(100)],
        overheads=[],
        breakdowns={},
        resources={"grpc c=4": {"kafka": kafka, "jaeger": jaeger}},
        skipped={},
        records=[],
    )


def broker(jit_s: float) -> Usage:
    """The Kafka broker over a phase: 4 CPU-seconds, ``jit_s`` of them its JIT compiler's."""
    return Usage((1,), 40.0, 60.0, 900.0, 800.0, cpu_s=4.0, jit_cpu_s=jit_s)


def jaeger(cpu: float) -> Usage:
    """Jaeger over a 10 s phase at ``cpu`` % of a core."""
    return Usage((2,), cpu, cpu, 700.0, 600.0, cpu_s=cpu / 10)


def test_each_step_gets_the_jit_and_jaeger_checks_of_a_normal_run() -> None:
    calm = checked(_run(broker(0.4), jaeger(5.0)), 1, 1.0, {})
    assert calm.jit_shares == {"grpc c=4": pytest.approx(0.1)}
    assert (calm.jit_warm, calm.bursts) == ([], {})
    # A broker compiling half its CPU away; Jaeger at 114 % of a core, 114 core-ms a request.
    disturbed = checked(_run(broker(2.0), jaeger(114.0)), 2, 1.0, {})
    assert (disturbed.jit_warm, disturbed.bursts) == (["grpc c=4"], {"grpc c=4": 114.0})
    text = render_scaling(_report(calm, disturbed)).splitlines()
    assert (
        "Kafka broker's JIT compiler, share of the broker's CPU: with 1 instance(s), grpc c=4 10%"
        in text
    )
    warnings = [line for line in text if line.startswith("warning:")]
    assert len(warnings) == 2  # the calm step warns of nothing
    assert warnings[0].startswith(
        "warning: a Kafka broker was still compiling its hot code with 2 instance(s), in grpc c=4"
    )
    assert warnings[1].startswith("warning: Jaeger took 114 % of a core with 2 instance(s), in")
    data = scaling_json(_report(calm, disturbed))
    assert data["steps"][1]["bursts"] == {"grpc c=4": 114.0}
    assert data["steps"][1]["jit_warm"] == ["grpc c=4"]
    assert data["steps"][1]["notes"][-1] == warnings[1]


def test_run_scaling_checks_each_step_s_own_run(monkeypatch: pytest.MonkeyPatch) -> None:
    from genwire_bench import scaling

    runs = iter([_run(broker(0.4), jaeger(5.0)), _run(broker(2.0), jaeger(114.0))])

    class OneRun:
        """Stands in for the bench's runner: each step's run is the next report."""

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            self.report = next(runs)

        async def run(self) -> BenchReport:
            return self.report

    monkeypatch.setattr(scaling, "Runner", OneRun)
    report = run_scaling(
        _cfg(),
        [1, 2],
        lambda text: [1],
        scale=lambda counts: None,
        settle=lambda n: 0.0,
        restore={"gateway": 1},
    )
    calm, disturbed = report.steps
    assert (calm.jit_warm, calm.bursts, len(calm.notes)) == ([], {}, 1)  # the share line alone
    assert (disturbed.jit_warm, disturbed.bursts) == (["grpc c=4"], {"grpc c=4": 114.0})
    assert all("with 2 instance(s), " in line for line in disturbed.notes)
    assert len(disturbed.notes) == 3


def test_a_step_where_redis_forked_says_so() -> None:
    redis = Usage((3,), 30.0, 100.0, 500.0, 480.0, cpu_s=3.0, fork_cpu_s=2.5)
    step = checked(_run(broker(0.4), jaeger(5.0)), 3, 1.0, {})
    assert not any("Redis" in line for line in step.notes)
    run = _run(broker(0.4), jaeger(5.0))
    run.resources["grpc c=4"]["redis"] = redis
    notes = checked(run, 3, 1.0, {}).notes
    assert notes[-1].startswith(
        "warning: Redis wrote its whole data set with 3 instance(s), in grpc c=4 (a snapshot"
    )
