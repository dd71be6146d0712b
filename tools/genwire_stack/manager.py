"""Bringing the native stack up and down: ``genwire up/down/status`` and the tests' fixtures.

``ensure_up`` is idempotent: what already runs (started by genwire, recorded in a pid file) is
reused, what is missing is installed and started, phase by phase, each waited on with health
polls. If anything fails, every process this call started is stopped again, so a failed run
leaves nothing half-started; the error is a :class:`StackError` with one line to show.

Every component genwire starts runs under a supervisor (:mod:`genwire_stack.supervise`): the pid
file holds the supervisor's pid, the supervisor's state file the server's own pid
(:func:`child_pid`) and how often it was restarted (:func:`restart_count`). SIGKILL the server
and its supervisor starts it again; ``down`` stops both.

The shape of the stack (Kafka brokers, instances per service) is recorded in the run dir
(:mod:`genwire_stack.layout`): ``ensure_up(brokers=3, scale={"preprocess": 3})`` changes it,
every later call reuses it.

What runs now (``status``, ``format_table``, ``child_pid``…) is read in
:mod:`genwire_stack.observe`, the default model is loaded by :mod:`genwire_stack.default_model`;
both stay importable from here.
"""

from __future__ import annotations

import os
import re
import sys
import time
from collections.abc import Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Literal

from genwire.settings import CommonSettings, ServiceSettings
from genwire.telemetry.setup import otel_refusals
from genwire_stack.adminkey import ensure_admin_key
from genwire_stack.components import (
    INFRA,
    SERVICES,
    Component,
    Readiness,
    Redis,
    Service,
    Triton,
    build_components,
    select_components,
)
from genwire_stack.default_model import DEFAULT_MODEL, Out, ensure_model_loaded, quiet
from genwire_stack.errors import StackError
from genwire_stack.health import last_words
from genwire_stack.layout import SCALABLE, StackLayout, read_layout, write_layout
from genwire_stack.observe import (
    ComponentStatus,
    child_pid,
    current_layout,
    format_table,
    kafka_bootstrap,
    restart_count,
    status,
    status_of,
    supervisor_state,
)
from genwire_stack.paths import StackPaths
from genwire_stack.process import (
    PidRecord,
    describe_pid,
    group_hides_fds,
    locked,
    pid_alive,
    port_free,
    port_holders,
    port_listened,
    read_record,
    records,
    remove_record,
    spawn,
    start_ticks,
    stop_orphan,
    supervised_argv,
    terminate,
    write_record,
)
from genwire_stack.process import supervisor_state as _read_supervisor_state
from genwire_stack.secure import SecureStack
from genwire_stack.servers import settings_class
from genwire_stack.statefile import SupervisorState, state_file
from genwire_stack.variables import unread_environment

MODEL_PHASE = 3
"""The default model is made and loaded after the infrastructure, before the services."""


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
    out: Out = quiet,
    catalog: Mapping[str, Component] | None = None,
    brokers: int | None = None,
    scale: Mapping[str, int] | None = None,
    secure: str | None = None,
) -> list[ComponentStatus]:
    """Make ``components`` (default: all) run and answer; returns their status rows.

    ``model`` (default: whenever Triton or a service is among ``components``) makes sure the default
    model is built and loaded into Triton before the services start. ``catalog`` replaces the
    standard components (tests use it for instances on other ports). ``brokers`` (1 or 3) and
    ``scale`` (instances per service, e.g. ``{"preprocess": 3}``) change the recorded layout
    first: extra instances beyond a smaller scale are stopped; a different broker count needs the
    Kafka-dependent components stopped (``down()``) first. ``secure`` (``tls``, ``mtls``,
    ``off``) switches the recorded security mode (:mod:`genwire_stack.secure`); like a broker
    count, only while nothing of the stack runs.
    """
    cfg = settings or CommonSettings()
    paths = StackPaths.from_settings(cfg)
    started: list[tuple[PidRecord, Component]] = []
    components = None if components is None else list(components)
    check_environment(components, out)  # before anything changes: the layout, a scale
    try:
        with locked(paths.run, _lock_out(out)):
            everything = _catalog_for_up(paths, cfg, catalog, brokers, scale, out, secure)
            chosen = select_components(everything, components)
            if model is None:
                # The services need the model, and a started Triton has none loaded.
                model = any(isinstance(c, (Service, Triton)) for c in chosen)
            # Pre-flight of everything before any download or start: a port held by a
            # stranger anywhere stops the run right here.
            plan = _plan(chosen, paths, out)
            _renew_secure_material(everything.values(), plan, paths)
            _bring_up([c for c in chosen if c.phase < MODEL_PHASE], paths, started, out)
            if any(c.name == "redis" for c in chosen) and catalog is None:
                # Auth is on by default: the first start creates (and saves) an admin key.
                ensure_admin_key(_redis_settings(cfg, everything), out)
        if model:
            # Outside the lock: building the model may take minutes (its package has its own
            # lock), and other sessions that only need the infrastructure must not wait on it.
            triton = everything.get("triton")
            if not isinstance(triton, Triton):
                raise StackError("the default model needs Triton, which is not in this stack")
            ensure_model_loaded(cfg, f"127.0.0.1:{triton.http_port}", out)
        with locked(paths.run, _lock_out(out)):
            _bring_up([c for c in chosen if c.phase > MODEL_PHASE], paths, started, out)
    except BaseException:
        for record, component in reversed(started):
            out(f"stopping {record.name} (started by this run)")
            _stop_record(paths, record, component.stop_timeout_s)
        raise
    return [status_of(c, paths) for c in chosen]


