"""The runtime every service shares: telemetry, producer, consumers, supervised tasks, health.

A service's ``app.py`` builds one ``ServiceRuntime`` in its FastAPI lifespan and keeps it on
``app.state``; nothing here is a module global, so tests build as many as they like.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
from collections.abc import Coroutine
from typing import Any

from fastapi import APIRouter, FastAPI, Request, Response
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SpanExporter
from opentelemetry.trace import Tracer
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from genwire.kafka import EventConsumer, EventProducer
from genwire.kafka.consumer import Decoder, FailureEvents, Handler, InT
from genwire.metrics import ConsumerMetrics
from genwire.settings import ServiceSettings
from genwire.telemetry import configure_tracing

log = logging.getLogger(__name__)


class ServiceRuntime:
    """Owns a service's long-lived clients and background tasks, and their orderly stop."""

    def __init__(
        self,
        settings: ServiceSettings,
        stage: str,
        *,
        span_exporter: SpanExporter | None = None,
        set_global_tracer: bool = True,
    ) -> None:
        self.settings = settings
        self.stage = stage
        self.registry = CollectorRegistry()
        self.consumer_metrics = ConsumerMetrics(self.registry)
        self.tracer_provider: TracerProvider = configure_tracing(
            settings, settings.service_name, span_exporter, set_global=set_global_tracer
        )
        self.tracer: Tracer = self.tracer_provider.get_tracer(f"genwire.{stage}")
        self.producer = EventProducer(
            settings.kafka_bootstrap_servers, client_id=settings.service_name, tracer=self.tracer
        )
        self.consumers: list[EventConsumer[Any]] = []
        self._tasks: list[asyncio.Task[Any]] = []
        self.failed: str | None = None
        self.started = False

    def consumer(
        self,
        topic: str,
        model: type[InT],
        handler: Handler[InT],
        *,
        group_id: str | None = None,
        failure_events: FailureEvents | None = None,
        auto_offset_reset: str = "earliest",
        decoder: Decoder[InT] | None = None,
    ) -> EventConsumer[InT]:
        """Create (not start) a consumer with this service's settings and telemetry."""
        consumer: EventConsumer[InT] = EventConsumer(
            topic=topic,
            group_id=group_id or self.settings.service_name,
            model=model,
            handler=handler,
            producer=self.producer,
            bootstrap_servers=self.settings.kafka_bootstrap_servers,
            stage=self.stage,
            concurrency=self.settings.concurrency,
            max_retries=self.settings.max_retries,
            retry_backoff_s=self.settings.retry_backoff_s,
            failure_events=failure_events,
            decoder=decoder,
            tracer=self.tracer,
            metrics=self.consumer_metrics,
            auto_offset_reset=auto_offset_reset,
        )
        self.consumers.append(consumer)
        return consumer

    def supervise(self, coro: Coroutine[Any, Any, Any], name: str) -> asyncio.Task[Any]:
        """Run a background task; if it dies, /readyz fails and the process exits non-zero."""
        task = asyncio.create_task(coro, name=name)

        def _done(t: asyncio.Task[Any]) -> None:
            if t.cancelled() or self.failed:
                return
            exc = t.exception()
            if exc is not None:
                self.failed = f"{name}: {exc!r}"
                log.error("background task %s died: %r; stopping the service", name, exc)
                os.kill(os.getpid(), signal.SIGTERM)

        task.add_done_callback(_done)
        self._tasks.append(task)
        return task

    async def start(self) -> None:
        """Start the producer and every consumer (each consuming in a supervised task)."""
        await self.producer.start()
        for consumer in self.consumers:
            await consumer.start()
            self.supervise(consumer.run(), f"consume:{consumer.topic}")
        self.started = True

    @property
    def ready(self) -> bool:
        """Started, no task died, and every consumer has its partitions."""
        return self.started and self.failed is None and all(c.ready for c in self.consumers)

    async def stop(self) -> None:
        """Stop consuming, drain, flush the producer, flush and close telemetry."""
        timeout = self.settings.shutdown_timeout_s
        for consumer in self.consumers:
            with contextlib.suppress(Exception):
                await consumer.stop(timeout)
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        with contextlib.suppress(Exception):
            await self.producer.stop()
        # Flushing joins the exporter's thread: keep it off the event loop.
        await asyncio.to_thread(self.tracer_provider.shutdown)


def health_router() -> APIRouter:
    """``/healthz`` (alive), ``/readyz`` (ready to serve) and Prometheus ``/metrics``."""
    router = APIRouter()

    @router.get("/healthz")
    async def healthz(request: Request) -> dict[str, str]:
        return {"status": "ok", "service": request.app.state.runtime.settings.service_name}

    @router.get("/readyz")
    async def readyz(request: Request, response: Response) -> dict[str, Any]:
        runtime: ServiceRuntime = request.app.state.runtime
        if not runtime.ready:
            response.status_code = 503
        return {"ready": runtime.ready, "failed": runtime.failed}

    @router.get("/metrics")
    async def metrics(request: Request) -> Response:
        runtime: ServiceRuntime = request.app.state.runtime
        return Response(generate_latest(runtime.registry), media_type=CONTENT_TYPE_LATEST)

    return router


def serve(app: FastAPI, settings: ServiceSettings) -> None:
    """Run ``app`` under uvicorn on the service's health/metrics port."""
    import uvicorn

    uvicorn.run(app, host=settings.host, port=settings.port, log_config=None, access_log=False)
