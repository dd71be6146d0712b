"""Unloading a used model version ends its Python stub and leaves the version UNAVAILABLE.

A throwaway model (the tiny checkpoint, built under a fresh name into the real Triton's
repository) is loaded, used the ways genwire uses it (streamed, single-response, n > 1, a
stream cancelled mid-generation, requests the model refuses), then unloaded. Triton only
finalizes a decoupled Python model, and ends its stub process, once every request and response
factory that refers to it is gone: a request whose final flag never went out, or one Triton
itself still holds, keeps the version UNLOADING and the stub (100-150 MB) alive forever. See
/tmp/gw/stub-leak.md (the investigation) and docs/lifecycle.md.

The waits are generous bounds, not timings: a healthy unload takes about a second.
"""

from __future__ import annotations

import asyncio
import shutil
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import psutil
import pytest
from genwire_model.build import BuildOptions, build_version
from genwire_model.client import GenerationError, generate
from tritonclient.grpc.aio import InferenceServerClient

from genwire.settings import CommonSettings
from genwire.triton_io import Options

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

PROMPT = [5, 6, 7, 8, 9]
WAIT_S = 60.0


def _stubs(name: str) -> list[psutil.Process]:
    """Triton's Python stub processes serving ``name`` (its model.py path is in their argv)."""
    marker = f"/{name}/"
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        cmdline = proc.info.get("cmdline") or []
        stub = bool(cmdline) and cmdline[0].endswith("triton_python_backend_stub")
        if stub and any(marker in a and a.endswith("model.py") for a in cmdline[1:2]):
            found.append(proc)
    return found


def _alive(procs: list[psutil.Process]) -> list[int]:
    """The pids among ``procs`` still running (an exited stub Triton has not reaped is not)."""
    alive = []
    for proc in procs:
        try:
            if proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE:
                alive.append(proc.pid)
        except psutil.NoSuchProcess:
            pass
    return alive


def _state(http: httpx.Client, name: str) -> str:
    """The version's state in Triton's repository index ("absent" when not listed)."""
    index = http.post("/v2/repository/index", json={}).json()
    states = [str(m.get("state", "")) for m in index if m.get("name") == name]
    return states[0] if states else "absent"


@pytest.fixture
def throwaway(infra: CommonSettings, tiny_checkpoint: Path) -> Iterator[tuple[str, httpx.Client]]:
    """A fresh model built into the real repository; its folder is removed afterwards."""
    name = f"gwtest-unload-{uuid.uuid4().hex[:6]}"
    build_version(tiny_checkpoint, name, infra.repository, BuildOptions(max_batch=8))
    http = httpx.Client(base_url=f"http://{infra.triton_http_url}", timeout=120.0)
    try:
        yield name, http
    finally:
        http.post(f"/v2/repository/models/{name}/unload")
        http.close()
        shutil.rmtree(infra.repository / name, ignore_errors=True)


async def _use(url: str, name: str) -> None:
    """One client per use, closed after it, as the test suites and services do."""
    uses: list[dict[str, object]] = [
        {"max_tokens": 6},
        {"max_tokens": 6, "stream": False},
        {"max_tokens": 4, "options": Options(n=2)},
        {"max_tokens": 40, "cancel_after_tokens": 2, "options": Options(ignore_eos=True)},
        {"max_tokens": 4, "temperature": -1.0},  # refused by the model
        {"max_tokens": 0},  # refused by the model
        {"max_tokens": 2},
    ]
    for kw in uses:
        client = InferenceServerClient(url)
        try:
            args: dict[str, object] = {"seed": 1, "temperature": 0.8, **kw}
            await generate(client, name, PROMPT, **args)  # type: ignore[arg-type]
        except GenerationError:
            assert kw.get("temperature") == -1.0 or kw.get("max_tokens") == 0
        finally:
            await client.close()


async def test_unloaded_version_ends_its_stub(
    infra: CommonSettings, throwaway: tuple[str, httpx.Client]
) -> None:
    name, http = throwaway
    response = http.post(f"/v2/repository/models/{name}/load")
    assert response.status_code == 200, response.text
    stubs = _stubs(name)
    assert stubs, "no Python stub process found for the loaded model"

    await _use(infra.triton_grpc_url, name)
    assert _alive(stubs) == [p.pid for p in stubs]  # still serving: nothing ended early

    response = http.post(f"/v2/repository/models/{name}/unload")
    assert response.status_code == 200, response.text
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        if not _alive(stubs) and _state(http, name) != "UNLOADING":
            break
        await asyncio.sleep(0.5)
    state = _state(http, name)
    alive = _alive(stubs)
    assert state == "UNAVAILABLE", f"{name} is {state} {WAIT_S:.0f} s after its unload"
    assert not alive, f"stub processes {alive} of {name} outlived its unload"
