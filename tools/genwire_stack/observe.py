"""What runs now: ``genwire status``'s rows and table, and what the chaos suite and other tools
ask of a running stack (a component's server pid, its restarts, the layout, the brokers)."""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Literal

from genwire.settings import CommonSettings
from genwire_stack.components import (
    Component,
    build_components,
    select_components,
)
from genwire_stack.layout import StackLayout, read_layout
from genwire_stack.paths import StackPaths
from genwire_stack.process import (
    live_child,
    port_free,
    read_record,
)
from genwire_stack.process import supervisor_state as _read_supervisor_state
from genwire_stack.statefile import SupervisorState

State = Literal[
    "running", "not-ready", "starting", "restarting", "unhealthy", "external", "stopped"
]
"""``running``: answers its probe and is ready. ``not-ready``: answers, but says it cannot make
progress (a service's /readyz 503; ``reason`` says why). ``starting``/``restarting``: its
supervisor runs it (again) and it does not answer yet, or waits out the backoff before the next
start. ``unhealthy``: runs, but has not answered for longer than its start timeout.
``external``: answers, but genwire did not start it. ``stopped``: nothing runs."""


@dataclass(frozen=True)
class ComponentStatus:
    """One row of ``genwire status``."""

    name: str
    title: str
    state: State
    pid: int | None
    """The server's own process (a supervised component's child), or None."""
    endpoints: str
    log: str
    reason: str | None = None
    """Why it is not ready, restarting or unhealthy (one line), when known."""
    restarts: int | None = None
    """How often its supervisor restarted it (None: no supervisor)."""
    supervisor_pid: int | None = None


def status(
    components: Iterable[str] | None = None,
    *,
    settings: CommonSettings | None = None,
    catalog: Mapping[str, Component] | None = None,
) -> list[ComponentStatus]:
    """What runs now, one row per component (of the recorded layout)."""
    cfg = settings or CommonSettings()
    paths = StackPaths.from_settings(cfg)
    everything = dict(catalog) if catalog is not None else build_components(paths, cfg)
    return [status_of(c, paths) for c in select_components(everything, components)]


def status_of(component: Component, paths: StackPaths) -> ComponentStatus:
    record = read_record(paths.run, component.name)
    ours = record is not None and record.alive()

    def row(
        state: State,
        pid: int | None,
        reason: str | None = None,
        restarts: int | None = None,
        supervisor: int | None = None,
    ) -> ComponentStatus:
        return ComponentStatus(
            name=component.name,
            title=component.title,
            state=state,
            pid=pid,
            endpoints=component.endpoints(),
            log=str(component.log),
            reason=reason,
            restarts=restarts,
            supervisor_pid=supervisor,
        )

    if record is None or not ours:
        first_port = next(iter(component.ports().values()))
        healthy = component.healthy() if not port_free(first_port) else False
        return row("external" if healthy else "stopped", None)
    if not record.supervised:
        verdict = component.readiness()
        if verdict.ready:
            return row("running", record.pid)
        return row("not-ready" if verdict.answered else "unhealthy", record.pid, verdict.reason)
    state = _read_supervisor_state(paths.run, component.name)
    restarts = state.restarts if state is not None else 0
    child = live_child(paths.run, component.name)
    if child is None:
        if state is not None and state.phase == "backoff":
            wait = max(0.0, (state.next_start_at or time.time()) - time.time())
            reason = f"{state.last_exit}; restart {state.restarts} in {wait:.0f} s"
            return row("restarting", None, reason, restarts, record.pid)
        return row("restarting" if restarts else "starting", None, None, restarts, record.pid)
    verdict = component.readiness()
    if verdict.ready:
        return row("running", child, None, restarts, record.pid)
    if verdict.answered:
        return row("not-ready", child, verdict.reason, restarts, record.pid)
    started = state.child_started_at if state is not None else None
    if started is not None and time.time() - started < component.start_timeout_s:
        after = f"after {state.last_exit}" if state is not None and state.last_exit else None
        return row("restarting" if restarts else "starting", child, after, restarts, record.pid)
    return row("unhealthy", child, "does not answer its health probe", restarts, record.pid)


def format_table(rows: Iterable[ComponentStatus]) -> str:
    """A plain-text table: component, state, pid, restarts, where to reach it, its log; then one
    line per component that is not fine, saying why."""
    rows = list(rows)
    header = ("component", "state", "pid", "restarts", "endpoints", "log")
    lines = [
        (
            r.name,
            r.state,
            str(r.pid or "-"),
            "-" if r.restarts is None else str(r.restarts),
            r.endpoints,
            r.log,
        )
        for r in rows
    ]
    widths = [max(len(row[i]) for row in [header, *lines]) for i in range(len(header))]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    table = [fmt.format(*row).rstrip() for row in [header, *lines]]
    table += [f"{r.name}: {r.state}: {r.reason}" for r in rows if r.reason]
    return "\n".join(table)


def _resolve(name: str, paths: StackPaths, cfg: CommonSettings) -> str:
    """``kafka-1`` → ``kafka`` on a single node, ``preprocess-1`` → ``preprocess``; else as is."""
    everything = build_components(paths, cfg)
    if name in everything:
        return name
    matches = [c.name for c in everything.values() if name in c.aliases]
    return matches[0] if len(matches) == 1 else name


def child_pid(name: str, settings: CommonSettings | None = None) -> int | None:
    """The pid of the server running for component ``name`` now (a supervised component: its
    supervisor's child, the process to SIGKILL to simulate a crash), or None when none runs."""
    cfg = settings or CommonSettings()
    paths = StackPaths.from_settings(cfg)
    resolved = _resolve(name, paths, cfg)
    record = read_record(paths.run, resolved)
    if record is None or not record.alive():
        return None
    if record.supervised:
        return live_child(paths.run, resolved)
    return record.pid


def restart_count(name: str, settings: CommonSettings | None = None) -> int | None:
    """How often the supervisor of ``name`` restarted it since ``genwire up`` started it (None:
    not running under a supervisor)."""
    state = supervisor_state(name, settings)
    return state.restarts if state is not None else None


def supervisor_state(name: str, settings: CommonSettings | None = None) -> SupervisorState | None:
    """What the supervisor of ``name`` last recorded (phase, child pid, restarts, last exit), or
    None when no live supervisor runs it."""
    cfg = settings or CommonSettings()
    paths = StackPaths.from_settings(cfg)
    resolved = _resolve(name, paths, cfg)
    record = read_record(paths.run, resolved)
    if record is None or not record.supervised or not record.alive():
        return None
    return _read_supervisor_state(paths.run, resolved)


def current_layout(settings: CommonSettings | None = None) -> StackLayout:
    """The recorded layout: Kafka brokers and instances per service."""
    return read_layout(StackPaths.from_settings(settings or CommonSettings()).run)


def kafka_bootstrap(settings: CommonSettings | None = None) -> str:
    """Every broker of the recorded layout, comma separated (what services are given)."""
    cfg = settings or CommonSettings()
    paths = StackPaths.from_settings(cfg)
    kafka = next(c for c in build_components(paths, cfg).values() if c.group == "kafka")
    from genwire_stack.components import Kafka

    assert isinstance(kafka, Kafka)
    return kafka.bootstrap
