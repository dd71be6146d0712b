"""The whole stack: every genwire service answers /readyz, and the default model is loaded."""

from __future__ import annotations

import time

import httpx
import pytest
from genwire_stack import DEFAULT_MODEL, status
from genwire_stack.components import SERVICE_PORTS

from genwire.settings import CommonSettings

RUNNING = {"running", "external"}


@pytest.mark.parametrize("service", sorted(SERVICE_PORTS))
def test_service_is_ready_and_exports_metrics(stack: CommonSettings, service: str) -> None:
    base = f"http://127.0.0.1:{SERVICE_PORTS[service]}"
    with httpx.Client(base_url=base, timeout=5, trust_env=False) as http:
        assert http.get("/readyz").status_code == 200
        health = http.get("/healthz").json()
        assert health["service"] == f"genwire-{service}"
        assert http.get("/metrics").status_code == 200


def test_status_reports_everything_running(stack: CommonSettings) -> None:
    rows = {row.name: row for row in status(settings=stack)}
    assert set(rows) == {"kafka", "redis", "triton", "jaeger", *SERVICE_PORTS}
    assert all(row.pid is not None or row.state == "external" for row in rows.values()), rows

    def not_running() -> dict[str, str]:
        return {r.name: r.state for r in status(settings=stack) if r.state not in RUNNING}

    # A service is briefly unready while its consumer group rebalances (other tests join
    # groups too), so poll for a while rather than judge one instant.
    deadline = time.monotonic() + 30
    while (down := not_running()) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not down, f"not running: {down}"


def test_default_model_is_loaded_in_triton(stack: CommonSettings) -> None:
    try:
        from genwire_model import ensure_default_model  # noqa: F401
    except ImportError:
        pytest.skip("genwire_model.ensure_default_model is not written yet")
    with httpx.Client(timeout=5, trust_env=False) as http:
        ready = http.get(f"http://{stack.triton_http_url}/v2/models/{DEFAULT_MODEL}/ready")
    assert ready.status_code == 200, f"{DEFAULT_MODEL} is not ready in Triton"
