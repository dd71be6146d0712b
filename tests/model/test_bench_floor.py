"""``genwire model bench``'s CPU accounting and ``--floor`` (the echo model: Triton's streaming
cost with no model, through the real model's response path)."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
from pathlib import Path

import httpx
import pytest
from genwire_model import bench
from genwire_model.client import generate
from tritonclient.grpc.aio import InferenceServerClient

from genwire import triton_admin
from genwire.settings import CommonSettings


def _process(proc: Path, pid: int, argv: list[str], parent: int) -> None:
    folder = proc / str(pid)
    folder.mkdir()
    (folder / "cmdline").write_bytes(b"\0".join(a.encode() for a in argv) + b"\0")
    (folder / "stat").write_text(f"{pid} (some name) S {parent} 1 1 0 -1", encoding="ascii")


def test_triton_processes_are_the_models_stubs_and_their_servers(tmp_path: Path) -> None:
    stub = "/opt/tritonserver/backends/python/triton_python_backend_stub"
    _process(tmp_path, 10, ["/opt/tritonserver/bin/tritonserver", "--model-repository"], 1)
    _process(tmp_path, 11, [stub, "/r/genwire-gpt/3/model.py", "shm", "genwire-gpt_0_0"], 10)
    _process(tmp_path, 12, [stub, "/r/genwire-gpt-b/1/model.py", "genwire-gpt-b_0_0"], 10)
    _process(tmp_path, 21, [stub, "/q/genwire-gpt/1/model.py", "genwire-gpt_0_1"], 20)
    _process(tmp_path, 30, ["python", "genwire-gpt_0_0"], 1)  # not a stub
    (tmp_path / "self").mkdir()
    found = bench.triton_processes("genwire-gpt", tmp_path)
    assert sorted(found["stub"]) == [11, 21]
    assert sorted(found["server"]) == [10, 20]
    assert bench.triton_processes("other", tmp_path) == {"server": [], "stub": []}


def test_core_ms_per_unit_leaves_out_what_was_not_measured() -> None:
    start = {"server": 1.0, "stub": 0.0, "client": 2.0}
    end = {"server": 1.5, "stub": 0.0, "client": 2.25}
    per = bench.CpuMeter.per_unit(start, end, 250)
    assert per == {"server": 2.0, "client": 1.0, "total": 3.0}  # no stub found: left out
    meter = bench.CpuMeter("a-model-nobody-serves")
    assert meter.pids == {"server": [], "stub": []}
    before = meter.sample()
    sum(i * i for i in range(200_000))  # this process's own CPU is counted
    after = meter.sample()
    assert after["client"] > before["client"]
    assert set(bench.CpuMeter.per_unit(before, after, 1)) == {"client", "total"}


def test_a_process_that_ends_keeps_its_last_reading(monkeypatch: pytest.MonkeyPatch) -> None:
    readings: dict[int, float | None] = {1: 5.0, 2: 1.0}
    monkeypatch.setattr(bench, "_cpu_s", lambda pid: readings[pid])
    meter = bench.CpuMeter(None)
    meter.pids = {"server": [1], "stub": [2]}
    before = meter.sample()
    readings.update({1: 5.5, 2: None})  # the stub of a replaced version ended
    after = meter.sample()
    assert after["server"] - before["server"] == 0.5
    assert after["stub"] == before["stub"] == 1.0  # not a negative CPU time


def test_the_echo_model_runs_beside_the_real_response_path(tmp_path: Path) -> None:
    model_dir = bench.write_echo_model(tmp_path, "genwire-floor-echo-test")
    version = model_dir / "1"
    assert 'name: "genwire-floor-echo-test"' in (model_dir / "config.pbtxt").read_text()
    assert "decoupled: true" in (model_dir / "config.pbtxt").read_text()
    here = Path(bench.__file__).parent
    assert (version / "model.py").read_bytes() == (here / "floor_echo.py").read_bytes()
    real = (here / "runtime" / "triton_model.py").read_bytes()
    assert (version / "triton_model.py").read_bytes() == real
    assert (version / "genwire_runtime" / "scheduler.py").exists()
    assert (version / "genwire_env.json").exists()


@pytest.mark.parametrize("shared", [False, True], ids=["stream-per-request", "shared-stream"])
async def test_floor_echo_in_the_real_triton(
    infra: CommonSettings, tmp_path: Path, shared: bool
) -> None:
    """The echo serves the model's contract: max_tokens one-token responses, the last one
    final with the counts, on a stream per request or on one for all (``--shared-stream``),
    the client on the loop asked for; the run leaves nothing loaded nor in the repository."""
    out = tmp_path / "floor.json"
    loop = "uvloop" if shared else "asyncio"
    per_response, per_request = await asyncio.to_thread(
        bench.run_floor,
        infra.triton_grpc_url,
        infra.triton_http_url,
        infra.repository,
        [1, 2],
        5,
        4,
        out,
        triton_admin.headers(infra),
        shared,
        loop,
    )
    for level, r in zip([1, 2], per_response, strict=True):
        assert r.concurrency == level and r.requests == 4 and r.errors == 0
        assert r.mean_output_tokens == 5
        assert r.core_ms_per_token["client"] > 0 and "total" in r.core_ms_per_token
        assert r.event_loop == loop
    assert [r.requests for r in per_request] == [16, 16]
    assert all(r.mean_output_tokens == 1 and r.errors == 0 for r in per_request)
    assert json.loads(out.read_text())["shared_stream"] is shared
    assert json.loads(out.read_text())["event_loop"] == loop
    assert not [p for p in os.listdir(infra.repository) if p.startswith(bench.FLOOR_MODEL)]


async def test_one_echo_request_is_the_models_contract(infra: CommonSettings) -> None:

    name = f"{bench.FLOOR_MODEL}-contract"
    model_dir = bench.write_echo_model(infra.repository, name)
    base = f"http://{infra.triton_http_url}/v2/repository/models/{name}"
    async with httpx.AsyncClient(headers=triton_admin.headers(infra), timeout=120.0) as http:
        try:
            loaded = await http.post(f"{base}/load")
            assert loaded.status_code == 200, loaded.text
            client = InferenceServerClient(infra.triton_grpc_url)
            try:
                out = await generate(client, name, [42, 7, 9], 6)
            finally:
                await client.close()
            assert out.token_ids == [42] * 6 and out.responses == 6
            assert out.finish_reason == "length"
            assert out.completion_tokens == 6 and out.prompt_tokens == 3
        finally:
            await http.post(f"{base}/unload")
            shutil.rmtree(model_dir, ignore_errors=True)


def test_bench_rows_print_the_rest_of_the_machine_and_the_cpu_per_token() -> None:
    r = bench.summarize(1, [], 1.0, 3)
    assert bench._row(r).rstrip().endswith(" 3     –")  # nothing measured: no CPU column
    r.rest_pct = 12.4
    r.core_ms_per_token = {"server": 0.5, "client": 0.25, "total": 0.75}
    assert bench._row(r).endswith(" 3   12%  0.750 (0.500 server + 0.250 client)")


def test_a_floor_run_that_fails_leaves_no_echo_model_behind(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A refused load (unloaded all the same: it may have started) and a version written in
    part both leave the repository as it was."""
    calls: list[str] = []

    def post(url: str, **_: object) -> httpx.Response:
        calls.append(url.rsplit("/", 1)[1])
        return httpx.Response(400 if url.endswith("/load") else 200, text="no")

    monkeypatch.setattr(httpx, "post", post)
    with pytest.raises(RuntimeError, match="could not load the echo model"):
        bench.run_floor("g:1", "h:2", tmp_path, [1], 2, 1, None)
    assert calls == ["load", "unload"]
    assert list(tmp_path.iterdir()) == []

    import genwire_model.build

    def broken(version: Path) -> None:
        (version / "model.py").write_text("partial")
        raise OSError("disk full")

    monkeypatch.setattr(genwire_model.build, "_copy_runtime", broken)
    calls.clear()
    with pytest.raises(OSError, match="disk full"):
        bench.run_floor("g:1", "h:2", tmp_path, [1], 2, 1, None)
    assert calls == []  # nothing was loaded
    assert list(tmp_path.iterdir()) == []
