"""The hypervisor's steal: the share of a virtual machine's CPU time its host took (the
``steal`` column of /proc/stat). A run that lost more of it ran slower, whatever the code;
both benchmarks report it per phase. Standard library only: the model bench imports it too."""

from __future__ import annotations

from pathlib import Path


def cpu_times(stat: Path = Path("/proc/stat")) -> tuple[int, int] | None:
    """The machine's (steal, total) CPU time in clock ticks, all CPUs (None where unreadable)."""
    try:
        fields = stat.read_text(encoding="ascii").split("\n", 1)[0].split()
    except OSError:
        return None
    if not fields or fields[0] != "cpu" or len(fields) < 9:
        return None
    try:
        ticks = [int(f) for f in fields[1:9]]  # user … steal; guest is inside user already
    except ValueError:
        return None
    return ticks[7], sum(ticks)


def stolen_pct(start: tuple[int, int] | None, end: tuple[int, int] | None) -> float | None:
    """Percent of the CPU time between two ``cpu_times`` readings that was stolen."""
    if start is None or end is None or end[1] <= start[1]:
        return None
    return round(100.0 * (end[0] - start[0]) / (end[1] - start[1]), 1)
