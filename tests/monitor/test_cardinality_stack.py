"""Cardinality on the running stack: 10,000 requests naming 10,000 made-up models leave every
service's /metrics (gateway, preprocess, inference, postprocess, monitor) and the monitor's
per-version series flat. Series counts are asserted; memory (RSS) is printed (``-s``) and
bounded loosely (no figure assertions: docs/monitor.md has the measured ones)."""

from __future__ import annotations

import asyncio
import time
import uuid

import httpx
import psutil
import pytest

from genwire.apikeys import auth_headers
from genwire.settings import CommonSettings

GATEWAY = "http://127.0.0.1:8080"
SERVICES = {
    "gateway": 8080,
    "preprocess": 8091,
    "inference": 8092,
    "postprocess": 8093,
    "monitor": 8090,
}
NAMES = 10_000


def _pid(port: int) -> int | None:
    for c in psutil.net_connections(kind="tcp"):
        if c.status == psutil.CONN_LISTEN and c.laddr and c.laddr.port == port:
            return c.pid
    return None


def _scrape(client: httpx.Client) -> dict[str, list[str]]:
    out = {}
    for name, port in SERVICES.items():
        text = client.get(f"http://127.0.0.1:{port}/metrics").text
        out[name] = [line for line in text.splitlines() if line and not line.startswith("#")]
    return out


def _rss() -> dict[str, float]:
    out = {}
    for name, port in SERVICES.items():
        pid = _pid(port)
        out[name] = psutil.Process(pid).memory_info().rss / 2**20 if pid else float("nan")
    return out


async def _flood(tag: str, names: int = NAMES) -> dict[int, int]:
    statuses: dict[int, int] = {}
    limit = asyncio.Semaphore(48)
    async with httpx.AsyncClient(base_url=GATEWAY, timeout=60, headers=auth_headers()) as c:

        async def one(i: int) -> None:
            async with limit:
                r = await c.post(
                    "/v1/completions",
                    json={"model": f"made-up-{tag}-{i}", "prompt": "hi", "max_tokens": 1},
                )
                statuses[r.status_code] = statuses.get(r.status_code, 0) + 1

        await asyncio.gather(*(one(i) for i in range(names)))
    return statuses


@pytest.mark.slow
def test_ten_thousand_made_up_model_names_leave_metrics_and_memory_flat(
    stack: CommonSettings,
) -> None:
    tag = uuid.uuid4().hex[:6]
    # A first few rejections create the series any traffic creates (per stage, window and
    # partition: bounded), so that "before" counts them on a stack that has served nothing yet.
    asyncio.run(_flood(f"{tag}-warm", 100))  # "made-up-{tag}": leak-checked too
    time.sleep(15)  # the monitor completes traces after 3 s and evaluates every 10 s
    with httpx.Client(timeout=30) as client:
        before, rss_before = _scrape(client), _rss()
        started = time.monotonic()
        statuses = asyncio.run(_flood(tag))
        took = time.monotonic() - started
        time.sleep(15)  # the monitor completes traces after 3 s and evaluates every 10 s
        after, rss_after = _scrape(client), _rss()
        status = client.get("http://127.0.0.1:8090/api/status").json()
    print(f"\n{NAMES} made-up model names in {took:.1f}s, answers {statuses}")
    for name in SERVICES:
        print(
            f"  {name:12s} series {len(before[name]):6d} -> {len(after[name]):6d}   "
            f"RSS {rss_before[name]:7.1f} -> {rss_after[name]:7.1f} MiB"
        )
    assert sum(statuses.values()) == NAMES and 200 not in statuses
    for name in SERVICES:
        leaked = [line for line in after[name] if f"made-up-{tag}" in line]
        assert leaked == [], (name, leaked[:3])
        # New label sets of the rejection itself (its error code, "unknown"/"other" model)
        # are fine; one per name is not.
        assert len(after[name]) - len(before[name]) < 100, name
    models = {(m["model"], m["version"]) for m in status["models"]}
    assert len(models) <= 9 and not [m for m, _ in models if m.startswith("made-up")]
    for name in SERVICES:  # loose: 10,000 series would be far more
        assert rss_after[name] - rss_before[name] < 200, name
