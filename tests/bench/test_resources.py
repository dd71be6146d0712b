"""Process discovery and CPU/RSS sampling, on this test process itself."""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path

import psutil
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
    sampler = ResourceSampler({"me": own_process()}, interval_s=0.05)
    sampler.start()
    deadline = asyncio.get_running_loop().time() + 0.3
    while asyncio.get_running_loop().time() < deadline:  # burn some CPU, yielding to the sampler
        sum(i * i for i in range(20_000))
        await asyncio.sleep(0)
    usage = (await sampler.stop())["me"]
    rss_mb = psutil.Process().memory_info().rss / 2**20
    assert os.getpid() in usage.pids
    assert 0.5 * rss_mb < usage.rss_peak_mb < 2 * rss_mb
    assert usage.rss_mean_mb <= usage.rss_peak_mb
    assert usage.cpu_percent > 10.0


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
