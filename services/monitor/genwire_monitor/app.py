"""Wiring of the monitor service: span source → engine thread → alerts, page; broker offsets of
the watched groups → stall verdicts → the same engine thread; ``genwire.config`` → the policies
the engine judges canaries by (the runner does the rest)."""

from __future__ import annotations

import dataclasses
import functools
import logging
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from typing import Any

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import HTMLResponse
from opentelemetry.sdk.trace.export import SpanExporter

from genwire.kafka.consumer import FETCH_MAX_WAIT_MS
from genwire.kafka.security import client_options
from genwire.policyfeed import PolicyFeed, PolicyStore
from genwire.service import Running, ServiceRuntime, ServiceSpec
from genwire.telemetry import semconv as sc
from genwire.topics import Topic
from genwire_monitor import promexport
from genwire_monitor.config import MonitorSettings
from genwire_monitor.offsetpoll import OffsetPoller
from genwire_monitor.policyfollow import PolicyFollower
from genwire_monitor.source import Sink, SpanSource
from genwire_monitor.traceroutes import trace_router
from genwire_monitor.webhook import AlertmanagerClient
from genwire_monitor.worker import EngineWorker

log = logging.getLogger(__name__)


@asynccontextmanager
async def setup(
    cfg: MonitorSettings,
    runtime: ServiceRuntime,
    app: FastAPI,
    *,
    clock: Callable[[], float] | None = None,
) -> AsyncIterator[Running]:
    """The engine worker, the span source, the offset poller, the policy follower; ready once
    the source has its partitions and the follower has read ``genwire.config`` to its end.

    Yields ``consuming``: once the runtime has started, the follower, the source, the evaluation
    loop and the poller run; the source stops (committing what it handed over) before the
    runtime does.
    """
    collector = promexport.register(runtime.registry)
    webhook = (
        AlertmanagerClient(
            cfg.alertmanager_url, f"http://{cfg.host}:{cfg.port}/", registry=runtime.registry
        )
        if cfg.alertmanager_url
        else None
    )
    extra: dict[str, Any] = {"clock": clock} if clock else {}
    follower = (
        PolicyFollower(
            PolicyStore(runtime.registry), cfg.config_topic, functools.partial(policy_feed, cfg)
        )
        if cfg.config_topic
        else None
    )
    worker = EngineWorker(cfg, runtime.producer, collector, webhook, policies=follower, **extra)
    source = span_source(cfg, worker.ingest)

    def source_ready() -> list[str]:
        return [] if source.ready else [f"the span source has no partitions of {Topic.SPANS} yet"]

    runtime.add_check(source_ready)
    runtime.add_check(worker.not_ready)  # alerts/rollbacks unpublished, or no evaluation
    if follower is not None:  # policies not current: canary alerts kept, no rollback
        runtime.add_check(follower.not_ready)
    feedback = span_source(cfg, worker.feedback, feedback=True) if cfg.feedback_topic else None
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
    app.state.worker, app.state.poller = worker, poller

    @asynccontextmanager
    async def consuming() -> AsyncIterator[None]:
        await worker.restore()  # the firing alerts, before the first evaluation
        if follower is not None:  # first: until it is current, canary alerts are only held
            runtime.supervise(follower.run(), "follow-policies")
        await source.start()
        runtime.supervise(source.run(), "consume:spans")
        runtime.supervise(worker.run(), "evaluate")
        if poller is not None:  # it connects on its first reading: a broker down cannot stop us
            runtime.supervise(poller.run(), "watch-offsets")
        if feedback is not None:
            await feedback.start()
            runtime.supervise(feedback.run(), "consume:feedback")
        try:
            yield
        finally:
            if feedback is not None:
                await feedback.stop()
            await source.stop()

    try:
        yield consuming()
    finally:  # the runtime has stopped and cancelled the poller: no verdict reaches a closed worker
        if poller is not None:
            await poller.stop()
        await worker.close()


def span_source(cfg: MonitorSettings, sink: Sink, *, feedback: bool = False) -> SpanSource:
    """The reader of ``cfg.spans_topic``, or (``feedback``) of ``cfg.feedback_topic``: no
    request passes through that one, so its fetches wait ``kafka_quiet_fetch_max_wait_ms``
    (a record still ends one at once)."""
    return SpanSource(
        topic=cfg.feedback_topic if feedback else cfg.spans_topic,
        group_id=f"{cfg.group_id}-feedback" if feedback else cfg.group_id,
        bootstrap_servers=cfg.kafka_bootstrap_servers,
        sink=sink,
        max_records=cfg.max_batch_records,
        commit_interval_s=cfg.commit_interval_s,
        auto_offset_reset=cfg.auto_offset_reset,
        fetch_max_wait_ms=(cfg.kafka_quiet_fetch_max_wait_ms if feedback else FETCH_MAX_WAIT_MS),
    )


def policy_feed(cfg: MonitorSettings, store: PolicyStore) -> PolicyFeed:
    """The monitor's view of ``cfg.config_topic``, on the quiet fetch wait like every
    service's policy feed."""
    return PolicyFeed(
        cfg.kafka_bootstrap_servers,
        store=store,
        topic=cfg.config_topic,
        poll_ms=cfg.kafka_quiet_fetch_max_wait_ms,
        client_kwargs=client_options(cfg),
    )


def status_router() -> APIRouter:
    """The status page (``/``) and its data (``/api/status``)."""
    router = APIRouter()

    @router.get("/", response_class=HTMLResponse)
    async def status_page(request: Request) -> HTMLResponse:
        worker: EngineWorker = request.app.state.worker
        return HTMLResponse(await worker.page())

    @router.get("/api/status")
    async def status(request: Request) -> dict[str, object]:
        worker: EngineWorker = request.app.state.worker
        return await worker.status()

    return router


def routers(cfg: MonitorSettings) -> Sequence[APIRouter]:
    """The trace view (``/traces``) and the status page."""
    return [trace_router(cfg.jaeger_ui_url), status_router()]


SERVICE = ServiceSpec(
    stage=sc.STAGE_MONITOR,
    settings=MonitorSettings,
    setup=setup,
    routers=routers,
    global_tracer=False,
)


def create_app(
    settings: MonitorSettings | None = None,
    *,
    clock: Callable[[], float] | None = None,
    span_exporter: SpanExporter | None = None,
) -> FastAPI:
    """The monitor app (the runtime, the source and the worker start in its lifespan)."""
    spec = (
        dataclasses.replace(SERVICE, setup=functools.partial(setup, clock=clock))
        if clock
        else SERVICE
    )
    return spec.app(settings, span_exporter=span_exporter)
