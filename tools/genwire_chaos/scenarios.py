"""Load scenarios: paced requests into ``genwire.requests`` while a fault plan runs beside them.

One run: check the stack is healthy, start reading ``genwire.results`` from its end, send the
load, run the fault plan (it waits for its moment in the load, injects, and undoes the fault),
wait for the missing results, check for stuck partitions, make sure every component is back as
it was, and judge: any loss, inconsistent duplicate, stuck partition, error result (every
outage here is shorter than the outage budget), request the broker never took, or component left
down fails the scenario.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable, Coroutine, Iterable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from aiokafka.errors import KafkaError

from genwire.topics import Topic
from genwire_chaos.config import LoadConfig
from genwire_chaos.faults import FaultError, StackControl
from genwire_chaos.kafka_io import RequestLoad, TopicTail, results_sink, stuck_partitions
from genwire_chaos.report import FaultWindow, ScenarioReport
from genwire_chaos.tracker import ResultTracker

T = TypeVar("T")
Out = Callable[[str], None]


class FaultRun:
    """What a fault plan gets: the stack, the load's clock, and where to log its windows."""

    def __init__(
        self, control: StackControl, load_start: float, load_duration_s: float, out: Out
    ) -> None:
        self.control = control
        self.load_start = load_start
        self.load_duration_s = load_duration_s
        self.windows: list[FaultWindow] = []
        self.notes: list[str] = []
        self._out = out

    def now(self) -> float:
        """Seconds since the load started."""
        return time.monotonic() - self.load_start

    def say(self, line: str) -> None:
        """A timestamped progress line."""
        self._out(f"[{self.now():6.1f} s] {line}")

    async def at(self, fraction: float) -> None:
        """Sleep until ``fraction`` of the load's schedule has passed."""
        delay = self.load_start + fraction * self.load_duration_s - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)

    async def call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run a blocking stack call in a thread."""
        return await asyncio.to_thread(fn, *args, **kwargs)

    def open(self, label: str, detail: str = "") -> FaultWindow:
        """A fault begins now."""
        window = FaultWindow(label, round(self.now(), 2), None, detail)
        self.windows.append(window)
        self.say(f"fault: {label}")
        return window

    def close(self, window: FaultWindow, detail: str = "") -> None:
        """The fault ``window`` is over now (the component is back)."""
        window.end_s = round(self.now(), 2)
        if detail:
            window.detail = f"{window.detail}; {detail}" if window.detail else detail
        self.say(f"over: {window.label} ({window.end_s - window.start_s:.1f} s)")


FaultPlan = Callable[[FaultRun], Coroutine[Any, Any, None]]


@dataclass
class LoadScenario:
    """A named fault plan and its parameters."""

    name: str
    description: str
    plan: FaultPlan
    params: dict[str, Any] = field(default_factory=dict)
    injected: tuple[str, ...] = ()
    """Components the plan itself kills or restarts (their pid changes are expected)."""


# -- fault plans -----------------------------------------------------------------------------------


def kill_service(service: str, kills: int = 2) -> LoadScenario:
    """SIGKILL ``service`` ``kills`` times under load, each time until it is back and ready."""
    fractions = [0.2 + 0.5 * i / max(1, kills - 1) for i in range(kills)] if kills > 1 else [0.3]

    async def plan(run: FaultRun) -> None:
        for fraction in fractions:
            await run.at(fraction)
            window = run.open(f"SIGKILL {service}")
            pid = await run.call(run.control.kill, service)
            took = await run.call(run.control.recover, service, pid)
            run.close(window, f"back and ready after {took:.1f} s")

    return LoadScenario(
        name=f"kill-{service}",
        description=f"{service} SIGKILLed {kills}× under load, back each time",
        plan=plan,
        params={"service": service, "kills": kills, "at": [round(f, 2) for f in fractions]},
        injected=(service,),
    )


def kill_triton(at: float = 0.3) -> LoadScenario:
    """SIGKILL Triton (and its Python stubs) under load; it is started again, model loaded."""

    async def plan(run: FaultRun) -> None:
        await run.at(at)
        window = run.open("SIGKILL triton")
        pid = await run.call(run.control.kill, "triton")
        took = await run.call(run.control.recover, "triton", pid)
        run.close(window, f"back with the model loaded after {took:.1f} s")

    return LoadScenario(
        name="kill-triton",
        description="Triton SIGKILLed under load, restarted with the model loaded",
        plan=plan,
        params={"at": at},
        injected=("triton",),
    )


def outage(component: str, down_s: float, *, at: float = 0.15, how: str = "stop") -> LoadScenario:
    """Take ``component`` (kafka or redis) away for ``down_s`` seconds under load.

    ``how``: ``stop`` (SIGTERM, like ``genwire down``), ``kill`` (SIGKILL) or ``freeze``
    (SIGSTOP…SIGCONT: the process stays but answers nothing).
    """
    if how not in ("stop", "kill", "freeze"):
        raise ValueError(f"unknown outage kind {how!r}")

    async def plan(run: FaultRun) -> None:
        await run.at(at)
        window = run.open(f"{component} {how} for {down_s:.0f} s")
        began = time.monotonic()
        frozen: int | None = None
        if how == "stop":
            await run.call(run.control.stop, component)
        elif how == "kill":
            await run.call(run.control.kill_all, component)
        else:
            frozen = await run.call(run.control.freeze, component)
        await asyncio.sleep(max(0.0, began + down_s - time.monotonic()))
        if frozen is not None:
            await run.call(run.control.thaw, component, frozen)
            took = await run.call(run.control.wait_healthy, [component], 120.0)
        else:
            took = await run.call(run.control.start, component)
        down_for = time.monotonic() - began
        run.close(window, f"down {down_for:.1f} s, healthy {took:.1f} s after start")

    return LoadScenario(
        name=f"{component}-down",
        description=f"{component} away for {down_s:.0f} s under load ({how}), then back",
        plan=plan,
        params={"component": component, "down_s": down_s, "at": at, "how": how},
        injected=(component,),
    )


def rebalance(
    service: str, peak: int = 3, up_at: float = 0.2, down_at: float = 0.6
) -> LoadScenario:
    """Scale ``service`` 1 → ``peak`` → 1 under load (each step a group rebalance)."""

    async def plan(run: FaultRun) -> None:
        try:
            await run.at(up_at)
            window = run.open(f"scale {service} 1→{peak}")
            took = await run.call(run.control.scale, service, peak)
            run.close(window, f"{peak} ready after {took:.1f} s")
            await run.at(down_at)
        finally:
            window = run.open(f"scale {service} {peak}→1")
            took = await run.call(run.control.scale, service, 1)
            run.close(window, f"extra instances stopped after {took:.1f} s")

    return LoadScenario(
        name=f"rebalance-{service}",
        description=f"{service} scaled 1→{peak}→1 under load",
        plan=plan,
        params={"service": service, "peak": peak, "up_at": up_at, "down_at": down_at},
    )


# -- the runner ------------------------------------------------------------------------------------


def _changed(
    before: dict[str, Any], after: dict[str, Any], expected: Iterable[str]
) -> dict[str, int]:
    """Services whose pid or restart count changed, and were not meant to."""
    skip = set(expected)
    changed: dict[str, int] = {}
    for name, state in before.items():
        if name in skip:
            continue
        now = after.get(name)
        if now is None or now.pid != state.pid:
            changed[name] = changed.get(name, 0) + 1
        elif now.restarts != state.restarts and None not in (now.restarts, state.restarts):
            changed[name] = (now.restarts or 0) - (state.restarts or 0)
    return changed


async def run_load_scenario(
    scenario: LoadScenario,
    load: LoadConfig,
    *,
    control: StackControl | None = None,
    bootstrap_servers: str | None = None,
    out: Out = print,
) -> ScenarioReport:
    """Run one scenario against the running stack; never raises for a failed check."""
    control = control or StackControl(out=out)
    bootstrap = bootstrap_servers or control.bootstrap()
    report = ScenarioReport(
        name=scenario.name,
        description=scenario.description,
        params={
            **scenario.params,
            "requests": load.requests,
            "rate": load.rate,
            "max_tokens": load.max_tokens,
        },
    )
    began = time.monotonic()
    down = await asyncio.to_thread(control.preflight)
    if down:
        report.failures.append(f"stack not healthy before the run: {', '.join(down)}")
        report.duration_s = time.monotonic() - began
        return report
    before = await asyncio.to_thread(control.states)
    tracker = ResultTracker()
    tail = TopicTail(bootstrap, [Topic.RESULTS], results_sink(tracker), name="results")
    generator = RequestLoad(
        bootstrap,
        tracker,
        run_id=f"chaos-{scenario.name}-{uuid.uuid4().hex[:8]}",
        count=load.requests,
        rate=load.rate,
        max_tokens=load.max_tokens,
    )
    await tail.start()
    await generator.start()
    out(
        f"{scenario.name}: {load.requests} requests at {load.rate:g}/s "
        f"(~{generator.duration_s:.0f} s), run id {generator.run_id}"
    )
    load_start = time.monotonic()
    run = FaultRun(control, load_start, generator.duration_s, out)
    load_task = asyncio.create_task(generator.run())
    fault_task = asyncio.create_task(scenario.plan(run))
    progress = asyncio.create_task(_progress(run, tracker))
    try:
        try:
            await fault_task
        except FaultError as exc:
            report.failures.append(f"fault injection failed: {exc}")
        except Exception as exc:  # a bug in a plan must not lose the figures
            report.failures.append(f"fault plan crashed: {type(exc).__name__}: {exc}")
        stats = await load_task
        run.say(
            f"load done: {stats.acked} acknowledged, {stats.gave_up} given up, "
            f"{stats.send_errors} send retries"
        )
        await _drain(run, tracker, load.drain_s)
        run.say("checking for stuck partitions")
        try:
            stuck, settle = await stuck_partitions(bootstrap, wait_s=load.stuck_wait_s)
        except KafkaError as exc:
            report.failures.append(f"could not check for stuck partitions: {exc}")
        else:
            report.stuck = [str(s) for s in stuck]
            report.stuck_settle_s = round(settle, 1)
    finally:
        progress.cancel()
        for task in (fault_task, load_task):
            if not task.done():
                task.cancel()
        await generator.stop()
        await tail.stop()
    restored = await asyncio.to_thread(_restore, control, report)
    after = await asyncio.to_thread(control.states, list(before))
    report.restarts = _changed(before, after, (*scenario.injected, *restored))
    fault_ends = [load_start + w.end_s for w in run.windows if w.end_s is not None]
    summary = tracker.summary(load_start=load_start, fault_ends=fault_ends)
    report.figures = summary
    report.faults = run.windows
    report.notes.extend(run.notes)
    report.failures.extend(judge(report))
    report.duration_s = round(time.monotonic() - began, 1)
    return report


def judge(report: ScenarioReport) -> list[str]:
    """The failures a load scenario's figures show."""
    f = report.figures
    failures: list[str] = []
    if f is None:
        return failures
    if f.lost:
        failures.append(f"{f.lost} request(s) lost (no result)")
    if f.inconsistent_duplicates:
        failures.append(f"{f.inconsistent_duplicates} request id(s) answered inconsistently")
    if report.stuck:
        failures.append(f"{len(report.stuck)} partition(s) stuck")
    if f.error_results:
        codes = ", ".join(f"{c}={n}" for c, n in f.error_results.items())
        failures.append(f"error results during an outage shorter than the budget: {codes}")
    if f.not_accepted:
        failures.append(f"{f.not_accepted} request(s) never acknowledged by the broker")
    if any(r is None for r in f.recoveries_s):
        failures.append("results never flowed again after a fault")
    if report.restarts:
        names = ", ".join(sorted(report.restarts))
        failures.append(f"service(s) restarted without being faulted: {names}")
    return failures


