"""A minimal Alertmanager-compatible receiver (``POST /api/v2/alerts``) for the tests."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import uvicorn
from fastapi import FastAPI, Request
from genwire_stack.health import free_port


@dataclass
class Hook:
    """What the receiver got."""

    url: str
    alerts: list[dict[str, Any]] = field(default_factory=list)


@contextlib.asynccontextmanager
async def receiver() -> AsyncIterator[Hook]:
    """Serve the receiver while the block runs; it validates the v2 shape it is sent."""
    port = free_port()
    hook = Hook(f"http://127.0.0.1:{port}")
    app = FastAPI()

    @app.post("/api/v2/alerts")
    async def post_alerts(request: Request) -> dict[str, str]:
        body = await request.json()
        assert isinstance(body, list)
        for alert in body:
            assert {"labels", "annotations", "startsAt"} <= set(alert)
            assert "alertname" in alert["labels"]
        hook.alerts.extend(body)
        return {"status": "success"}

    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None))
    task = asyncio.create_task(server.serve())
    for _ in range(400):  # uvicorn sets ``started`` once it listens
        if server.started:
            break
        await asyncio.sleep(0.05)
    try:
        yield hook
    finally:
        server.should_exit = True
        await task
