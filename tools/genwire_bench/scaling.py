"""``genwire bench --scaling 1,2,3``: the same load against 1, 2 and 3 instances of every stage.

For each count the bench scales the running stack itself (``genwire_stack.ensure_up`` with
``scale``: gateway, preprocess, inference and postprocess, the layout ``genwire up --scale``
records), waits until each consumer stage's group has settled on its new members, then runs the
same requests as a normal run with a client on *every* gateway (round robin over their gRPC
ports). Per step it reports throughput, latency percentiles and the CPU each service spent per
request, summed over its instances (:func:`genwire_bench.resources.by_service`); the gateway's
CPU per request gets its own line, compared with the first step. Afterwards the layout that ran
before (one of each, normally) is restored, also when the run fails or is interrupted.

Triton is not scaled: every inference instance shares the one Triton server (README, "Three
brokers and more instances").
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import platform
import secrets
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from genwire.kafka_security import client_options
from genwire.service import loop as event_loops
from genwire.topics import TOPIC_SPECS, Topic
from genwire_bench.drivers.base import Driver, TraceContext
from genwire_bench.records import BenchRequest, RequestRecord
from genwire_bench.report import (
    burst_lines,
    bursts,
    fork_lines,
    jit_lines,
    jit_shares,
    jit_warnings,
)
from genwire_bench.resources import Usage
from genwire_bench.runner import (
    BenchConfig,
    BenchReport,
    DriverFactory,
    Runner,
    config_dict,
    make_driver,
)
from genwire_bench.stats import Summary

SCALED_SERVICES = ("gateway", "preprocess", "inference", "postprocess")
"""What a step scales (``genwire_stack.SCALABLE``); Triton, Kafka and the monitor stay one."""
STAGE_GROUPS: dict[str, str] = {
    "genwire-preprocess": Topic.REQUESTS,
    "genwire-inference": Topic.PREPARED,
    "genwire-postprocess": Topic.GENERATIONS,
    "genwire-gateway-replies": Topic.REPLIES,
}
"""Each consumer stage's group (its service name) and the topic whose partitions it shares;
the gateways' reply readers share the reply partitions in one group."""
OPTIONAL_GROUPS = frozenset({"genwire-gateway-replies"})
"""Groups a stack may lack: gateways that read every reply themselves (before direct replies)
join none, and a run against them measures that design."""
GATEWAY_TARGETS = ("grpc", "grpc-stream")
"""Targets that enter through a gateway: spread over every gateway instance."""
SCALING_TARGETS = ("grpc", "grpc-stream", "kafka", "kafka-stream")
"""Targets a scaling run may use (direct Triton does not go through the stages)."""
SHOWN = (
    "gateway",
    "preprocess",
    "inference",
    "postprocess",
    "triton",
    "kafka",
    "redis",
    "jaeger",
    "monitor",
    "bench",
)
"""Columns of the CPU-per-request table, in pipeline order (others follow, sorted)."""
FLAT_WITHIN = 0.20
"""Issue 10: a gateway's CPU per request stays within 20 % as gateways go from 1 to 3."""

Out = Callable[[str], None]


class SpreadDriver(Driver):
    """One target over several gateway instances, round robin: a client on each gateway."""

    def __init__(self, drivers: Sequence[Driver]) -> None:
        if not drivers:
            raise ValueError("a spread driver needs at least one driver")
        first = drivers[0]
        super().__init__(first.timeout_s)
        self.name = first.name
        self.streaming = first.streaming
        self.baseline = None  # a scaling run compares steps, not the pipeline with Triton
        self.drivers = list(drivers)
        self._turn = 0

    async def start(self) -> None:
        """Connect to every instance; one that cannot be reached fails the target."""
        for driver in self.drivers:
            await driver.start()

    async def close(self) -> None:
        """Close every connection."""
        for driver in self.drivers:
            with contextlib.suppress(Exception):
                await driver.close()

    async def send(self, req: BenchRequest, request_id: str, trace: TraceContext) -> RequestRecord:
        """Send through the next instance in turn."""
        driver = self.drivers[self._turn % len(self.drivers)]
        self._turn += 1
        return await driver.send(req, request_id, trace)

    async def _send(self, req: BenchRequest, record: RequestRecord, trace: TraceContext) -> None:
        raise NotImplementedError("send() hands each request to one instance's driver")


def gateway_addresses(first: str, instances: int) -> list[str]:
    """The gRPC address of each gateway instance: the first one's port + 100·(n−1)."""
    from genwire_stack.layout import instance_port

    host, _, port = first.rpartition(":")
    return [f"{host}:{instance_port(int(port), i)}" for i in range(1, instances + 1)]