def _renew_secure_material(everything: Iterable[Component], plan: Plan, paths: StackPaths) -> None:
    """A secure stack's certificates near their end are made again here, where a component is
    about to start, under the stack lock, and nowhere else: each component reads them at its
    start, and the CA only while nothing of the stack runs (:meth:`SecureStack.ensure`). A
    lookup of the material elsewhere (a probe, ``genwire status``, a tool) never replaces it."""
    security = next(
        (s for c in everything if isinstance(s := getattr(c, "security", None), SecureStack)),
        None,
    )
    if security is None or "start" not in plan.values():
        return
    security.ensure(renew=True, running=sorted(_live_names(paths)))


def _lock_out(out: Out) -> Out | None:
    """Where waiting on another run's lock is said: the caller's ``out``, or stderr when the
    caller is quiet (a fixture waiting minutes on a ``make up`` must not look hung either)."""
    return None if out is quiet else out


def _redis_settings(cfg: CommonSettings, everything: Mapping[str, Component]) -> CommonSettings:
    """``cfg`` pointing at the stack's Redis: over TLS with its password when it is secure."""
    redis = everything.get("redis")
    if isinstance(redis, Redis) and redis.security is not None:
        return cfg.model_copy(update={"redis_url": redis.url})
    return cfg


def _catalog_for_up(
    paths: StackPaths,
    cfg: CommonSettings,
    catalog: Mapping[str, Component] | None,
    brokers: int | None,
    scale: Mapping[str, int] | None,
    out: Out,
    secure: str | None = None,
) -> dict[str, Component]:
    """The components to work with; applies a new layout (under the stack lock)."""
    if catalog is not None:
        if brokers is not None or scale or secure is not None:
            raise StackError(
                "brokers, scale and secure shape the standard stack, not a test catalog"
            )
        return dict(catalog)
    current = read_layout(paths.run)
    wanted = current.changed(brokers, scale, secure)
    if wanted.secure != current.secure:
        running = sorted(_live_names(paths))
        if running:
            was = current.secure or "plaintext"
            now = wanted.secure or "plaintext"
            raise StackError(
                f"the stack runs {was} ({', '.join(running)} running); to switch to {now}, stop "
                f"it first: `genwire down`, then `genwire up --secure {wanted.secure or 'off'}`"
            )
    if wanted.brokers != current.brokers:
        live = _live_names(paths)
        blocking = [
            name
            for name, c in build_components(paths, cfg, current).items()
            if name in live and c.name not in ("redis", "triton")
        ]
        blocking += [name for name in live if name not in build_components(paths, cfg, current)]
        if blocking:
            raise StackError(
                f"the stack runs with {current.brokers} Kafka broker"
                f"{'s' if current.brokers > 1 else ''} ({', '.join(sorted(set(blocking)))} "
                f"running); to switch to {wanted.brokers}, stop it first: `genwire down`, then "
                f"`genwire up --brokers {wanted.brokers}`"
            )
    if scale:
        _stop_extra_instances(paths, wanted, out)
    if wanted != current:
        write_layout(paths.run, wanted)
        out(f"layout: {wanted.describe()}")
    return build_components(paths, cfg, wanted)


def _live_names(paths: StackPaths) -> set[str]:
    return {r.name for r in records(paths.run) if r.alive()}


_INSTANCE = re.compile(r"^(?P<service>[a-z]+)-(?P<index>[0-9]+)$")


