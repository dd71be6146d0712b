"""The trace view's HTTP answers: 400/404/502 against real endpoints, and one real request
through the running pipeline, read back from the running monitor's ``/traces/<id>``."""

from __future__ import annotations

import asyncio
import time
import uuid

import httpx
import pytest
from fastapi import FastAPI
from genwire_gateway.client import GenwireClient
from genwire_gateway.config import GatewaySettings
from genwire_monitor.config import MonitorSettings
from genwire_monitor.traceroutes import trace_router
from genwire_stack.health import free_port

from genwire.settings import CommonSettings
from genwire.telemetry import semconv as sc

SERVICES = ("genwire-gateway", "genwire-preprocess", "genwire-inference", "genwire-postprocess")


def _client(jaeger_url: str) -> httpx.AsyncClient:
    """The router alone, in process (no Kafka lifespan), reading ``jaeger_url``."""
    app = FastAPI()
    app.include_router(trace_router(jaeger_url, timeout_s=2.0))
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://monitor")


async def test_unreachable_jaeger_is_a_502_page() -> None:
    down = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    async with _client(down) as http:
        for path in (f"/traces/{'ab' * 16}", "/traces"):
            response = await http.get(path)
            assert response.status_code == 502, path
            assert "Jaeger is unreachable" in response.text and down in response.text


async def test_a_malformed_trace_id_is_a_400_page() -> None:
    async with _client(f"http://127.0.0.1:{free_port()}") as http:
        response = await http.get("/traces/not-a-trace")
    assert response.status_code == 400
    assert "not a trace id" in response.text


async def test_a_trace_jaeger_lacks_is_a_404_page_that_reloads(infra: CommonSettings) -> None:
    async with _client(infra.jaeger_ui_url) as http:
        missing = uuid.uuid4().hex
        response = await http.get(f"/traces/{missing}")
        assert response.status_code == 404
        assert f"Jaeger has no trace {missing}" in response.text
        assert 'http-equiv="refresh"' in response.text
        listing = await http.get("/traces", params={"service": "no-such-service"})
        assert listing.status_code == 200 and "no traces found" in listing.text


@pytest.mark.slow
async def test_the_running_monitor_shows_a_real_request_as_a_waterfall(
    stack: CommonSettings,
) -> None:
    gateway = GatewaySettings()
    async with GenwireClient(f"{gateway.grpc_host}:{gateway.grpc_port}") as client:
        result = await client.generate("Once upon a time", max_tokens=8, seed=11)
    assert len(result.trace_id) == 32

    monitor = MonitorSettings()
    url = f"http://{monitor.host}:{monitor.port}/traces/{result.trace_id}"
    page, statuses = "", []
    async with httpx.AsyncClient(timeout=10.0, trust_env=False) as http:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            response = await http.get(url)
            statuses.append(response.status_code)
            page = response.text
            # Spans reach Jaeger through Kafka: 404 first, then 200 with more services.
            if response.status_code == 200 and all(s in page for s in SERVICES):
                break
            await asyncio.sleep(0.5)
    assert statuses[-1] == 200, f"{url}: {statuses[-5:]}\n{page[:500]}"
    assert set(statuses) <= {200, 404}
    for service in SERVICES:
        assert service in page
    assert f">{sc.SPAN_TRITON_GENERATE}</a>" in page  # a waterfall row of the model call
    assert result.trace_id in page
    assert 'class="hop"' in page and sc.WAIT_MS in page

    search = await _search(monitor, result.trace_id)
    assert f'href="/traces/{result.trace_id}"' in search


async def _search(monitor: MonitorSettings, trace_id: str) -> str:
    """The default search (recent model requests) lists the trace."""
    async with httpx.AsyncClient(timeout=10.0, trust_env=False) as http:
        response = await http.get(
            f"http://{monitor.host}:{monitor.port}/traces", params={"limit": 50}
        )
    assert response.status_code == 200
    return response.text