def spread_factory(instances: int, base: DriverFactory = make_driver) -> DriverFactory:
    """A driver factory that spreads the gateway targets over ``instances`` gateways."""

    def make(name: str, cfg: BenchConfig, shared: dict[str, Any]) -> Driver:
        if name not in GATEWAY_TARGETS:
            return base(name, cfg, shared)
        return SpreadDriver(
            [
                base(name, replace(cfg, gateway_address=address), shared)
                for address in gateway_addresses(cfg.gateway_address, instances)
            ]
        )

    return make


def _partitions(topic: str) -> int:
    return next(spec.partitions for spec in TOPIC_SPECS if spec.name == topic)


async def group_assignments(bootstrap: str, group: str) -> list[dict[str, list[int]]]:
    """Each member of ``group``: the partitions it is assigned, per topic."""
    from aiokafka.admin import AIOKafkaAdminClient
    from aiokafka.coordinator.protocol import ConsumerProtocolMemberAssignment

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, **client_options())
    await admin.start()
    try:
        # One group per call: aiokafka 0.14 fails to decode a multi-group answer.
        responses: list[Any] = await admin.describe_consumer_groups([group])
        members = [
            m
            for r in responses
            for g in r.to_object()["groups"]
            if g["group"] == group
            for m in g["members"]
        ]
        return [
            {
                topic: sorted(parts)
                for topic, parts in ConsumerProtocolMemberAssignment.decode(
                    m["member_assignment"]
                ).assignment
            }
            for m in members
        ]
    finally:
        await admin.close()


def settled(members: Sequence[Mapping[str, Sequence[int]]], topic: str, instances: int) -> bool:
    """Whether ``min(instances, partitions)`` members share every partition of ``topic`` once."""
    partitions = _partitions(topic)
    owned = [sorted(m.get(topic, ())) for m in members]
    owned = [o for o in owned if o]
    every = sorted(p for o in owned for p in o)
    return len(owned) == min(instances, partitions) and every == list(range(partitions))


async def settle_groups(bootstrap: str, instances: int, timeout_s: float = 90.0) -> float:
    """Wait until every stage's group has rebalanced onto ``instances`` members; seconds taken."""
    began = time.monotonic()
    try:
        async with asyncio.timeout(timeout_s):
            for group, topic in STAGE_GROUPS.items():
                members = await group_assignments(bootstrap, group)
                if not members and group in OPTIONAL_GROUPS:
                    continue
                # A rebalance has no event to wait on from outside the group: poll the broker.
                while not settled(members, topic, instances):
                    await asyncio.sleep(0.5)
                    members = await group_assignments(bootstrap, group)
    except TimeoutError:
        raise RuntimeError(
            f"the consumer groups did not settle on {instances} instance(s) within "
            f"{timeout_s:.0f} s (see `genwire status` and the services' logs)"
        ) from None
    return time.monotonic() - began


@dataclass(frozen=True)
class ScalingStep:
    """One instance count: what the load measured and what each service spent."""

    instances: int
    summaries: list[Summary]
    resources: dict[str, dict[str, Usage]]
    """Per ``"<target> <load>"``: each service's usage, summed over its instances."""
    skipped: dict[str, str]
    settle_s: float
    idle: dict[str, Usage] = field(default_factory=dict)
    """Each service with no requests, just before the load (its background work)."""
    jit_shares: dict[str, float] = field(default_factory=dict)
    """Per phase, the share of the Kafka broker's CPU its JIT compiler took (as a normal run's
    report: :func:`genwire_bench.report.jit_shares`)."""
    jit_warm: list[str] = field(default_factory=list)
    """Phases whose broker was still compiling its hot code (``report.jit_warnings``)."""
    bursts: dict[str, float] = field(default_factory=dict)
    """Phases where Jaeger burst, with its % of a core (``report.bursts``)."""
    notes: list[str] = field(default_factory=list)
    """The lines a normal run prints for the above, naming this step's instance count."""


@dataclass
class ScalingReport:
    """A whole scaling run (serialised as the --json file)."""

    run_id: str
    config: dict[str, Any]
    environment: dict[str, Any]
    steps: list[ScalingStep]
    restored: str


def cpu_ms_per_request(usage: Usage, summary: Summary) -> float | None:
    """CPU milliseconds ``usage`` spent per successful request of ``summary`` (None: none ok)."""
    ok = summary.requests - summary.errors
    return usage.cpu_s * 1000.0 / ok if ok > 0 else None


