"""The decode loop's thread over a benchmark level (``genwire_model.loop_thread``): found as the
busiest thread, its wall time split into on a CPU, waiting for one and asleep; and on both sides
of ``genwire model bench --in-process`` it is the scheduler's decode thread, whose two factors
give Triton's share."""

from __future__ import annotations

import asyncio
import math
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from genwire_bench import loop_thread
from genwire_model import bench

from genwire.settings import CommonSettings

SCHEDSTAT = Path(f"/proc/{os.getpid()}/task/{threading.get_native_id()}/schedstat")
# Kernels before 5.14 without schedstats or delay accounting have the file, all zeros.
COUNTED = SCHEDSTAT.exists() and SCHEDSTAT.read_text().split()[:2] != ["0", "0"]


def _fake_proc(root: Path, threads: dict[tuple[int, int], str]) -> Path:
    for (pid, tid), text in threads.items():
        task = root / str(pid) / "task" / str(tid)
        task.mkdir(parents=True)
        (task / "schedstat").write_text(text)
    return root


def test_a_reading_takes_every_thread_of_the_processes_and_skips_what_it_cannot_parse(
    tmp_path: Path,
) -> None:
    proc = _fake_proc(
        tmp_path,
        {
            (10, 10): "5000 100 3\n",
            (10, 11): "70 0 1\n",
            (10, 12): "garbage\n",
            (20, 21): "9 8 7\n",
        },
    )
    (proc / "10" / "task" / "not-a-thread").mkdir()
    reading = loop_thread.read([10, 20, 30], proc)  # 30: a process that is gone
    assert reading.threads == {(10, 10): (5000, 100, 3), (10, 11): (70, 0, 1), (20, 21): (9, 8, 7)}


def test_the_busiest_thread_splits_the_wall_time_and_prices_a_token() -> None:
    start = loop_thread.ThreadTimes(
        1_000_000_000,
        {(1, 1): (0, 0, 0), (1, 2): (5_000_000, 1_000_000, 10), (1, 3): (0, 0, 0)},
    )
    end = loop_thread.ThreadTimes(
        2_000_000_000,  # one second later
        {
            (1, 1): (100_000_000, 0, 5),  # 0.1 s on a CPU
            (1, 2): (905_000_000, 51_000_000, 710),  # 0.9 s on a CPU, 0.05 s waiting
            (1, 4): (990_000_000, 0, 1),  # born between the readings: not compared
        },
    )
    got = loop_thread.busiest(start, end, tokens=1800)
    assert got == {
        "on_cpu_pct": 90.0,
        "waiting_pct": 5.0,
        "asleep_pct": 5.0,
        "slices_per_s": 700.0,
        "cpu_ms": 900.0,
        "tokens": 1800,
        "core_ms_per_token": 0.5,
        "pid": 1,
        "tid": 2,
    }
    assert loop_thread.busiest(start, start, tokens=1) is None  # no wall time
    idle = loop_thread.ThreadTimes(3_000_000_000, end.threads)
    assert loop_thread.busiest(end, idle, tokens=1) is None  # nothing ran
    assert loop_thread.busiest(start, loop_thread.ThreadTimes(3_000_000_000, {}), 1) is None
    none = loop_thread.busiest(start, end, tokens=0)
    assert none is not None and math.isnan(none["core_ms_per_token"])  # no tokens, no price
    # A running thread's figures lag to its next tick: above 100 % is kept, asleep is then 0.
    over = loop_thread.ThreadTimes(2_000_000_000, {(1, 2): (1_025_000_000, 1_000_000, 10)})
    got = loop_thread.busiest(start, over, tokens=1)
    assert got is not None and (got["on_cpu_pct"], got["asleep_pct"]) == (102.0, 0.0)


# A process of its own: in pytest's, threads left by earlier tests contend for the GIL, and a
# thread waiting for the GIL sleeps on a futex, which the kernel counts as asleep.
SPINNER = """
import sys, threading
stop = threading.Event()
def spin():
    print(threading.get_native_id(), flush=True)
    while not stop.is_set():
        sum(range(1000))
threading.Thread(target=stop.wait).start()
busy = threading.Thread(target=spin)
busy.start()
sys.stdin.read()  # asleep until the test closes stdin
stop.set()
"""


@pytest.mark.skipif(not COUNTED, reason="this kernel keeps no per-thread schedstat")
def test_a_busy_thread_is_found_among_idle_ones() -> None:
    child = subprocess.Popen(
        [sys.executable, "-c", SPINNER], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert child.stdout is not None and child.stdin is not None
        busy_tid = int(child.stdout.readline())
        time.sleep(0.02)
        start = loop_thread.read([child.pid])
        time.sleep(0.2)  # its main thread asleep, the idle one waiting, the busy one spinning
        end = loop_thread.read([child.pid])
        child.stdin.close()
        assert child.wait(timeout=10) == 0
    finally:
        child.kill()
        child.wait()
    got = loop_thread.busiest(start, end, tokens=10)
    assert got is not None and (got["pid"], got["tid"]) == (child.pid, busy_tid)
    # It spins holding a GIL nobody else wants: on a CPU or waiting for one, not asleep.
    assert got["on_cpu_pct"] > 0 and got["asleep_pct"] < 50, got


def test_both_sides_measure_the_schedulers_decode_thread(
    served_model: tuple[str, str], infra: CommonSettings
) -> None:
    url, name = served_model
    version = bench.served_version(url, name, infra.repository)
    prompts = [[5, 6, 7], [8, 9]]
    scheduler = bench._scheduler(version.path)
    scheduler.start()
    try:
        local = bench.run_in_process_level(scheduler, prompts, 2, 8, 6)
        decode_thread = scheduler._thread.native_id if scheduler._thread else None
    finally:
        scheduler.stop()
    triton = asyncio.run(bench.run_level(url, name, prompts, 2, 8, 6, None, shared=True))
    assert local.loop_thread is not None and triton.loop_thread is not None
    assert (local.loop_thread["pid"], local.loop_thread["tid"]) == (os.getpid(), decode_thread)
    assert triton.loop_thread["pid"] in bench.triton_processes(name)["stub"]
    for side in (local, triton):
        times = side.loop_thread
        tokens = side.requests * side.mean_output_tokens
        # The loop's thread is part of its process's CPU, never more (the process's CPU is
        # counted in clock ticks: two of them of slack over the level).
        whole = side.core_ms_per_token["stub" if side is triton else "client"]
        assert 0 < times["core_ms_per_token"] <= whole + 2e3 / os.sysconf("SC_CLK_TCK") / tokens
    # The rest of the machine is read on both sides; through a Triton whose processes this
    # machine does not show, their CPU cannot be told from the rest, so it is not read.
    assert local.rest_pct is not None and triton.rest_pct is not None
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(bench, "triton_processes", lambda model: {"server": [], "stub": []})
        unseen = asyncio.run(bench.run_level(url, name, prompts, 2, 4, 6, None, shared=True))
    assert unseen.requests == 4 and unseen.rest_pct is None
    factors = bench.compare(triton, local, bench.StaticResult(2, 12, 1.0, 12.0, 1.0))
    # Tokens per second are the loop's share of a CPU over its CPU per token on each side, so
    # the two factors, read over the level's own window, divide back into the share (the
    # kernel updates a running thread's figures at its ticks: a few % on a level this short).
    assert factors["share"] == pytest.approx(
        factors["loop_on_cpu_x"] / factors["loop_cpu_x"], rel=0.15
    )
