"""Wiring and lifespan of the gateway service."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from genwire.service import ServiceRuntime, health_router
from genwire.telemetry import semconv as sc
from genwire_gateway.config import GatewaySettings


def create_app(settings: GatewaySettings | None = None) -> FastAPI:
    """Build the app; the runtime is created in the lifespan and kept on ``app.state``."""
    cfg = settings or GatewaySettings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        runtime = ServiceRuntime(cfg, sc.STAGE_GATEWAY)
        app.state.runtime = runtime
        await runtime.start()
        try:
            yield
        finally:
            await runtime.stop()

    app = FastAPI(title="genwire-gateway", lifespan=lifespan)
    app.include_router(health_router())
    return app