def net_cpu_ms_per_request(usage: Usage, idle: Usage | None, summary: Summary) -> float | None:
    """CPU ms per request above the service's idle rate: what the requests themselves cost.

    The idle rate (CPU seconds per second with no requests: heartbeats, metrics, span export,
    Kafka's fetch loops) of every instance is taken off over the phase's wall time, so a fixed
    cost per instance does not read as a cost per request.
    """
    ok = summary.requests - summary.errors
    if ok <= 0 or idle is None or idle.wall_s <= 0:
        return None
    busy = usage.cpu_s - idle.cpu_s / idle.wall_s * usage.wall_s
    return busy * 1000.0 / ok


def gateway_costs(
    report: ScalingReport, *, net: bool = False
) -> dict[str, list[tuple[int, float]]]:
    """Per ``"<target> <load>"``: (gateways, the gateways' CPU ms per request) of each step;
    ``net``: above their idle rate (steps measured without an idle baseline are left out)."""
    out: dict[str, list[tuple[int, float]]] = {}
    for step in report.steps:
        for summary in step.summaries:
            key = f"{summary.target} {summary.load.label}"
            usage = step.resources.get(key, {}).get("gateway")
            if usage is None:
                continue
            cost = (
                net_cpu_ms_per_request(usage, step.idle.get("gateway"), summary)
                if net
                else cpu_ms_per_request(usage, summary)
            )
            if cost is not None:
                out.setdefault(key, []).append((step.instances, cost))
    return out


def flatness(costs: Sequence[tuple[int, float]]) -> float | None:
    """The largest step's cost relative to the smallest step's (0.1 = 10 % more); None if < 2."""
    if len(costs) < 2:
        return None
    ordered = sorted(costs)
    first, last = ordered[0][1], ordered[-1][1]
    return last / first - 1.0 if first > 0 else None


Scale = Callable[[Mapping[str, int]], None]
Settle = Callable[[int], float]
Idle = Callable[[], dict[str, Usage]]


async def measure_idle(run_dir: Path | None, seconds: float) -> dict[str, Usage]:
    """Each service's CPU over ``seconds`` with no requests (instances summed)."""
    from genwire_bench.resources import ResourceSampler, by_service, discover

    sampler = ResourceSampler(discover(run_dir))
    sampler.start()
    await asyncio.sleep(seconds)
    return by_service(await sampler.stop())


def stack_scaler(out: Out) -> Scale:
    """Scale the native stack through ``genwire_stack`` (the layout ``genwire up`` records)."""
    from genwire_stack import ensure_up

    def scale(counts: Mapping[str, int]) -> None:
        ensure_up(list(counts), scale=dict(counts), out=out)

    return scale


def current_instances() -> dict[str, int]:
    """Instances of each scaled service in the recorded layout (to restore afterwards)."""
    from genwire_stack import current_layout

    layout = current_layout()
    return {svc: layout.instances(svc) for svc in SCALED_SERVICES}


def run_scaling(
    cfg: BenchConfig,
    counts: Sequence[int],
    tokenize: Callable[[str], Any],
    *,
    scale: Scale,
    settle: Settle,
    restore: Mapping[str, int],
    progress: Callable[[str, RequestRecord | None], None] | None = None,
    base_factory: DriverFactory = make_driver,
    out: Out = lambda _line: None,
    idle: Idle | None = None,
) -> ScalingReport:
    """Run ``cfg``'s load once per instance count in ``counts``; ``restore`` the layout after.

    ``idle`` (when given) measures every service with no requests after each step settled:
    the baseline the net CPU per request is taken against."""
    run_id = secrets.token_hex(4)
    started = time.time()
    load_before = os.getloadavg()
    steps: list[ScalingStep] = []
    try:
        for n in counts:
            out(f"scaling {', '.join(SCALED_SERVICES)} to {n} instance(s) each")
            scale(dict.fromkeys(SCALED_SERVICES, n))
            settle_s = settle(n)
            out(f"consumer groups settled on {n} instance(s) in {settle_s:.1f} s")
            baseline = idle() if idle is not None else {}
            runner = Runner(cfg, tokenize, progress, driver_factory=spread_factory(n, base_factory))
            report = event_loops.run(runner.run(), cfg.event_loop)
            steps.append(checked(report, n, settle_s, baseline))
    finally:
        out(f"restoring {', '.join(f'{s}={c}' for s, c in restore.items())}")
        scale(restore)
    return ScalingReport(
        run_id=run_id,
        config={**config_dict(cfg), "scaling": list(counts), "scaled": list(SCALED_SERVICES)},
        environment={
            "host": platform.node(),
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "event_loop": event_loops.label(cfg.event_loop),
            "loadavg_before": load_before,
            "loadavg_after": os.getloadavg(),
            "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
            "duration_s": round(time.time() - started, 1),
        },
        steps=steps,
        restored=", ".join(f"{s}={c}" for s, c in restore.items()),
    )


