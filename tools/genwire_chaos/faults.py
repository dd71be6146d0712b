"""Fault injectors over the native stack that ``genwire up`` runs (``genwire_stack``).

Every component runs under a supervisor (``genwire_stack.supervise``) that restarts its server
when it exits. So a *crash* is a SIGKILL of the server alone (``kill``): the supervisor brings it
back, and ``recover`` waits for the new pid to be ready. An *outage* must outlast that: ``stop``
(``genwire down --only``, SIGTERM) or ``kill_all`` (SIGKILL of the supervisor's whole process
group, as if the host died) keep it away until ``start`` (``ensure_up``) brings it back;
``freeze``/``thaw`` SIGSTOP/SIGCONT it instead (it stays, but answers nothing).

Only processes genwire itself started (its pid files) are signalled, never by name. Blocking
calls are meant to run in a thread (``asyncio.to_thread``) so load and tails keep going.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from genwire_stack import manager
from genwire_stack.components import Component, Service, build_components
from genwire_stack.errors import StackError
from genwire_stack.health import http_status
from genwire_stack.layout import instance_name
from genwire_stack.paths import StackPaths
from genwire_stack.process import PidRecord, pid_alive, read_record

from genwire.settings import CommonSettings

Out = Callable[[str], None]
MODEL = manager.DEFAULT_MODEL


def _quiet(_: str) -> None:
    return None


class FaultError(Exception):
    """A fault could not be injected or undone (the message says what and where)."""


@dataclass(frozen=True)
class ProcessState:
    """What runs for one component: the server's own pid and its supervisor's restart count."""

    pid: int | None
    restarts: int | None
    """How often its supervisor restarted it (None: not supervised)."""


class StackControl:
    """Find, kill, stop, start, scale and probe the components of the running stack."""

    def __init__(self, settings: CommonSettings | None = None, out: Out = _quiet) -> None:
        self.settings = settings or CommonSettings()
        self.paths = StackPaths.from_settings(self.settings)
        self.out = out

    # -- looking -----------------------------------------------------------------------------------

    @property
    def components(self) -> dict[str, Component]:
        """Every component of the stack's current layout (brokers, instances), by name."""
        return build_components(self.paths, self.settings)

    def component(self, name: str) -> Component:
        """The component ``name`` (kafka or kafka-N, redis, triton, jaeger, a service instance)."""
        try:
            return self.components[name]
        except KeyError:
            raise FaultError(f"no component {name!r} in this stack") from None

    def bootstrap(self) -> str:
        """Every broker of the current layout (what clients should be given)."""
        return manager.kafka_bootstrap(self.settings)

    def services(self) -> list[str]:
        """Every service instance of the current layout."""
        return [n for n, c in self.components.items() if isinstance(c, Service)]

    def record(self, name: str) -> PidRecord | None:
        """The pid record of ``name`` (its supervisor's pid), if it runs."""
        record = read_record(self.paths.run, name)
        return record if record is not None and record.alive() else None

    def state(self, name: str) -> ProcessState:
        """The server process of ``name`` now."""
        return ProcessState(
            pid=manager.child_pid(name, self.settings),
            restarts=manager.restart_count(name, self.settings),
        )

    def states(self, names: Iterable[str] | None = None) -> dict[str, ProcessState]:
        """``state`` of several components (default: every service instance)."""
        return {name: self.state(name) for name in (names or self.services())}

    def healthy(self, name: str) -> bool:
        """Ready now: services' /readyz, infrastructure's own probe; Triton with the model."""
        if not self.component(name).healthy():
            return False
        if name == "triton":
            return self.model_ready()
        return True

    def model_ready(self) -> bool:
        """The default model answers ready on Triton."""
        triton = self.component("triton")
        port = triton.ports()["http"]
        return http_status(f"http://127.0.0.1:{port}/v2/models/{MODEL}/ready") == 200

    def unhealthy(self, names: Iterable[str] | None = None) -> list[str]:
        """Components that are not ready now."""
        return [n for n in (names or self.components) if not self.healthy(n)]

    def why(self, name: str) -> str:
        """``name`` and why it is not ready (its /readyz reason), for messages."""
        if name == "triton" and self.component(name).healthy():
            return f"triton (model {MODEL} not ready)"
        verdict = self.component(name).readiness()
        if verdict.ready:
            return name
        return f"{name} ({verdict.reason or 'not answering'})"

    def preflight(self, wait_s: float = 60.0) -> list[str]:
        """Wait up to ``wait_s`` for every component to be ready; what is still not, with why."""
        deadline = time.monotonic() + wait_s
        while True:
            down = self.unhealthy()
            if not down or time.monotonic() >= deadline:
                return [self.why(n) for n in down]
            time.sleep(1.0)

    def wait_healthy(self, names: Iterable[str], timeout_s: float) -> float:
        """Wait until every one of ``names`` is ready; returns the seconds it took."""
        wanted = list(names)
        began = time.monotonic()
        while True:
            missing = self.unhealthy(wanted)
            if not missing:
                return time.monotonic() - began
            if time.monotonic() - began > timeout_s:
                raise FaultError(f"{', '.join(missing)} not ready after {timeout_s:.0f} s")
            time.sleep(0.2)

    # -- crashes -----------------------------------------------------------------------------------

    def kill(self, name: str) -> int:
        """SIGKILL the server of ``name`` (not its supervisor); returns the pid killed."""
        pid = self.state(name).pid
        if pid is None:
            raise FaultError(f"{name} has no running server process to kill")
        self.out(f"SIGKILL {name} (pid {pid})")
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        _wait_gone(pid, 10.0)
        return pid

    def recover(self, name: str, killed_pid: int, timeout_s: float = 240.0) -> float:
        """After ``kill``: wait until a new server of ``name`` is ready (its supervisor restarts
        it; without one, start it here). Returns the seconds it took."""
        began = time.monotonic()
        record = self.record(name)
        if record is None or not record.supervised:
            self.start(name, timeout_s)
            return time.monotonic() - began
        while time.monotonic() - began < timeout_s:
            pid = self.state(name).pid
            if pid is not None and pid != killed_pid and self.healthy(name):
                return time.monotonic() - began
            time.sleep(0.2)
        raise FaultError(f"{name} not back and ready {timeout_s:.0f} s after the kill")

    # -- outages -----------------------------------------------------------------------------------

    def kill_all(self, name: str) -> int:
        """SIGKILL ``name`` with its supervisor (its whole process group): it stays down."""
        record = self.record(name)
        if record is None:
            raise FaultError(f"{name} is not running under genwire: nothing to kill")
        self.out(f"SIGKILL {name} and its supervisor (group {record.pid})")
        with contextlib.suppress(ProcessLookupError):
            os.killpg(record.pid, signal.SIGKILL)
        _wait_gone(record.pid, 10.0)
        return record.pid

    def stop(self, name: str) -> None:
        """Stop ``name`` as ``genwire down --only`` does (SIGTERM, then SIGKILL)."""
        if self.record(name) is None:
            raise FaultError(f"{name} is not running under genwire: it cannot be stopped here")
        self.out(f"stopping {name}")
        manager.down([name], settings=self.settings)

    def freeze(self, name: str) -> int:
        """SIGSTOP ``name``'s process group; returns the group to ``thaw``."""
        record = self.record(name)
        if record is None:
            raise FaultError(f"{name} is not running under genwire: nothing to freeze")
        self.out(f"SIGSTOP {name} (group {record.pid})")
        os.killpg(record.pid, signal.SIGSTOP)
        return record.pid

    def thaw(self, name: str, group: int) -> None:
        """SIGCONT what ``freeze`` stopped."""
        self.out(f"SIGCONT {name} (group {group})")
        with contextlib.suppress(ProcessLookupError):
            os.killpg(group, signal.SIGCONT)

    def start(self, name: str, timeout_s: float = 240.0) -> float:
        """Start ``name`` again (Triton: with the model loaded); returns the seconds it took."""
        began = time.monotonic()
        self.out(f"starting {name}")
        try:
            manager.ensure_up([name], model=name == "triton", settings=self.settings)
        except StackError as exc:
            raise FaultError(f"starting {name} failed: {exc}") from exc
        self.wait_healthy([name], timeout_s)
        return time.monotonic() - began

    # -- shape -------------------------------------------------------------------------------------

    def scale(self, service: str, instances: int) -> float:
        """Run ``instances`` of ``service`` (``genwire up --scale``); returns the seconds it took
        until all of them were ready (scaling down: until the extra ones stopped)."""
        began = time.monotonic()
        names = [instance_name(service, i) for i in range(1, instances + 1)]
        self.out(f"scale {service} to {instances}")
        try:
            manager.ensure_up(
                names, model=False, settings=self.settings, scale={service: instances}
            )
        except StackError as exc:
            raise FaultError(f"scaling {service} to {instances} failed: {exc}") from exc
        return time.monotonic() - began

    def reshape(self, brokers: int, timeout_s: float = 600.0) -> float:
        """Switch the stack to ``brokers`` Kafka nodes: stop what depends on Kafka, start the new
        layout (topics created with the cluster's replication). Returns the seconds it took."""
        began = time.monotonic()
        keep = {"redis", "triton"}
        dependent = [n for n in self.components if n not in keep]
        self.out(f"switching to {brokers} broker(s): stopping {', '.join(dependent)}")
        try:
            manager.check_environment(None)  # refused before the stop, not after it
            manager.down(dependent, settings=self.settings)
            manager.ensure_up(None, settings=self.settings, brokers=brokers)
        except StackError as exc:
            raise FaultError(f"switching to {brokers} broker(s) failed: {exc}") from exc
        self.wait_healthy(self.components, timeout_s)
        return time.monotonic() - began

    def layout(self) -> Mapping[str, int]:
        """Brokers and instances per scaled service, as recorded."""
        shape = manager.current_layout(self.settings)
        return {"brokers": shape.brokers, **dict(shape.scale)}

    # -- leaving it as found -----------------------------------------------------------------------

    def restore(self, grace_s: float = 60.0) -> list[str]:
        """Leave the stack as found: give every component ``grace_s`` to be ready, then start
        what is gone and restart what runs but stays unready. Returns what was wrong, with why.
        """
        wrong = self.preflight(grace_s)
        down = self.unhealthy()
        if not down:
            return wrong
        self.out(f"restoring {', '.join(wrong)}")
        try:
            manager.check_environment(down)  # refused before the stop, not after it
            running = [n for n in down if self.record(n) is not None]
            if running:
                manager.down(running, settings=self.settings)
            manager.ensure_up(down, settings=self.settings)
        except StackError as exc:
            raise FaultError(f"restoring {', '.join(down)} failed: {exc}") from exc
        self.wait_healthy(down, 240.0)
        return wrong


def _wait_gone(pid: int, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while pid_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)


__all__ = ["FaultError", "ProcessState", "StackControl"]
