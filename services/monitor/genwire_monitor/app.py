"""Wiring and lifespan of the monitor service: span source → engine thread → alerts, page;
broker offsets of the watched groups → stall verdicts → the same engine thread."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse
from opentelemetry.sdk.trace.export import SpanExporter

from genwire.service import ServiceRuntime, health_router
from genwire.telemetry import semconv as sc
from genwire.topics import Topic
from genwire_monitor import promexport
from genwire_monitor.config import MonitorSettings
from genwire_monitor.offsetpoll import OffsetPoller
from genwire_monitor.source import SpanSource
from genwire_monitor.traceroutes import trace_router
from genwire_monitor.webhook import AlertmanagerClient
from genwire_monitor.worker import EngineWorker


class MonitorRuntime(ServiceRuntime):
    """The shared runtime, ready only once the span source has its partitions."""

    source: SpanSource | None = None

    def reasons(self) -> list[str]:
        """The shared reasons, and the spans topic not assigned yet."""
        out = super().reasons()
        if self.source is None or not self.source.ready:
            out.append(f"the span source has no partitions of {Topic.SPANS} yet")
        return out


def create_app(
    settings: MonitorSettings | None = None,
    *,
    clock: Callable[[], float] | None = None,
    span_exporter: SpanExporter | None = None,
) -> FastAPI:
    """Build the app; the runtime is created in the lifespan and kept on ``app.state``."""
    cfg = settings or MonitorSettings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        runtime = MonitorRuntime(
            cfg, sc.STAGE_MONITOR, span_exporter=span_exporter, set_global_tracer=False
        )
        collector = promexport.register(runtime.registry)
        webhook = (
            AlertmanagerClient(cfg.alertmanager_url, f"http://{cfg.host}:{cfg.port}/")
            if cfg.alertmanager_url
            else None
        )
        extra: dict[str, Any] = {"clock": clock} if clock else {}
        worker = EngineWorker(cfg, runtime.producer, collector, webhook, **extra)
        source = SpanSource(
            topic=cfg.spans_topic,
            group_id=cfg.group_id,
            bootstrap_servers=cfg.kafka_bootstrap_servers,
            sink=worker.ingest,
            max_records=cfg.max_batch_records,
            commit_interval_s=cfg.commit_interval_s,
            auto_offset_reset=cfg.auto_offset_reset,
        )
        runtime.source = source
        poller = (
            OffsetPoller(
                bootstrap_servers=cfg.kafka_bootstrap_servers,
                watched=cfg.watched_groups,
                threshold_s=cfg.stall_alert_s,
                interval_s=cfg.stall_check_interval_s,
                sink=worker.partitions,
                client_id=f"{cfg.service_name}-offsets",
            )
            if cfg.watched_groups
            else None
        )
        app.state.runtime, app.state.worker, app.state.poller = runtime, worker, poller
        await runtime.start()
        await source.start()
        runtime.supervise(source.run(), "consume:spans")
        runtime.supervise(worker.run(), "evaluate")
        if poller is not None:  # it connects on its first reading: a broker down cannot stop us
            runtime.supervise(poller.run(), "watch-offsets")
        try:
            yield
        finally:
            await source.stop()
            await runtime.stop()  # cancels the poller first: no verdict reaches a closed worker
            if poller is not None:
                await poller.stop()
            await worker.close()

    app = FastAPI(title="genwire-monitor", lifespan=lifespan)
    app.include_router(health_router())
    app.include_router(trace_router(cfg.jaeger_ui_url))

    @app.get("/", response_class=HTMLResponse)
    async def status_page(request: Request) -> HTMLResponse:
        worker: EngineWorker = request.app.state.worker
        return HTMLResponse(await worker.page())

    @app.get("/api/status")
    async def status(request: Request) -> dict[str, object]:
        worker: EngineWorker = request.app.state.worker
        return await worker.status()

    return app
