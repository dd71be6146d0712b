"""Process discovery and CPU/RSS sampling, on this test process itself."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
from genwire_bench import steal
from genwire_bench.resources import ResourceSampler, discover, from_pid_files, own_process


async def test_discover_finds_the_listener_of_a_port() -> None:
    server = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        found = discover(None, {"me": (port,), "nobody": (1,)})
    finally:
        server.close()
        await server.wait_closed()
    assert found["me"].pid == os.getpid()
    assert "nobody" not in found


async def test_pid_files_come_first_and_listeners_are_not_counted_twice(tmp_path: Path) -> None:
    (tmp_path / "svc.pid").write_text(json.dumps({"pid": os.getpid(), "argv": []}))
    (tmp_path / "gone.pid").write_text(json.dumps({"pid": 2**22 + 12345}))
    (tmp_path / "junk.pid").write_text("not a pid")
    assert set(from_pid_files(tmp_path)) == {"svc"}
    server = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        found = discover(tmp_path, {"same": (port,)})
    finally:
        server.close()
        await server.wait_closed()
    assert set(found) == {"svc"}


async def test_sampler_reports_cpu_and_peak_rss() -> None:
    cpu_before = time.process_time()
    sampler = ResourceSampler({"me": own_process()}, interval_s=0.05)
    sampler.start()
    # Burn 0.5 s of this thread's CPU (not 0.3 s of wall time: on a loaded machine the process
    # may get too little of it for a fixed share), yielding to the sampler.
    burn_until = time.thread_time() + 0.5
    give_up = time.monotonic() + 30
    while time.thread_time() < burn_until and time.monotonic() < give_up:
        sum(i * i for i in range(20_000))
        await asyncio.sleep(0)
    usage = (await sampler.stop())["me"]
    cpu_after = time.process_time()
    rss_mb = psutil.Process().memory_info().rss / 2**20
    assert os.getpid() in usage.pids
    assert 0.5 * rss_mb < usage.rss_peak_mb < 2 * rss_mb
    assert usage.rss_mean_mb <= usage.rss_peak_mb
    # The process's CPU over the phase, as the kernel counts it in 10 ms ticks: at least the
    # 0.5 s burnt, at most what the whole process used around start and stop.
    assert 0.45 < usage.cpu_s < cpu_after - cpu_before + 0.05
    # A percentage of one core over the phase's wall time (not a fraction)
    assert usage.cpu_percent == pytest.approx(100 * usage.cpu_s / usage.wall_s)


def _stat(tmp_path: Path, steal: int, total_rest: int) -> Path:
    path = tmp_path / "stat"
    # user nice system idle iowait irq softirq steal guest guest_nice
    path.write_text(
        f"cpu  {total_rest} 0 0 0 0 0 0 {steal} 7 7\ncpu0 1 2 3 4 5 6 7 8 0 0\n", encoding="ascii"
    )
    return path


def test_steal_is_the_stolen_share_of_the_cpu_time_between_two_readings(tmp_path: Path) -> None:
    before = steal.cpu_times(_stat(tmp_path, 100, 900))
    after = steal.cpu_times(_stat(tmp_path, 150, 1350))
    assert before == (100, 1000)  # guest time is inside user already: not added twice
    assert after == (150, 1500)
    assert steal.stolen_pct(before, after) == 10.0
    assert steal.stolen_pct(after, after) is None  # no time passed
    assert steal.stolen_pct(None, after) is None
    assert steal.cpu_times(tmp_path / "missing") is None
    (tmp_path / "odd").write_text("intr 1 2 3\n", encoding="ascii")
    assert steal.cpu_times(tmp_path / "odd") is None


def _task(proc: Path, pid: int, tid: int, comm: str, utime: int, stime: int) -> None:
    task = proc / str(pid) / "task" / str(tid)
    task.mkdir(parents=True)
    (task / "comm").write_text(comm + "\n")
    # pid (name) state ppid … utime stime; the name in stat may hold ") ": fields count from
    # the last ")"
    rest = " ".join(["S", *["0"] * 10, str(utime), str(stime), *["0"] * 5])
    (task / "stat").write_text(f"{tid} ({comm}) 1 2) {rest}\n")


def test_jit_seconds_reads_the_compiler_threads_of_a_jvm(tmp_path: Path) -> None:
    from genwire_bench.resources import jit_seconds
    from genwire_bench.steal import CLOCK_TICKS

    _task(tmp_path, 7, 7, "java", 900, 100)
    _task(tmp_path, 7, 8, "C2 CompilerThre", 30, 20)
    _task(tmp_path, 7, 9, "C1 CompilerThre", 4, 1)
    _task(tmp_path, 7, 10, "VM Thread", 5, 5)
    (tmp_path / "7" / "task" / "11").mkdir()  # a thread gone between listing and reading
    assert jit_seconds(7, tmp_path) == {8: 50 / CLOCK_TICKS, 9: 5 / CLOCK_TICKS}
    assert jit_seconds(8, tmp_path) == {}  # no such process


def test_compiler_threads_that_come_and_go_are_counted_for_the_time_they_ran(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from genwire_bench import resources

    snapshots = iter([{1: 5.0}, {1: 6.0, 2: 0.5}, {2: 0.75}])
    monkeypatch.setattr(resources, "jit_seconds", lambda pid: next(snapshots))
    tree = resources._Tree(own_process(), recursive=False)
    # Taken for a JVM when sampled, as _is_jvm records a java process.
    monkeypatch.setattr(tree, "_is_jvm", lambda proc: tree.jvms.setdefault(proc.pid, True))
    for _ in range(3):
        tree.sample()
    # thread 1: 1.0 s after the first sample; thread 2 started later: all of its 0.75 s
    assert tree.jit_used() == pytest.approx(1.75)
    assert not resources._Tree(own_process())._is_jvm(own_process())  # python, not java


def test_a_jvm_first_seen_mid_phase_counts_from_then(monkeypatch: pytest.MonkeyPatch) -> None:
    from genwire_bench import resources

    snapshots = iter([{1: 40.0}, {1: 41.0}])
    monkeypatch.setattr(resources, "jit_seconds", lambda pid: next(snapshots))
    tree = resources._Tree(own_process(), recursive=False)
    # Taken for a JVM when sampled, as _is_jvm records a java process.
    monkeypatch.setattr(tree, "_is_jvm", lambda proc: tree.jvms.setdefault(proc.pid, True))
    members = iter([[], [own_process()], [own_process()]])  # a broker restarted mid-phase
    monkeypatch.setattr(tree, "members", lambda: next(members))
    tree.sample()
    assert tree.jit_used() is None  # no JVM seen yet: not measured, not 0
    tree.sample()
    tree.sample()
    assert tree.jit_used() == pytest.approx(1.0)  # not the 40 s it compiled before


def test_a_jvm_started_mid_phase_counts_its_jit_from_its_start(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from genwire_bench import resources

    snapshots = iter([{1: 4.0}, {1: 5.0}])
    monkeypatch.setattr(resources, "jit_seconds", lambda pid: next(snapshots))
    tree = resources._Tree(own_process(), recursive=False)
    monkeypatch.setattr(tree, "_is_jvm", lambda proc: tree.jvms.setdefault(proc.pid, True))
    members = iter([[], [own_process()], [own_process()]])  # a broker started mid-phase
    monkeypatch.setattr(tree, "members", lambda: next(members))
    tree.sample()
    assert tree.started is not None
    started = tree.started
    monkeypatch.setattr(resources, "started_ticks", lambda pid: int(started) + 1)
    tree.sample()
    tree.sample()
    assert tree.jit_used() == pytest.approx(5.0)  # all it compiled, from its start


def test_instances_and_rounds_keep_the_jit_time_and_the_worst_brokers_share() -> None:
    from genwire_bench.report import jsonable
    from genwire_bench.resources import Usage, by_service
    from genwire_bench.runner import Phase, merge_usage
    from genwire_bench.stats import Load

    def broker(cpu_s: float, jit_s: float | None, share: float | None) -> Usage:
        return Usage((1,), 10.0, 10.0, 500.0, 400.0, cpu_s, 1, 5.0, jit_s, share)

    phase = Phase("kafka", Load("closed", 8))
    phase.usage = [
        by_service({"kafka-1": broker(3.0, 0.3, 0.1), "kafka-2": broker(1.0, 0.6, 0.6)}),
        by_service({"kafka-1": broker(2.0, 0.2, 0.1), "kafka-2": broker(2.0, 0.2, 0.1)}),
        by_service({"me": Usage((2,), 1.0, 1.0, 50.0, 40.0, cpu_s=1.0)}),
    ]
    phase.walls = [5.0, 5.0, 5.0]
    phase.usage[0]["redis"] = Usage((3,), 40.0, 90.0, 480.0, 470.0, cpu_s=3.4, fork_cpu_s=3.1)
    phase.usage[1]["redis"] = Usage((3,), 3.0, 3.0, 480.0, 470.0, cpu_s=0.2)
    merged = merge_usage(phase)
    assert merged["redis"].fork_cpu_s == pytest.approx(3.1)  # the report warns of it
    assert merged["kafka"].fork_cpu_s is None
    assert merged["kafka"].cpu_s == pytest.approx(8.0)
    assert merged["kafka"].jit_cpu_s == pytest.approx(1.3)
    assert merged["kafka"].jit_peak_share == pytest.approx(0.6)  # kafka-2 in the first round
    assert merged["me"].jit_cpu_s is None and merged["me"].jit_peak_share is None
    assert jsonable(merged["kafka"])["jit_peak_share"] == pytest.approx(0.6)  # the --json file


@pytest.mark.skipif(shutil.which("java") is None, reason="no java on PATH (the broker needs one)")
async def test_a_jvms_jit_compiler_time_is_part_of_its_cpu(tmp_path: Path) -> None:
    source = tmp_path / "Busy.java"
    source.write_text(
        "public class Busy { public static void main(String[] a) {"
        " long end = System.nanoTime() + 3_000_000_000L; long x = 0;"
        " while (System.nanoTime() < end) { for (int i = 0; i < 100_000; i++) x += i % 7;"
        " x ^= java.util.Arrays.hashCode(new long[] {x, x >> 3}); }"
        " System.out.println(x); } }\n"
    )
    # Single-file source launch: javac itself runs, and is compiled, inside this JVM.
    proc = await asyncio.create_subprocess_exec(
        "java", str(source), stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE
    )
    try:
        sampler = ResourceSampler({"jvm": psutil.Process(proc.pid)}, interval_s=0.1)
        sampler.start()
        await asyncio.sleep(2.0)
        usage = (await sampler.stop())["jvm"]
    finally:
        _, err = await proc.communicate()
    assert proc.returncode == 0, err.decode()
    assert usage.jit_cpu_s is not None
    assert 0.0 < usage.jit_cpu_s < usage.cpu_s
    me = ResourceSampler({"me": own_process()}, interval_s=0.05)
    me.start()
    assert (await me.stop())["me"].jit_cpu_s is None  # not a JVM: not measured


async def test_a_child_born_mid_phase_counts_all_of_its_cpu() -> None:
    """A process started after the phase's first sample (as Redis forks a snapshot's child) ran
    only in the phase: its CPU before it was first seen counts too."""
    sampler = ResourceSampler({"svc": own_process()}, interval_s=3600)  # first and last only
    sampler.start()
    await asyncio.sleep(0.3)  # the loop's own first sample is taken: the next is stop()'s
    burn = "import time\nt = time.process_time()\nwhile time.process_time() - t < 0.4: pass\n"
    child = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        burn + "print('burnt', flush=True)\ntime.sleep(30)\n",
        stdout=asyncio.subprocess.PIPE,
    )
    try:
        assert child.stdout is not None
        assert await asyncio.wait_for(child.stdout.readline(), 30) == b"burnt\n"
        usage = (await sampler.stop())["svc"]  # first seen here, after its 0.4 s
    finally:
        child.kill()
        await child.wait()
    assert child.pid in usage.pids
    assert usage.cpu_s >= 0.35
    assert usage.fork_cpu_s is None  # not one of Redis's children


@pytest.mark.skipif(shutil.which("redis-server") is None, reason="redis-server is not installed")
async def test_a_redis_snapshot_in_a_phase_is_its_fork_cpu(tmp_path: Path) -> None:
    from genwire_stack.health import free_port
    from redis.asyncio import Redis

    port = free_port()
    argv = ["--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
    server = await asyncio.create_subprocess_exec(
        "redis-server", *argv, "--dir", str(tmp_path), stdout=asyncio.subprocess.DEVNULL
    )
    client: Redis[bytes] = Redis(port=port)
    try:
        for _ in range(200):  # until it answers
            with contextlib.suppress(Exception):
                if await client.ping():
                    break
            await asyncio.sleep(0.05)
        pipe = client.pipeline(transaction=False)
        for n in range(200_000):
            pipe.set(f"genwire:result:{n:032x}", "x" * 300)
        await pipe.execute()
        sampler = ResourceSampler({"redis": psutil.Process(server.pid)}, interval_s=0.02)
        sampler.start()
        await client.bgsave()
        for _ in range(1500):  # until the snapshot is written
            if not (await client.info("persistence"))["rdb_bgsave_in_progress"]:
                break
            await asyncio.sleep(0.02)
        usage = (await sampler.stop())["redis"]
    finally:
        await client.aclose()  # type: ignore[attr-defined]
        server.terminate()
        await server.wait()
    assert usage.fork_cpu_s is not None and 0 < usage.fork_cpu_s <= usage.cpu_s
    assert len(usage.pids) == 2  # the server and its snapshot's child


def test_the_machines_busy_time_leaves_out_idle_iowait_and_steal(tmp_path: Path) -> None:
    path = tmp_path / "stat"
    # user nice system idle iowait irq softirq steal guest guest_nice (clock ticks)
    path.write_text("cpu  100 20 30 5000 400 5 6 700 9 9\n", encoding="ascii")
    hz = os.sysconf("SC_CLK_TCK")
    assert steal.busy_s(path) == pytest.approx((100 + 20 + 30 + 5 + 6) / hz)
    assert steal.busy_s(tmp_path / "missing") is None
    assert steal.rest_pct(10.0, 10.9, 0.3, 2.0) == 30.0  # 0.6 s of others over 2 s
    assert steal.rest_pct(10.0, 10.1, 0.3, 2.0) == 0.0  # ticks' rounding: never below 0
    assert steal.rest_pct(None, 10.9, 0.3, 2.0) is None
    assert steal.rest_pct(10.0, 10.9, 0.3, 0.0) is None


def test_a_busy_neighbour_is_the_rest_of_the_machine() -> None:
    """A child process spinning beside this one, which measures only itself: the machine's
    busy time less this process's CPU holds the child's (at least a third of a core even on a
    loaded two-core machine; it spins a whole one when it can)."""
    own = time.process_time()
    busy = steal.busy_s()
    started = time.perf_counter()
    subprocess.run(
        [
            sys.executable,
            "-c",
            "import time\nend = time.process_time() + 0.6\nwhile time.process_time() < end: pass",
        ],
        check=True,
    )
    seconds = time.perf_counter() - started
    rest = steal.rest_pct(busy, steal.busy_s(), time.process_time() - own, seconds)
    assert rest is not None and rest > 33.0
