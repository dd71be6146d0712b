"""Wiring of the gateway service: HTTP (FastAPI) and gRPC in one process (the runner does the
rest)."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager

from fastapi import APIRouter, FastAPI
from opentelemetry.sdk.trace.export import SpanExporter

from genwire.apikeys import KeyStore
from genwire.redaction import Redactor, load_hook
from genwire.redisconn import connect
from genwire.redisconn import watch as watch_redis
from genwire.results import ResultStore
from genwire.service import Running, ServiceRuntime, ServiceSpec
from genwire.telemetry import semconv as sc
from genwire_gateway.auth import Authenticator, AuthInterceptor, AuthMetrics, AuthMiddleware
from genwire_gateway.config import GatewaySettings
from genwire_gateway.errors import GatewayError
from genwire_gateway.feedback import add_to_server as add_feedback_service
from genwire_gateway.feedback import feedback_router
from genwire_gateway.grpc_service import GenerationServicer, build_server, set_serving
from genwire_gateway.http_api import install_error_handlers, openai_router
from genwire_gateway.limits import Limiter
from genwire_gateway.models import ModelCatalog
from genwire_gateway.replies import ReplyMetrics, ReplyReader, WaiterRegistry
from genwire_gateway.telemetry import GatewayMetrics
from genwire_gateway.usage import MeteredGateway, UsageMetrics

log = logging.getLogger(__name__)


@asynccontextmanager
async def setup(
    cfg: GatewaySettings, runtime: ServiceRuntime, app: FastAPI
) -> AsyncIterator[Running]:
    """Redis, the reply reader, the model catalogue, the gRPC server; the gateway core.

    Yields ``serving``: once the runtime has started, the reply reader (with its first reply
    partitions), the heartbeat and the gRPC server start; before it stops, they stop taking
    calls and end the waits left.
    """
    registry = WaiterRegistry()
    redis = connect(cfg.redis_url, timeout_s=cfg.redis_timeout_s)
    replies = ReplyReader(
        cfg.kafka_bootstrap_servers,
        registry,
        runtime.tracer,
        topic=cfg.reply_topic,
        group_id=cfg.reply_group,
        client_id=f"{cfg.service_name}-replies",
        metrics=ReplyMetrics(runtime.registry),
        session_timeout_ms=cfg.kafka_session_timeout_ms,
        read_partitions=cfg.reply_partitions_read,
    )
    runtime.add_check(replies.reasons)
    store = ResultStore(redis, ttl_s=cfg.claim_ttl_s)
    auth = (
        Authenticator(
            KeyStore(redis),
            cache_s=cfg.auth_cache_s,
            stale_s=cfg.auth_stale_s,
            poll_s=cfg.auth_poll_s,
            max_entries=cfg.auth_cache_max,
            metrics=AuthMetrics(runtime.registry),
        )
        if cfg.auth_enabled
        else None
    )
    app.state.auth = auth
    gateway = MeteredGateway(
        cfg,
        runtime.producer,
        store,
        registry,
        replies,
        limiter=Limiter(redis),
        usage_metrics=UsageMetrics(runtime.registry, cfg.usage_max_keys),
        redact=Redactor(cfg.redact_patterns, load_hook(cfg.redaction_hook)),
    )
    metrics = GatewayMetrics(runtime.registry)
    catalog = ModelCatalog(
        cfg.triton_http_url,
        cfg.repository,
        cache_s=cfg.models_cache_s,
        default_model=cfg.default_model,
        settings=cfg,
    )
    app.state.gateway = gateway
    app.state.replies = replies
    app.state.gateway_metrics = metrics
    app.state.models = catalog
    server, health = build_server(
        cfg,
        GenerationServicer(gateway, runtime.tracer, metrics),
        interceptors=[
            AuthInterceptor(lambda: getattr(app.state, "auth", None), gateway.early_refusal)
        ],
    )
    app.state.grpc_server = server
    # Feedback calls are traced and counted like the GenerationService's (feedback.py).
    add_feedback_service(server, gateway, runtime.tracer, metrics)

    @asynccontextmanager
    async def serving() -> AsyncIterator[None]:
        try:
            await replies.start(cfg.replies_ready_timeout_s)
            runtime.supervise(replies.run(), "replies")
            runtime.supervise(gateway.heartbeat(), "heartbeat")
            if auth is not None:
                runtime.supervise(auth.run(), "key-changes")
            await redis.ping()  # fail fast when Redis is not there
            runtime.supervise(
                watch_redis(redis, runtime.dependencies, cfg.redis_probe_s), "redis-probe"
            )
            await server.start()
            await set_serving(health, True)
            log.info(
                "gateway serving gRPC on %s:%s and HTTP on %s:%s",
                cfg.grpc_host,
                cfg.grpc_port,
                cfg.host,
                cfg.port,
            )
            yield
        finally:
            await set_serving(health, False)
            # Stop taking calls, give running ones a moment, then end the waits left.
            await server.stop(grace=min(5.0, cfg.shutdown_timeout_s))
            registry.fail_all(GatewayError("the gateway is stopping", code="unavailable"))
            await gateway.drain()

    try:
        yield serving()
    finally:  # after the runtime stopped
        await replies.stop()
        with contextlib.suppress(Exception):
            await redis.aclose()  # type: ignore[attr-defined]  # (types-redis predates aclose)
        await catalog.close()


def routers(cfg: GatewaySettings) -> Sequence[APIRouter]:
    """The OpenAI-compatible HTTP API (``/v1/...``)."""
    return [openai_router(), feedback_router()]


class _GatewaySpec(ServiceSpec[GatewaySettings]):
    """The gateway's spec: its app also checks API keys (``auth.AuthMiddleware``)."""

    def app(
        self,
        settings: GatewaySettings | None = None,
        *,
        span_exporter: SpanExporter | None = None,
        set_global_tracer: bool | None = None,
        freeze_heap: bool = False,
    ) -> FastAPI:
        app = super().app(
            settings,
            span_exporter=span_exporter,
            set_global_tracer=set_global_tracer,
            freeze_heap=freeze_heap,
        )
        app.add_middleware(AuthMiddleware)
        # Last: its middleware wraps the auth middleware (a key refusal gets x-trace-id too).
        install_error_handlers(app)  # OpenAI's error shape on every route (H-api)
        return app


SERVICE = _GatewaySpec(
    stage=sc.STAGE_GATEWAY, settings=GatewaySettings, setup=setup, routers=routers
)


def create_app(
    settings: GatewaySettings | None = None,
    *,
    span_exporter: SpanExporter | None = None,
    set_global_tracer: bool = True,
) -> FastAPI:
    """The gateway app (the runtime, the servers and their clients start in its lifespan).

    ``set_global_tracer=False`` lets tests run several gateways in one process.
    """
    return SERVICE.app(settings, span_exporter=span_exporter, set_global_tracer=set_global_tracer)