def _stop_extra_instances(paths: StackPaths, layout: StackLayout, out: Out) -> None:
    """Scaling down: stop ``preprocess-3`` when ``preprocess`` may have two instances now."""
    for record in records(paths.run):
        match = _INSTANCE.match(record.name)
        if match is None or match["service"] not in SCALABLE:
            continue
        if int(match["index"]) <= layout.instances(match["service"]):
            continue
        if _stop_record(paths, record, 20.0):
            out(
                f"stopped {record.name} (pid {record.pid}): {match['service']} scaled to "
                f"{layout.instances(match['service'])}"
            )


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
            # Stale: the process is gone. A supervisor killed outright may have left its server.
            if record.supervised and stop_orphan(paths.run, record):
                out(f"{component.name}: stopped the server its dead supervisor left running")
            remove_record(paths.run, component.name)
        plan[component.name] = _start_or_adopt(component, out)
    return plan


def _start_or_adopt(component: Component, out: Out) -> Literal["external", "start"]:
    """For a component genwire does not run: start it when its ports are free, reuse a server
    of its kind already answering there (an ``adoptable`` Redis), else refuse the port's
    holder."""
    conflict = _port_conflict(component)
    if conflict is None:
        return "start"
    if component.adoptable and component.healthy():
        out(f"{component.name}: reusing the one already running on {component.endpoints()}")
        return "external"
    raise StackError(conflict)


def check_environment(components: Iterable[str] | None = None, out: Out = quiet) -> None:
    """When ``components`` (default: all) include a service: refuse an environment that sets
    what the services would not read (a typo, a setting since removed): a service would stop
    at start on it, or, for a plain name one letter or so from a setting's, run without it;
    name the other plain names no genwire setting or tool reads (``genwire_stack.variables``).
    ``ensure_up`` calls it first; a caller that stops things before it (a restart) calls it
    before that."""
    if components is not None and not any(n.split("-")[0] in SERVICES for n in components):
        return
    classes = {short: cls for short in SERVICES if (cls := settings_class(short)) is not None}
    refused, unknown = unread_environment(os.environ, classes)
    if refused:
        raise StackError(
            "the environment sets what nothing reads: "
            + "; ".join(refused)
            + " (docs/settings.md): unset or rename it"
        )
    started = {
        short: cls
        for short, cls in classes.items()
        if components is None or any(n.split("-")[0] == short for n in components)
    }
    tracing = _otel_refusals(started)
    if tracing:
        raise StackError(
            "the services' tracing would stop at start on the environment: "
            + "; ".join(tracing)
            + " (docs/settings.md, OpenTelemetry's variables)"
        )
    for line in unknown:
        out(f"note: {line} (a service of your own may; docs/settings.md)")


def _otel_refusals(classes: Mapping[str, type[ServiceSettings]]) -> list[str]:
    """What the OpenTelemetry variables would stop (``otel_refusals``), once each, naming the
    services: the sampler's conflict with a ratio is only a service's whose ratio is set (its
    own prefix sets it too)."""
    plain = str(CommonSettings.model_config.get("env_prefix") or "").upper()
    names = {name.upper() for name in os.environ}
    stopped: dict[str, list[str]] = {}
    for short, cls in classes.items():
        own = str(cls.model_config.get("env_prefix") or "").upper()
        ratio = sorted(names & {f"{prefix}TRACES_SAMPLE_RATIO" for prefix in (plain, own)})
        for line in otel_refusals(os.environ, ratio_set=bool(ratio)):
            named = f"{line} ({', '.join(ratio)} set)" if ratio and "SAMPLE_RATIO" in line else line
            stopped.setdefault(named, []).append(short)
    return [f"{line} [{', '.join(services)}]" for line, services in stopped.items()]


def _launch(component: Component, paths: StackPaths) -> PidRecord:
    """Start ``component`` (under its supervisor when it has one) and record it."""
    argv = component.command()
    if component.supervised:
        hook = component.after_restart()
        argv = supervised_argv(
            component.name,
            argv,
            paths.run,
            python=sys.executable,
            stop_timeout_s=component.stop_timeout_s,
            ready_url=hook[0] if hook else None,
            after_ready=hook[1] if hook else None,
            unready=component.unready_restart(),
            probe_tls=component.probe_tls(),
            nice=component.nice(),
            restart_args=component.restart_arguments(),
        )
        # A state file left from an earlier run would be read as this start's exits.
        state_file(paths.run, component.name).unlink(missing_ok=True)
    env = {**os.environ, **component.environment()}
    record = spawn(
        component.name,
        argv,
        log_path=component.log,
        env=env,
        cwd=paths.home,
        supervised=component.supervised,
    )
    write_record(paths.run, record)
    return record


