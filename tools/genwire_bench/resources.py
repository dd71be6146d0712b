"""CPU and memory of each service while a phase runs (psutil, process trees by listening port)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from genwire_bench.steal import CLOCK_TICKS

# Where each component listens (docs/architecture.md); the first port found wins.
SERVICE_PORTS: dict[str, tuple[int, ...]] = {
    "gateway": (50051, 8080),
    "preprocess": (8091,),
    "inference": (8092,),
    "postprocess": (8093,),
    "monitor": (8090,),
    "triton": (8001, 8000),
    "kafka": (9092,),
    "redis": (6379,),
    "jaeger": (16686,),
}


def from_pid_files(run_dir: Path) -> dict[str, psutil.Process]:
    """The stack's components from its pid files (``<name>.pid``: JSON with ``pid``)."""
    found: dict[str, psutil.Process] = {}
    for path in sorted(run_dir.glob("*.pid")) if run_dir.is_dir() else []:
        try:
            text = path.read_text()
            pid = int(json.loads(text)["pid"]) if text.lstrip().startswith("{") else int(text)
            found[path.stem] = psutil.Process(pid)
        except (OSError, ValueError, KeyError, TypeError, psutil.Error):
            continue
    return found


def from_ports(ports: Mapping[str, tuple[int, ...]] = SERVICE_PORTS) -> dict[str, psutil.Process]:
    """The process listening on each service's port (services not running are left out)."""
    listening: dict[int, int] = {}
    with contextlib.suppress(psutil.AccessDenied):
        for conn in psutil.net_connections(kind="tcp"):
            if conn.status == psutil.CONN_LISTEN and conn.pid and conn.laddr:
                listening.setdefault(conn.laddr.port, conn.pid)
    found: dict[str, psutil.Process] = {}
    for name, candidates in ports.items():
        for port in candidates:
            if port in listening:
                with contextlib.suppress(psutil.Error):
                    found[name] = psutil.Process(listening[port])
                break
    return found


def _tree_pids(proc: psutil.Process) -> set[int]:
    try:
        return {proc.pid, *(c.pid for c in proc.children(recursive=True))}
    except psutil.Error:
        return {proc.pid}


def discover(
    run_dir: Path | None = None, ports: Mapping[str, tuple[int, ...]] = SERVICE_PORTS
) -> dict[str, psutil.Process]:
    """Every running component: the stack's pid files first, then listeners on known ports.

    A listener already inside a pid-file process tree is not counted twice.
    """
    found = from_pid_files(run_dir) if run_dir is not None else {}
    covered = set().union(*(_tree_pids(p) for p in found.values())) if found else set()
    for name, proc in from_ports(ports).items():
        if proc.pid not in covered and name not in found:
            found[name] = proc
            covered |= _tree_pids(proc)
    return found


@dataclass(frozen=True)
class Usage:
    """One service's process tree over a phase: CPU (100 % = one core) and resident memory."""

    pids: tuple[int, ...]
    cpu_percent: float
    cpu_peak_percent: float
    rss_peak_mb: float
    rss_mean_mb: float
    cpu_s: float = 0.0
    """CPU seconds the tree used over the phase (user + system)."""
    instances: int = 1
    """How many instances (``preprocess``, ``preprocess-2``…) :func:`by_service` summed."""
    wall_s: float = 0.0
    """Seconds the phase's sampling covered."""
    jit_cpu_s: float | None = None
    """Of ``cpu_s``, the seconds a JVM's JIT compiler threads used (the Kafka broker's; None:
    no JVM in the tree): a broker still compiling its hot code costs more per request than a
    warm one (docs/benchmarks.md, *The broker's side*)."""
    jit_peak_share: float | None = None
    """The largest share of one process tree's CPU its JIT took, over the instances and rounds
    summed here (a restarted broker beside warm ones); trees that used under
    ``JIT_MIN_CPU_S`` are left out (None: none measured)."""
    fork_cpu_s: float | None = None
    """Of ``cpu_s``, the seconds Redis's forked children used (``REDIS_CHILDREN``: a snapshot
    or an append-only file rewrite, each writing the whole data set; None: none seen)."""


REDIS_CHILDREN = ("redis-rdb-bgsave", "redis-aof-rewrite")
"""The titles Redis gives its forked children (their command line's first word; the process
name stays ``redis-server``): a snapshot (``BGSAVE``, a ``save`` schedule) or an AOF rewrite."""


def is_redis_child(proc: psutil.Process) -> bool:
    """Whether ``proc`` is one of Redis's forked children: titled so, or (a Redis whose
    ``set-proc-title`` is off) a ``redis-server`` whose parent is one."""
    cmdline = proc.cmdline()
    if cmdline and cmdline[0].startswith(REDIS_CHILDREN):
        return True
    if proc.name() != "redis-server":
        return False
    parent = proc.parent()
    return parent is not None and parent.name() == "redis-server"


