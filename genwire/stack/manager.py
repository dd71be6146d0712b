"""Bringing the native stack up and down: ``genwire up/down/status`` and the tests' fixtures.

``ensure_up`` is idempotent: what already runs (started by genwire, recorded in a pid file) is
reused, what is missing is installed and started, phase by phase, each waited on with health
polls. If anything fails, every process this call started is stopped again, so a failed run
leaves nothing half-started; the error is a :class:`StackError` with one line to show.
"""

from __future__ import annotations

import importlib
import os
import time
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Literal

from genwire.settings import CommonSettings
from genwire.stack.components import INFRA, SERVICES, Component, Triton, build_components
from genwire.stack.errors import StackError
from genwire.stack.health import http_status, wait_until
from genwire.stack.paths import StackPaths
from genwire.stack.process import (
    PidRecord,
    describe_pid,
    locked,
    port_free,
    port_holders,
    read_record,
    remove_record,
    spawn,
    terminate,
    write_record,
)

DEFAULT_MODEL = "genwire-gpt"
MODEL_PHASE = 3
"""The default model is made and loaded after the infrastructure, before the services."""

Out = Callable[[str], None]
State = Literal["running", "external", "stopped", "unhealthy"]


def _quiet(_: str) -> None:
    return None


@dataclass(frozen=True)
class ComponentStatus:
    """One row of ``genwire status``."""

    name: str
    title: str
    state: State
    pid: int | None
    endpoints: str
    log: str


def _select(
    all_components: Mapping[str, Component], names: Iterable[str] | None
) -> list[Component]:
    if names is None:
        return list(all_components.values())
    wanted = list(dict.fromkeys(names))
    unknown = [n for n in wanted if n not in all_components]
    if unknown:
        raise StackError(
            f"unknown component(s) {', '.join(unknown)}: choose from {', '.join(all_components)}"
        )
    return [c for name, c in all_components.items() if name in wanted]


def _port_conflict(component: Component) -> str | None:
    for role, port in component.ports().items():
        if port_free(port):
            continue
        holders = [pid for pid in port_holders(port) if pid != os.getpid()] or port_holders(port)
        who = ", ".join(describe_pid(pid) for pid in holders) or "another process"
        return (
            f"port {port} ({component.name} {role}) is already in use by {who}, which genwire "
            f"did not start: stop it or free the port, then run `make up` again"
        )
    return None


def ensure_up(
    components: Iterable[str] | None = None,
    *,
    model: bool | None = None,
    settings: CommonSettings | None = None,
    out: Out = _quiet,
    catalog: Mapping[str, Component] | None = None,
) -> list[ComponentStatus]:
    """Make ``components`` (default: all) run and answer; returns their status rows.

    ``model`` (default: whenever Triton or a service is among ``components``) makes sure the default
    model is built and loaded into Triton before the services start. ``catalog`` replaces the
    standard components (tests use it for instances on other ports).
    """
    cfg = settings or CommonSettings()
    paths = StackPaths.from_settings(cfg)
    everything = dict(catalog) if catalog is not None else build_components(paths, cfg)
    chosen = _select(everything, components)
    if model is None:
        # The services need the model, and a (re)started Triton has none loaded.
        model = any(c.name in SERVICES or isinstance(c, Triton) for c in chosen)
    started: list[PidRecord] = []
    try:
        with locked(paths.run):
            # Pre-flight of everything before any download or start: a port held by a
            # stranger anywhere stops the run right here.
            _plan(chosen, paths, out)
            _bring_up([c for c in chosen if c.phase < MODEL_PHASE], paths, started, out)
        if model:
            # Outside the lock: building the model may take minutes (its package has its own
            # lock), and other sessions that only need the infrastructure must not wait on it.
            triton = everything.get("triton")
            if not isinstance(triton, Triton):
                raise StackError("the default model needs Triton, which is not in this stack")
            ensure_model_loaded(cfg, f"127.0.0.1:{triton.http_port}", out)
        with locked(paths.run):
            _bring_up([c for c in chosen if c.phase > MODEL_PHASE], paths, started, out)
    except BaseException:
        for record in reversed(started):
            out(f"stopping {record.name} (started by this run)")
            terminate(record)
            remove_record(paths.run, record.name)
        raise
    return [_status_of(c, paths) for c in chosen]