def _bring_up(
    group: list[Component],
    paths: StackPaths,
    started: list[tuple[PidRecord, Component]],
    out: Out,
) -> None:
    """Install what is missing, then start phase by phase, each waited on until ready."""
    plan = _plan(group, paths, quiet)
    _install_missing([c for c in group if plan[c.name] == "start"], out)
    for phase in sorted({c.phase for c in group}):
        members = [c for c in group if c.phase == phase]
        launched: dict[str, PidRecord] = {}
        for component in members:
            if plan[component.name] != "start":
                continue
            # Again, right before the start: the install (apt's postinst starting the distro's
            # redis-server) or an earlier phase's minutes may have put a server on the port.
            plan[component.name] = _start_or_adopt(component, out)
            if plan[component.name] != "start":
                continue
            component.prepare()
            out(f"starting {component.title} (log: {component.log})")
            new = _launch(component, paths)
            started.append((new, component))
            launched[component.name] = new
        for component in members:
            record = launched.get(component.name) or read_record(paths.run, component.name)
            began = time.monotonic()
            try:
                _await_ready(component, record, paths, fresh=component.name in launched)
            except _Vanished:
                # It ran when planned and died since (killed meanwhile): start it like any other.
                out(f"{component.name} stopped while waited on; starting it again")
                assert record is not None
                remove_record(paths.run, record.name)
                _plan([component], paths, out)
                component.prepare()
                new = _launch(component, paths)
                started.append((new, component))
                launched[component.name] = new
                _await_ready(component, new, paths, fresh=True)
            if component.name in launched:
                out(f"{component.name} healthy after {time.monotonic() - began:.1f} s")
            component.after_ready()


class _Vanished(StackError):
    """A component that ran when ``up`` planned it (not started by this run) died since."""


def _await_ready(
    component: Component, record: PidRecord | None, paths: StackPaths, *, fresh: bool
) -> None:
    """Poll until ``component`` is ready; fail at once if a fresh start exited, else after its
    start timeout, with one line naming it and why (its /readyz reason, its exits).

    A fresh start counts as ready only while its own server runs: a stranger that took the
    port (a distro ``redis-server`` started by apt) answers the probe just as well while ours
    exits with "Address already in use" and its supervisor restarts it again and again."""
    what = f"{component.name} ({component.title})"
    timeout_s = component.start_timeout_s
    deadline = time.monotonic() + timeout_s
    while True:
        state = (
            _read_supervisor_state(paths.run, component.name)
            if record is not None and record.supervised
            else None
        )
        if fresh and state is not None and (state.restarts > 0 or state.phase == "stopped"):
            # Exited since we started it, whoever answers the port now.
            raise StackError(_exited(what, component, state))
        verdict = component.readiness()
        stranger = _not_ours(component, record, state) if fresh and verdict.ready else None
        if verdict.ready and stranger is None:
            return
        if record is not None and not record.alive():
            # One last look: a process may exit right after becoming healthy (e.g. a daemon);
            # not a fresh supervisor's: it exits only when it gives up on its server.
            if (not fresh or not record.supervised) and component.readiness().ready:
                return
            if not fresh:
                raise _Vanished(f"{what} stopped while `genwire up` waited for it")
            # The supervisor gave up (``cannot run``): its state says why.
            final = _read_supervisor_state(paths.run, component.name) if record.supervised else None
            raise StackError(_exited(what, component, final))
        if time.monotonic() >= deadline:
            if stranger is not None:
                raise StackError(
                    f"{what} did not start within {timeout_s:.0f} s: its port answers, but "
                    f"{stranger}; see {component.log}"
                )
            raise StackError(_not_ready(component, verdict, state, timeout_s))
        time.sleep(0.25)


def _exited(what: str, component: Component, state: SupervisorState | None) -> str:
    """``<what> exited while starting (<how it last ended>); last error: …; full log: …``."""
    how = f" ({state.last_exit})" if state is not None and state.last_exit else ""
    return f"{what} exited while starting{how}{_last_words(component)}"