def _restore(control: StackControl, report: ScenarioReport) -> list[str]:
    """Leave the stack as found: anything not ready now is a failure, and is started again."""
    try:
        wrong = control.restore()
    except FaultError as exc:
        report.failures.append(f"could not restore the stack: {exc}")
        return []
    if wrong:
        report.failures.append(f"not ready after the scenario (restarted): {', '.join(wrong)}")
    return [w.split(" ", 1)[0] for w in wrong]


async def _drain(run: FaultRun, tracker: ResultTracker, drain_s: float) -> None:
    """Wait until every acknowledged request has a result, or ``drain_s`` of no progress."""
    last_progress = time.monotonic()
    answered = tracker.answered
    while tracker.outstanding():
        await asyncio.sleep(0.5)
        if tracker.answered != answered:
            answered, last_progress = tracker.answered, time.monotonic()
        elif time.monotonic() - last_progress > drain_s:
            run.say(f"giving up on {len(tracker.outstanding())} missing result(s)")
            return


async def _progress(run: FaultRun, tracker: ResultTracker, every_s: float = 10.0) -> None:
    while True:
        await asyncio.sleep(every_s)
        run.say(
            f"{tracker.expected} produced, {tracker.acknowledged} acknowledged, "
            f"{tracker.answered} answered, {len(tracker.outstanding())} outstanding"
        )
