"""Wiring and lifespan of the inference service."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from genwire.service import ServiceRuntime, health_router
from genwire.telemetry import semconv as sc
from genwire_inference.config import InferenceSettings


def create_app(settings: InferenceSettings | None = None) -> FastAPI:
    """Build the app; the runtime is created in the lifespan and kept on ``app.state``."""
    cfg = settings or InferenceSettings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        runtime = ServiceRuntime(cfg, sc.STAGE_INFERENCE)
        app.state.runtime = runtime
        await runtime.start()
        try:
            yield
        finally:
            await runtime.stop()

    app = FastAPI(title="genwire-inference", lifespan=lifespan)
    app.include_router(health_router())
    return app