def started_ticks(pid: int, proc: Path = Path("/proc")) -> int | None:
    """When process ``pid`` started, in clock ticks since boot (/proc's own field, exact to a
    tick; psutil's ``create_time`` adds it to a boot time rounded down to the second)."""
    try:
        fields = (proc / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()
        return int(fields[19])  # starttime, the 22nd field of the whole line
    except (OSError, ValueError, IndexError):
        return None


def now_ticks() -> float:
    """Now, in clock ticks since boot (the clock ``started_ticks`` reads)."""
    return time.clock_gettime(time.CLOCK_BOOTTIME) * CLOCK_TICKS


JIT_THREADS = ("C1 CompilerThre", "C2 CompilerThre")
"""HotSpot's compiler threads as /proc names them (``C2 CompilerThread0``, cut to 15 bytes)."""

JIT_MIN_CPU_S = 0.5
"""Below this much CPU in a phase a JIT share is not computed: thread times come in clock ticks
(10 ms), so one tick of a nearly idle broker would read as a large share."""

JIT_WARNING_SHARE = 0.3
"""A Kafka broker whose JIT compiler took more of its CPU than this in a phase is still warming
up. Warm, under load, its compiler took 4–26 % here; fresh, 47–69 %, and a fresh broker costs
up to four times its warm figure per request for its first few thousand requests
(docs/benchmarks.md, *The broker's side*)."""


def jit_seconds(pid: int, proc: Path = Path("/proc")) -> dict[int, float]:
    """CPU seconds of each JIT compiler thread of process ``pid`` (thread id → seconds).

    HotSpot starts and stops compiler threads as its queue grows and shrinks
    (``UseDynamicNumberOfCompilerThreads``), so a caller samples this often and keeps what it saw
    of threads that have gone. Empty where ``pid`` has none or /proc is unreadable.
    """
    out: dict[int, float] = {}
    try:
        tasks = list((proc / str(pid) / "task").iterdir())
    except OSError:
        return out
    for task in tasks:
        try:
            if (task / "comm").read_text().strip() not in JIT_THREADS:
                continue
            # Fields after the command's closing parenthesis: utime and stime are 12th and 13th.
            fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
            out[int(task.name)] = (int(fields[11]) + int(fields[12])) / CLOCK_TICKS
        except (OSError, ValueError, IndexError):
            continue
    return out


@dataclass
class _Tree:
    root: psutil.Process
    cpu_first: dict[int, float] = field(default_factory=dict)
    cpu_last: dict[int, float] = field(default_factory=dict)
    rss: list[float] = field(default_factory=list)
    peaks: list[float] = field(default_factory=list)
    pids: set[int] = field(default_factory=set)
    recursive: bool = True
    jit_first: dict[int, float] = field(default_factory=dict)
    jit_last: dict[int, float] = field(default_factory=dict)
    jvms: dict[int, bool] = field(default_factory=dict)
    started: float | None = None
    """The first sample's time, in clock ticks since boot: a process started after it ran only
    in the phase."""
    forks: set[int] = field(default_factory=set)

    def members(self) -> list[psutil.Process]:
        if not self.recursive:
            return [self.root]
        try:
            return [self.root, *self.root.children(recursive=True)]
        except psutil.Error:
            return []

    def sample(self) -> float:
        """Record RSS and CPU times of the tree; returns its CPU seconds so far."""
        first_sample = self.started is None
        if self.started is None:
            self.started = now_ticks()
        rss = 0.0
        for proc in self.members():
            known = proc.pid in self.cpu_first
            born = None if known or first_sample else started_ticks(proc.pid)
            try:
                with proc.oneshot():
                    times = proc.cpu_times()
                    rss += proc.memory_info().rss
                    forked = not known and is_redis_child(proc)
            except psutil.Error:
                continue
            cpu = times.user + times.system
            # A child started since the first sample (a Redis fork) used all of its CPU in the
            # phase, the part before it was first seen included.
            new = born is not None and born > self.started
            self.cpu_first.setdefault(proc.pid, 0.0 if new else cpu)
            if forked:
                self.forks.add(proc.pid)
            self.cpu_last[proc.pid] = cpu
            self.pids.add(proc.pid)
            if self._is_jvm(proc):
                for tid, seconds in jit_seconds(proc.pid).items():
                    # As the process's CPU: counted from when it was first seen, or from its
                    # start if that was in the phase. A new thread of a process seen before
                    # started since: all of its time is in the phase too.
                    self.jit_first.setdefault(tid, 0.0 if known or new else seconds)
                    self.jit_last[tid] = seconds
        self.rss.append(rss / 2**20)
        return self.cpu_used()

    def _is_jvm(self, proc: psutil.Process) -> bool:
        known = self.jvms.get(proc.pid)
        if known is None:
            try:
                known = proc.name() == "java"
            except psutil.Error:
                known = False
            self.jvms[proc.pid] = known
        return known

    def cpu_used(self) -> float:
        return sum(self.cpu_last[p] - self.cpu_first[p] for p in self.cpu_last)

    def fork_used(self) -> float | None:
        if not self.forks:
            return None
        return sum(self.cpu_last[p] - self.cpu_first[p] for p in self.forks)

    def jit_used(self) -> float | None:
        if not any(self.jvms.values()):  # no JVM sampled: not measured, not 0
            return None
        return sum(self.jit_last[t] - self.jit_first[t] for t in self.jit_last)

    def jit_share(self) -> float | None:
        jit, cpu = self.jit_used(), self.cpu_used()
        return None if jit is None or cpu < JIT_MIN_CPU_S else jit / cpu


OWN = "bench"
"""The benchmark client's entry: its process alone. Services it starts (``--scaling`` scales the
stack) are its children but are counted as themselves, through their pid files."""


class ResourceSampler:
    """Samples the given process trees every ``interval_s`` between ``start`` and ``stop``."""

    def __init__(self, processes: Mapping[str, psutil.Process], interval_s: float = 0.5) -> None:
        self._trees = {name: _Tree(proc, recursive=name != OWN) for name, proc in processes.items()}
        self._interval = interval_s
        self._task: asyncio.Task[None] | None = None
        self._t0 = 0.0
        self._t_last = 0.0

    def _sample_all(self) -> None:
        now = time.monotonic()
        for tree in self._trees.values():
            before = tree.cpu_used()
            after = tree.sample()
            if self._t_last and now > self._t_last:
                tree.peaks.append((after - before) / (now - self._t_last) * 100.0)
        self._t_last = now

    async def _loop(self) -> None:
        while True:
            await asyncio.to_thread(self._sample_all)
            await asyncio.sleep(self._interval)

    def start(self) -> None:
        """Take the first sample now and keep sampling in the background."""
        self._t0 = time.monotonic()
        self._sample_all()
        self._task = asyncio.create_task(self._loop())

    async def stop(self) -> dict[str, Usage]:
        """Take a last sample; per service, average CPU over the phase and peak RSS."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self._sample_all()
        wall = max(time.monotonic() - self._t0, 1e-9)
        out = {}
        for name, tree in self._trees.items():
            if not tree.rss:
                continue
            out[name] = Usage(
                pids=tuple(sorted(tree.pids)),
                cpu_percent=tree.cpu_used() / wall * 100.0,
                cpu_peak_percent=max(tree.peaks, default=0.0),
                rss_peak_mb=max(tree.rss),
                rss_mean_mb=sum(tree.rss) / len(tree.rss),
                cpu_s=tree.cpu_used(),
                wall_s=wall,
                jit_cpu_s=tree.jit_used(),
                jit_peak_share=tree.jit_share(),
                fork_cpu_s=tree.fork_used(),
            )
        return out


_INSTANCE = re.compile(r"^(?P<service>.+)-(?P<index>[0-9]+)$")


def service_of(name: str) -> str:
    """The service an instance's name belongs to: ``preprocess-2`` → ``preprocess``."""
    match = _INSTANCE.match(name)
    return match["service"] if match else name


def sum_known(values: Iterable[float | None]) -> float | None:
    """The sum of the values that are not None (None when every one is)."""
    known = [v for v in values if v is not None]
    return sum(known) if known else None


def max_known(values: Iterable[float | None]) -> float | None:
    """The largest value that is not None (None when every one is)."""
    return max((v for v in values if v is not None), default=None)


def by_service(usage: Mapping[str, Usage]) -> dict[str, Usage]:
    """Instances of one service (``gateway``, ``gateway-2``… or ``kafka-1``…) as one entry.

    CPU (mean, peak and seconds) is summed over the instances: what the service costs in all.
    RSS stays per process tree: the largest instance's peak and mean, so the per-service memory
    target still reads per process.
    """
    groups: dict[str, list[Usage]] = {}
    for name, one in usage.items():
        groups.setdefault(service_of(name), []).append(one)
    return {
        name: Usage(
            pids=tuple(sorted(p for u in items for p in u.pids)),
            cpu_percent=sum(u.cpu_percent for u in items),
            cpu_peak_percent=sum(u.cpu_peak_percent for u in items),
            rss_peak_mb=max(u.rss_peak_mb for u in items),
            rss_mean_mb=max(u.rss_mean_mb for u in items),
            cpu_s=sum(u.cpu_s for u in items),
            instances=sum(u.instances for u in items),
            wall_s=max(u.wall_s for u in items),
            jit_cpu_s=sum_known(u.jit_cpu_s for u in items),
            jit_peak_share=max_known(u.jit_peak_share for u in items),
            fork_cpu_s=sum_known(u.fork_cpu_s for u in items),
        )
        for name, items in groups.items()
    }


def own_process() -> psutil.Process:
    """The benchmark client itself (it shares the cores with what it measures)."""
    return psutil.Process(os.getpid())
