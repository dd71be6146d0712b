"""Where the decode loop's thread spent a benchmark level: on a CPU, runnable but waiting for
one, or asleep (waiting for work).

Both sides of ``genwire model bench --in-process`` run the same scheduler, whose decode thread
does every pass and every sampling step. Its output tokens per second are exactly its share of
a CPU (on-CPU time over the wall time) divided by its CPU time per token, so Triton's share of
the in-process figure splits into two factors: how much of a CPU the loop got (the scheduler
kept it waiting behind Triton's server, the client and the stub's other threads on the same
cores, or it had no work) and how much CPU each token cost it. The first is read from the
kernel's own accounting (``/proc/<pid>/task/<tid>/schedstat``: nanoseconds on a CPU, nanoseconds
runnable on a run queue, time slices), so it does not move with the host's speed the way
tokens per second do. Standard library only.

The loop's thread is found, not named: the busiest thread of the processes over the level
(Python does not name OS threads, and the stub's are Triton's). With the default model nothing
else comes close: the stub's other threads (``execute``, the outbox) used 7–14 % of the stub's
CPU at concurrency 1, 8 and 32 (docs/model.md, *Round 20*), and in process the other threads
wait. A model whose decode step costs no more than handling a request (the tests' tiny one)
can have another thread busiest.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Iterable
from pathlib import Path

SPLIT = ("on_cpu_pct", "waiting_pct", "asleep_pct")
"""The keys of ``busiest``'s split of the wall time, in percent."""


@dataclasses.dataclass(frozen=True)
class ThreadTimes:
    """One reading of the threads of some processes: ``(pid, tid)`` → (ns on a CPU, ns
    runnable waiting for a CPU, time slices), and when it was taken (``time.monotonic_ns``)."""

    at_ns: int
    threads: dict[tuple[int, int], tuple[int, int, int]]


def read(pids: Iterable[int], proc: Path = Path("/proc")) -> ThreadTimes:
    """Every thread of ``pids`` (a process or thread that is gone, or a kernel without
    schedstat, is left out)."""
    at_ns = time.monotonic_ns()
    threads: dict[tuple[int, int], tuple[int, int, int]] = {}
    for pid in pids:
        try:
            tids = [int(t.name) for t in (proc / str(pid) / "task").iterdir() if t.name.isdigit()]
        except OSError:
            continue
        for tid in tids:
            try:
                fields = (proc / str(pid) / "task" / str(tid) / "schedstat").read_text().split()
                threads[(pid, tid)] = (int(fields[0]), int(fields[1]), int(fields[2]))
            except (OSError, ValueError, IndexError):
                continue
    return ThreadTimes(at_ns, threads)


def busiest(start: ThreadTimes, end: ThreadTimes, tokens: int) -> dict[str, float] | None:
    """The thread with the most CPU time between the readings, as percentages of the wall time
    between them (``on_cpu_pct``, ``waiting_pct``: runnable, on a run queue; ``asleep_pct``: the
    rest), its time slices per second, its CPU time (``cpu_ms``), the tokens it is priced over
    and its CPU per output token (``core_ms_per_token``; NaN without tokens), and its ids; None
    when no thread was read twice or nothing ran.

    The kernel brings a running thread's figures up to date at its ticks, so over a short span
    on a CPU can read a little above 100 %: it is kept as read (tokens per second stay exactly
    on a CPU over CPU per token), and asleep is then 0."""
    wall_ns = end.at_ns - start.at_ns
    deltas = [
        (after[0] - before[0], after[1] - before[1], after[2] - before[2], key)
        for key, after in end.threads.items()
        if (before := start.threads.get(key)) is not None
    ]
    if wall_ns <= 0 or not deltas:
        return None
    run_ns, wait_ns, slices, (pid, tid) = max(deltas)
    if run_ns <= 0:
        return None
    on_cpu = 100.0 * run_ns / wall_ns
    waiting = 100.0 * wait_ns / wall_ns
    return {
        "on_cpu_pct": round(on_cpu, 1),
        "waiting_pct": round(waiting, 1),
        "asleep_pct": round(max(0.0, 100.0 - on_cpu - waiting), 1),
        "slices_per_s": round(slices * 1e9 / wall_ns, 1),
        "cpu_ms": run_ns / 1e6,
        "tokens": tokens,
        "core_ms_per_token": round(run_ns / 1e6 / tokens, 4) if tokens > 0 else math.nan,
        "pid": pid,
        "tid": tid,
    }