Plan = dict[str, Literal["ours", "external", "start"]]


def _plan(chosen: list[Component], paths: StackPaths, out: Out) -> Plan:
    """What to do with each component: reuse ours, reuse a stranger's (Redis), or start it."""
    plan: Plan = {}
    for component in chosen:
        record = read_record(paths.run, component.name)
        if record is not None and record.alive():
            plan[component.name] = "ours"
            continue
        if record is not None:
            remove_record(paths.run, component.name)  # stale: the process is gone
        conflict = _port_conflict(component)
        if conflict is None:
            plan[component.name] = "start"
        elif component.adoptable and component.healthy():
            plan[component.name] = "external"
            out(f"{component.name}: reusing the one already running on {component.endpoints()}")
        else:
            raise StackError(conflict)
    return plan


def _bring_up(
    group: list[Component], paths: StackPaths, started: list[PidRecord], out: Out
) -> None:
    """Install what is missing, then start phase by phase, each waited on until healthy."""
    plan = _plan(group, paths, _quiet)
    _install_missing([c for c in group if plan[c.name] == "start"], out)
    for phase in sorted({c.phase for c in group}):
        members = [c for c in group if c.phase == phase]
        launched: dict[str, PidRecord] = {}
        for component in members:
            if plan[component.name] != "start":
                continue
            component.prepare()
            out(f"starting {component.title} (log: {component.log})")
            env = {**os.environ, **component.environment()}
            new = spawn(
                component.name,
                component.command(),
                log_path=component.log,
                env=env,
                cwd=paths.home,
            )
            write_record(paths.run, new)
            started.append(new)
            launched[component.name] = new
        for component in members:
            record = launched.get(component.name) or read_record(paths.run, component.name)
            began = time.monotonic()
            wait_until(
                component.healthy,
                what=f"{component.name} ({component.title})",
                timeout_s=component.start_timeout_s,
                still_running=record.alive if record is not None else None,
                log=component.log,
            )
            if component.name in launched:
                out(f"{component.name} healthy after {time.monotonic() - began:.1f} s")
            component.after_ready()


def _install_missing(to_start: list[Component], out: Out) -> None:
    """Install in parallel: the Jaeger build is CPU-bound, the downloads mostly wait on I/O."""
    missing = [c for c in to_start if not c.installed()]
    if not missing:
        return
    for component in missing:
        out(f"installing {component.title} (log: {component.log})")

    def install(component: Component) -> float:
        began = time.monotonic()
        component.install()
        if not component.installed():
            raise StackError(f"installing {component.name} left it incomplete; see {component.log}")
        return time.monotonic() - began

    with ThreadPoolExecutor(max_workers=len(missing)) as pool:
        futures = {c.name: pool.submit(install, c) for c in missing}
        errors: list[BaseException] = []
        for name, future in futures.items():
            try:
                out(f"installed {name} in {future.result():.0f} s")
            except BaseException as exc:
                errors.append(exc)
        if errors:
            raise errors[0]