def _not_ours(
    component: Component, record: PidRecord | None, state: SupervisorState | None
) -> str | None:
    """Why a ready verdict after a fresh start may come from someone else (None: it is ours):
    its supervisor's server is not running (not yet, or exited), or a port that has listeners
    has none in its process group.

    The kernel's socket tables show every listener, whoever owns it; which process holds one
    is read from the processes' fds, which a non-root user cannot read for another user's
    (a distro ``redis-server``, ``docker-proxy``). Ours are readable (our user's, in the
    supervisor's group: the server and whatever it forks, Triton's stubs, uvicorn's workers),
    so a listener with no holder of ours in sight is someone else's. Nothing is claimed for a
    port nothing listens on (or tables that cannot be read), nor where a process of ours keeps
    its fds from us (non-dumpable: ``group_hides_fds``)."""
    if record is None:
        return None
    if record.supervised and _live_server(state) is None:
        return "the server genwire started does not run"
    if not record.supervised and not record.alive():
        return None  # the daemon case: judged by the caller
    group = record.pid  # spawn made it the leader of a group of its own
    for port in component.ports().values():
        if not port_listened(port):
            continue
        holders = port_holders(port)
        if not any(_group_of(pid) == group for pid in holders):
            if group_hides_fds(group):
                return None  # one of ours keeps its fds from us: nothing can be judged
            who = (
                ", ".join(describe_pid(pid) for pid in holders)
                or "a process genwire cannot see (another user's)"
            )
            return f"port {port} is held by {who}, which genwire did not start"
    return None


def _live_server(state: SupervisorState | None) -> int | None:
    """The pid of the supervisor's server when it runs now (checked by its start time)."""
    if state is None or state.child_pid is None:
        return None
    pid = state.child_pid
    return pid if pid_alive(pid) and start_ticks(pid) == state.child_start_ticks else None


def _group_of(pid: int) -> int | None:
    try:
        return os.getpgid(pid)
    except OSError:
        return None


def _last_words(component: Component) -> str:
    return f"; {last_words(component.log)}; full log: {component.log}"


def _not_ready(
    component: Component, verdict: Readiness, state: SupervisorState | None, timeout_s: float
) -> str:
    if verdict.answered:
        return (
            f"{component.name} runs but is not ready after {timeout_s:.0f} s: "
            f"{verdict.reason or 'no reason given'}; see {component.log}"
        )
    if state is not None and state.restarts > 0:
        return (
            f"{component.name} keeps exiting ({state.restarts} restart"
            f"{'s' if state.restarts > 1 else ''}, last: {state.last_exit})"
            f"{_last_words(component)}"
        )
    return (
        f"{component.name} ({component.title}) did not become healthy within {timeout_s:.0f} s; "
        f"see {component.log}"
    )


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


def down(
    components: Iterable[str] | None = None,
    *,
    settings: CommonSettings | None = None,
    out: Out = quiet,
    catalog: Mapping[str, Component] | None = None,
) -> list[str]:
    """Stop what genwire started (by pid file; services first); returns the names stopped.

    ``down()`` of the whole standard stack also stops whatever else this home's run dir records
    (an instance of an earlier scale, one a test or the chaos suite started), and keeps the
    layout for the next ``ensure_up``.
    """
    cfg = settings or CommonSettings()
    paths = StackPaths.from_settings(cfg)
    everything = dict(catalog) if catalog is not None else build_components(paths, cfg)
    chosen = select_components(everything, components)
    stopped: list[str] = []
    with locked(paths.run, _lock_out(out)):
        if components is None and catalog is None:
            for leftover in records(paths.run):
                if leftover.name not in everything and _stop_record(paths, leftover, 30.0):
                    stopped.append(leftover.name)
                    out(f"stopped {leftover.name} (pid {leftover.pid})")
        for component in sorted(chosen, key=lambda c: -c.phase):
            record = read_record(paths.run, component.name)
            if record is None:
                continue
            if _stop_record(paths, record, component.stop_timeout_s):
                stopped.append(component.name)
                out(f"stopped {component.name} (pid {record.pid})")
    return stopped


def _stop_record(paths: StackPaths, record: PidRecord, stop_timeout_s: float) -> bool:
    """Stop what ``record`` started (a supervisor: it and its server) and forget it."""
    # A supervisor gets its own stop timeout to stop the server, plus a margin for itself.
    timeout_s = stop_timeout_s + 10.0 if record.supervised else max(stop_timeout_s, 30.0)
    stopped = terminate(record, timeout_s=timeout_s)
    if not stopped and record.supervised:
        stopped = stop_orphan(paths.run, record)
    remove_record(paths.run, record.name)
    return stopped


__all__ = [
    "DEFAULT_MODEL",
    "INFRA",
    "SERVICES",
    "ComponentStatus",
    "child_pid",
    "current_layout",
    "down",
    "ensure_model_loaded",
    "ensure_up",
    "format_table",
    "kafka_bootstrap",
    "restart_count",
    "status",
    "supervisor_state",
]