def checked(report: BenchReport, n: int, settle_s: float, idle: dict[str, Usage]) -> ScalingStep:
    """One step from its run's report, with the checks a normal run's report makes: the
    broker's JIT warm-up and Jaeger's bursts disturb a step's figures as they do a run's."""
    where = f"with {n} instance(s), "
    return ScalingStep(
        n,
        report.summaries,
        report.resources,
        report.skipped,
        settle_s,
        idle,
        jit_shares=jit_shares(report),
        jit_warm=jit_warnings(report),
        bursts=bursts(report),
        notes=[*jit_lines(report, where), *burst_lines(report, where), *fork_lines(report, where)],
    )


def _fmt(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def render_scaling(report: ScalingReport) -> str:
    """The scaling run as text: one row per step, target and load, then the gateway's line."""
    from genwire_bench.report import table

    cfg, env = report.config, report.environment
    out = [
        f"genwire bench --scaling — run {report.run_id}, model {cfg['model']}, "
        f"{cfg['requests']} requests per step, target and load ({cfg['rounds']} round(s), "
        f"{cfg['warmup']} warm-up), max_tokens {cfg['sampling']['max_tokens']}; scaled: "
        f"{', '.join(cfg['scaled'])} (Triton shared)",
        f"{env['cpus']} CPUs, client on {env.get('event_loop', 'asyncio')}, "
        f"load average {env['loadavg_before'][0]:.2f} before, "
        f"{env['loadavg_after'][0]:.2f} after; started {env['started_at']}, "
        f"took {env['duration_s']} s; restored {report.restored}",
        "",
    ]
    for step in report.steps:
        for name, reason in step.skipped.items():
            out.append(f"skipped {name} with {step.instances} instance(s): {reason}")
    seen = {svc for step in report.steps for usage in step.resources.values() for svc in usage}
    services = [s for s in SHOWN if s in seen] + sorted(seen - set(SHOWN))
    rows = []
    for step in report.steps:
        for x in step.summaries:
            usage = step.resources.get(f"{x.target} {x.load.label}", {})
            rows.append(
                [
                    str(step.instances),
                    x.target,
                    x.load.label,
                    f"{x.requests - x.errors}/{x.errors}",
                    _fmt(x.requests_per_s, 2),
                    _fmt(None if x.e2e is None else x.e2e.p50),
                    _fmt(None if x.e2e is None else x.e2e.p99),
                    *(
                        _fmt(cpu_ms_per_request(usage[s], x) if s in usage else None, 2)
                        for s in services
                    ),
                ]
            )
    out.append(
        "Latency in ms; then CPU ms per request of each service, summed over its instances "
        "(bench = the load generator itself)"
    )
    out.append(
        table(
            ["instances", "target", "load", "ok/err", "req/s", "e2e p50", "p99", *services],
            rows,
            left=3,
        )
    )
    idle_rows = [
        [str(step.instances), *(_idle_ms(step.idle.get(s)) for s in services)]
        for step in report.steps
        if step.idle
    ]
    if idle_rows:
        out += [
            "",
            "Idle: CPU ms per second of each service with no requests (instances summed)",
            table(["instances", *services], idle_rows),
        ]
    out.append("")
    notes = [line for step in report.steps for line in step.notes]
    if notes:
        out += [*notes, ""]
    for net in (False, True):
        label = "gateway CPU per request above idle" if net else "gateway CPU per request"
        for key, costs in gateway_costs(report, net=net).items():
            out.append(f"{label}, {key}: {_gateway_line(costs)}")
    return "\n".join(out)


def _idle_ms(usage: Usage | None) -> str:
    if usage is None or usage.wall_s <= 0:
        return "-"
    return f"{usage.cpu_s * 1000.0 / usage.wall_s:.1f}"


def _gateway_line(costs: Sequence[tuple[int, float]]) -> str:
    steps = ", ".join(f"{n} → {c:.2f} ms" for n, c in costs)
    rise = flatness(costs)
    if rise is None:
        return steps
    flat = abs(rise) <= FLAT_WITHIN
    return (
        f"{steps}; {costs[-1][0]} vs {costs[0][0]}: {rise:+.0%} "
        f"({'flat' if flat else 'NOT flat'} within {FLAT_WITHIN:.0%})"
    )


def scaling_json(report: ScalingReport) -> dict[str, Any]:
    """The scaling report as plain JSON data."""
    from genwire_bench.report import jsonable

    data: dict[str, Any] = jsonable(report)
    for net, name in (
        (False, "gateway_cpu_ms_per_request"),
        (True, "gateway_net_cpu_ms_per_request"),
    ):
        data[name] = {
            key: [{"instances": n, "cpu_ms": c} for n, c in costs]
            for key, costs in gateway_costs(report, net=net).items()
        }
    return data
