"""The hypervisor's steal: the share of a virtual machine's CPU time its host took (the
``steal`` column of /proc/stat). A run that lost more of it ran slower, whatever the code;
both benchmarks report it per phase. And the rest of the machine: the CPU that processes a
benchmark does not measure used beside it (the model bench prints it per level: on two cores
an idle stack beside Triton moves its figures, docs/model.md *Round 21*). Standard library
only: the model bench imports it too."""

from __future__ import annotations

import os
from pathlib import Path

_BUSY = (0, 1, 2, 5, 6)  # user, nice, system, irq, softirq: not idle, iowait or steal
CLOCK_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
"""Clock ticks a second (USER_HZ): the unit of /proc/stat and of a process's CPU times."""


def _ticks(stat: Path) -> list[int] | None:
    """The first line's user … steal ticks, all CPUs (None where unreadable)."""
    try:
        fields = stat.read_text(encoding="ascii").split("\n", 1)[0].split()
    except OSError:
        return None
    if not fields or fields[0] != "cpu" or len(fields) < 9:
        return None
    try:
        return [int(f) for f in fields[1:9]]  # guest is inside user already
    except ValueError:
        return None


def cpu_times(stat: Path = Path("/proc/stat")) -> tuple[int, int] | None:
    """The machine's (steal, total) CPU time in clock ticks, all CPUs (None where unreadable)."""
    ticks = _ticks(stat)
    return None if ticks is None else (ticks[7], sum(ticks))


def stolen_pct(start: tuple[int, int] | None, end: tuple[int, int] | None) -> float | None:
    """Percent of the CPU time between two ``cpu_times`` readings that was stolen."""
    if start is None or end is None or end[1] <= start[1]:
        return None
    return round(100.0 * (end[0] - start[0]) / (end[1] - start[1]), 1)


def busy_s(stat: Path = Path("/proc/stat")) -> float | None:
    """The machine's busy CPU seconds so far, all CPUs (user, nice, system, irq, softirq; not
    idle, iowait or steal); None where unreadable."""
    ticks = _ticks(stat)
    return None if ticks is None else sum(ticks[i] for i in _BUSY) / CLOCK_TICKS


def rest_pct(start: float | None, end: float | None, own_s: float, seconds: float) -> float | None:
    """What the rest of the machine used over a span of ``seconds``, in % of one core: its busy
    seconds between two ``busy_s`` readings less ``own_s``, the CPU seconds of the processes
    measured on their own (floored at 0: the readings' clock ticks are 10 ms); None where
    either reading is missing or no time passed."""
    if start is None or end is None or seconds <= 0:
        return None
    return round(max(0.0, 100.0 * (end - start - own_s) / seconds), 1)
