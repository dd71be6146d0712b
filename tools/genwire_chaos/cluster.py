"""A three-broker KRaft cluster (``genwire up --brokers 3``: replication factor 3,
``min.insync.replicas`` 2) with one broker SIGKILLed under load and kept down a while.

The scenario switches the stack to three brokers (stopping what depends on Kafka, then starting
the cluster and everything again), runs the load while the broker leading the most request-path
partitions is killed with its supervisor and later started again, and switches back to the shape
it found (one broker) whatever happened.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

from aiokafka.admin import AIOKafkaAdminClient

from genwire.topics import Topic
from genwire_chaos.config import LoadConfig
from genwire_chaos.faults import FaultError, StackControl
from genwire_chaos.report import ScenarioReport
from genwire_chaos.scenarios import FaultRun, LoadScenario, run_load_scenario

Out = Callable[[str], None]
REQUEST_PATH = (Topic.REQUESTS, Topic.PREPARED, Topic.GENERATIONS, Topic.RESULTS)


async def _describe(bootstrap: str) -> list[Any]:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=10000)
    await admin.start()
    try:
        described: list[Any] = await admin.describe_topics([str(t) for t in REQUEST_PATH])
    finally:
        with contextlib.suppress(Exception):
            await admin.close()
    return described


def _settled(described: list[Any], replicas: int) -> bool:
    """Every request-path partition has a leader and all ``replicas`` in sync."""
    partitions = [p for topic in described for p in topic.get("partitions", ())]
    return bool(partitions) and all(
        isinstance(p.get("leader"), int)
        and p["leader"] >= 0
        and len(p.get("isr") or ()) >= replicas
        for p in partitions
    )


async def busiest_broker(
    bootstrap: str, replicas: int = 3, timeout_s: float = 120.0
) -> tuple[int, dict[int, int]]:
    """The node id leading the most request-path partitions, and the count per node.

    Waits first until the cluster has settled (every partition led, all replicas in sync): a
    broker that has just registered can still refuse requests (aiokafka's NodeNotReadyError),
    and killing one before the others caught up would test an under-replicated cluster.
    """
    deadline = time.monotonic() + timeout_s
    described: list[Any] = []
    last = "no answer"
    while True:
        try:
            described = await _describe(bootstrap)
            if _settled(described, replicas):
                break
            last = "partitions without a leader or with replicas out of sync"
        except Exception as exc:  # any Kafka error here is "not settled yet"
            last = f"{type(exc).__name__}: {exc}"
        if time.monotonic() > deadline:
            raise FaultError(
                f"the {replicas}-broker cluster did not settle in {timeout_s:.0f} s: {last}"
            )
        await asyncio.sleep(1.0)
    leaders: Counter[int] = Counter()
    for topic in described:
        for partition in topic.get("partitions", ()):
            leader = partition.get("leader")
            if isinstance(leader, int) and leader >= 0:
                leaders[leader] += 1
    if not leaders:
        return 1, {}
    return leaders.most_common(1)[0][0], dict(sorted(leaders.items()))


def broker_kill(node: int, hold_s: float, at: float = 0.3) -> LoadScenario:
    """Kill broker ``kafka-<node>`` with its supervisor at ``at`` of the load, start it after
    ``hold_s`` seconds."""
    name = f"kafka-{node}"

    async def plan(run: FaultRun) -> None:
        await run.at(at)
        window = run.open(f"SIGKILL {name} (with its supervisor) for {hold_s:.0f} s")
        began = time.monotonic()
        await run.call(run.control.kill_all, name)
        await asyncio.sleep(max(0.0, began + hold_s - time.monotonic()))
        took = await run.call(run.control.start, name)
        run.close(window, f"{name} back after {took:.1f} s")

    return LoadScenario(
        name="brokers3-kill",
        description=f"3-broker cluster, {name} SIGKILLed under load for {hold_s:.0f} s",
        plan=plan,
        params={"broker": name, "hold_s": hold_s, "at": at},
        injected=(name,),
    )


async def run_three_brokers(
    load: LoadConfig,
    *,
    control: StackControl | None = None,
    hold_s: float = 30.0,
    out: Out = print,
) -> ScenarioReport:
    """Switch to three brokers, run the broker-kill scenario, switch back."""
    control = control or StackControl(out=out)
    began = time.monotonic()
    found = int(control.layout().get("brokers", 1))
    notes: list[str] = []
    report: ScenarioReport | None = None
    try:
        if found != 3:
            down = await asyncio.to_thread(control.preflight)
            if down:
                return ScenarioReport(
                    "brokers3-kill",
                    "three-broker cluster, one broker killed",
                    failures=[f"stack not healthy before the run: {', '.join(down)}"],
                )
            took = await asyncio.to_thread(control.reshape, 3)
            notes.append(f"switched to 3 brokers in {took:.0f} s")
        bootstrap = control.bootstrap()
        node, leaders = await busiest_broker(bootstrap)
        notes.append(f"partition leaders per node before the kill: {leaders}")
        report = await run_load_scenario(
            broker_kill(node, hold_s), load, control=control, bootstrap_servers=bootstrap, out=out
        )
    except FaultError as exc:
        report = ScenarioReport(
            "brokers3-kill",
            "three-broker cluster, one broker killed",
            failures=[f"could not set up the cluster: {exc}"],
        )
    finally:
        if found != 3 and int(control.layout().get("brokers", 1)) != found:
            try:
                took = await asyncio.to_thread(control.reshape, found)
                notes.append(f"switched back to {found} broker(s) in {took:.0f} s")
            except FaultError as exc:
                notes.append(f"could not switch back to {found} broker(s): {exc}")
                if report is not None:
                    report.failures.append(f"left the stack with 3 brokers: {exc}")
    assert report is not None
    report.notes.extend(notes)
    report.duration_s = round(time.monotonic() - began, 1)
    return report