def ensure_model_loaded(
    cfg: CommonSettings, triton_http: str | None = None, out: Out = _quiet
) -> str | None:
    """Build the default model if missing (the model package does), then load it into Triton.

    ``triton_http`` is Triton's HTTP ``host:port`` (default: the settings'). Returns the model
    version, or None when the model package is not there yet.
    """
    try:
        module = importlib.import_module("genwire_inference.model")
        make = module.ensure_default_model
    except (ModuleNotFoundError, AttributeError) as exc:
        out(f"default model: skipped, genwire_inference.model has no ensure_default_model ({exc})")
        return None
    base = f"http://{triton_http or cfg.triton_http_url}"
    began = time.monotonic()
    try:
        version = str(make(cfg))
    except StackError:
        raise
    except ModuleNotFoundError as exc:
        if not (exc.name or "").startswith("genwire_inference.model"):
            raise StackError(f"building the default model failed: {exc!r}") from exc
        # The model package is still being written: bring the rest up without it.
        out(f"default model: skipped, the model package is incomplete ({exc})")
        return None
    except Exception as exc:
        raise StackError(
            f"building the default model failed: {exc!r}; see the output above, fix, then "
            "`make up` again"
        ) from exc
    if http_status(f"{base}/v2/models/{DEFAULT_MODEL}/versions/{version}/ready") == 200:
        return version
    out(f"loading {DEFAULT_MODEL} (version {version}) into Triton at {base}")
    status, detail = _post(f"{base}/v2/repository/models/{DEFAULT_MODEL}/load", timeout_s=600.0)
    if status != 200:
        raise StackError(
            f"Triton refused to load {DEFAULT_MODEL} version {version} (HTTP {status}: "
            f"{detail[:200]}); see Triton's log"
        )
    wait_until(
        lambda: http_status(f"{base}/v2/models/{DEFAULT_MODEL}/versions/{version}/ready") == 200,
        what=f"model {DEFAULT_MODEL} version {version}",
        timeout_s=120.0,
    )
    out(f"{DEFAULT_MODEL} version {version} ready after {time.monotonic() - began:.1f} s")
    return version


def _post(url: str, timeout_s: float) -> tuple[int | None, str]:
    import httpx

    try:
        with httpx.Client(timeout=timeout_s, trust_env=False) as client:
            response = client.post(url)
            return response.status_code, response.text
    except httpx.HTTPError as exc:
        return None, str(exc)


def down(
    components: Iterable[str] | None = None,
    *,
    settings: CommonSettings | None = None,
    out: Out = _quiet,
    catalog: Mapping[str, Component] | None = None,
) -> list[str]:
    """Stop what genwire started (by pid file; services first); returns the names stopped."""
    cfg = settings or CommonSettings()
    paths = StackPaths.from_settings(cfg)
    everything = dict(catalog) if catalog is not None else build_components(paths, cfg)
    chosen = _select(everything, components)
    stopped: list[str] = []
    with locked(paths.run):
        for component in sorted(chosen, key=lambda c: -c.phase):
            record = read_record(paths.run, component.name)
            if record is None:
                continue
            if terminate(record, timeout_s=30.0):
                stopped.append(component.name)
                out(f"stopped {component.name} (pid {record.pid})")
            remove_record(paths.run, component.name)
    return stopped


def status(
    components: Iterable[str] | None = None,
    *,
    settings: CommonSettings | None = None,
    catalog: Mapping[str, Component] | None = None,
) -> list[ComponentStatus]:
    """What runs now, one row per component."""
    cfg = settings or CommonSettings()
    paths = StackPaths.from_settings(cfg)
    everything = dict(catalog) if catalog is not None else build_components(paths, cfg)
    return [_status_of(c, paths) for c in _select(everything, components)]


def _status_of(component: Component, paths: StackPaths) -> ComponentStatus:
    record = read_record(paths.run, component.name)
    ours = record is not None and record.alive()
    first_port = next(iter(component.ports().values()))
    healthy = component.healthy() if ours or not port_free(first_port) else False
    state: State
    if ours:
        state = "running" if healthy else "unhealthy"
    else:
        state = "external" if healthy else "stopped"
    return ComponentStatus(
        name=component.name,
        title=component.title,
        state=state,
        pid=record.pid if ours and record is not None else None,
        endpoints=component.endpoints(),
        log=str(component.log),
    )


def format_table(rows: Iterable[ComponentStatus]) -> str:
    """A plain-text table: component, state, pid, where to reach it, its log."""
    header = ("component", "state", "pid", "endpoints", "log")
    lines = [(r.name, r.state, str(r.pid or "-"), r.endpoints, r.log) for r in rows]
    widths = [max(len(row[i]) for row in [header, *lines]) for i in range(len(header))]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    return "\n".join(fmt.format(*row).rstrip() for row in [header, *lines])


__all__ = [
    "DEFAULT_MODEL",
    "INFRA",
    "SERVICES",
    "ComponentStatus",
    "down",
    "ensure_model_loaded",
    "ensure_up",
    "format_table",
    "status",
]
