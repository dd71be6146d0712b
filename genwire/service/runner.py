"""One runner for every service: a service declares what differs, the runner does the rest.

A service's ``app.py`` declares a ``ServiceSpec`` (its settings class, its stage, its ``setup``
and its routers); its ``__main__.py`` calls ``run(SPEC)``. What is the same for all of them:

- ``run``: read the settings from the environment, configure logging, ``serve`` the app on the
  event loop ``event_loop`` names (``genwire.service.loop``: uvloop when installed)
  (uvicorn on the service's port until SIGTERM; exit status ``EXIT_FAILED`` after
  ``ServiceRuntime.fail``);
- ``ServiceSpec.app``: the FastAPI app with ``/healthz``, ``/readyz``, ``/metrics`` and the
  service's routers, and a lifespan that
    1. creates the ``ServiceRuntime`` and keeps it on ``app.state.runtime``;
    2. enters ``setup(settings, runtime, app)``: the service builds its resources, registers
       its consumers (and readiness checks), and keeps on ``app.state`` what its routes use;
    3. starts the runtime (producer, consumers, supervised tasks);
    4. enters what ``setup`` yielded, if anything (``Running``: work that needs the started
       runtime, such as the gateway's servers or the monitor's span source);
    5. in a service's own process (``run``), collects start-up's garbage once and freezes the
       rest (``freeze_startup_heap``);
    6. serves; then, in reverse order, leaves ``Running``, stops the runtime (drain, commit,
       flush) and leaves ``setup`` (which closes the service's resources). The way out is the
       same when a step of the way in failed: what was entered is left, the runtime is stopped.
"""

from __future__ import annotations

import contextlib
import gc
import logging
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from typing import Generic, TypeVar

from fastapi import APIRouter, FastAPI
from fastapi.telemetry import TelemetryConfig
from opentelemetry.sdk.trace.export import SpanExporter

from genwire import kafka_security
from genwire.service import loop
from genwire.service.http import health_router, serve
from genwire.service.runtime import ServiceRuntime
from genwire.settings import ServiceSettings
from genwire.telemetry import configure_logging

S = TypeVar("S", bound=ServiceSettings)

Running = AbstractAsyncContextManager[None]
"""What a setup may yield: entered once the runtime has started, left before it stops."""

Setup = Callable[[S, ServiceRuntime, FastAPI], AbstractAsyncContextManager[Running | None]]
"""A service's own wiring: an async context manager (build, then ``yield``, then close)."""


NO_TELEMETRY: TelemetryConfig = {"tracing": False, "metrics": False, "logs": False}
"""FastAPI's native OpenTelemetry, switched off: it would open its own SERVER span per HTTP
request on the global tracer provider (ours), a second trace beside genwire's (whose root is
the gateway's own SERVER span, ``genwire_gateway.telemetry``), and count every request twice."""


def no_routers(settings: ServiceSettings) -> Sequence[APIRouter]:
    """The default of ``ServiceSpec.routers``: only the health router."""
    return ()


@dataclass(frozen=True)
class ServiceSpec(Generic[S]):
    """What one service declares; everything else is the runner's."""

    stage: str
    """The stage name (``genwire.telemetry.semconv.STAGE_*``): metrics labels, tracer name."""
    settings: type[S]
    """Its settings class, read from the environment by ``run``."""
    setup: Setup[S]
    """Its resources, consumers and their cleanup (see the module docstring)."""
    routers: Callable[[S], Sequence[APIRouter]] = no_routers
    """Its HTTP routes beside the health router."""
    global_tracer: bool = True
    """Install the runtime's tracer provider as OpenTelemetry's global one."""

    def app(
        self,
        settings: S | None = None,
        *,
        span_exporter: SpanExporter | None = None,
        set_global_tracer: bool | None = None,
        freeze_heap: bool = False,
    ) -> FastAPI:
        """The service's app; everything stateful is created in its lifespan, on ``app.state``.

        ``span_exporter`` and ``set_global_tracer=False`` let tests run several in one process;
        ``freeze_heap`` (``run``: the process is the service's own) freezes the start-up heap.
        """
        cfg = settings if settings is not None else self.settings()
        global_tracer = self.global_tracer if set_global_tracer is None else set_global_tracer

        @asynccontextmanager
        async def lifespan(app: FastAPI) -> AsyncIterator[None]:
            runtime = ServiceRuntime(
                cfg, self.stage, span_exporter=span_exporter, set_global_tracer=global_tracer
            )
            app.state.runtime = runtime
            stopped = False
            try:
                async with self.setup(cfg, runtime, app) as running:
                    try:
                        await runtime.start()
                        async with running if running is not None else contextlib.nullcontext():
                            if freeze_heap:
                                freeze_startup_heap()
                            yield
                    finally:
                        stopped = True
                        await runtime.stop()  # before the setup's cleanup: nothing in flight
            finally:
                if not stopped:  # the setup failed before it yielded: the runtime still stops
                    await runtime.stop()

        # No redirect of "/path/" to "/path": a 307 with an empty body is no API's answer (and
        # clients do not re-send a POST's body); an unknown path is a 404 like any other.
        app = FastAPI(
            title=f"genwire-{self.stage}",
            lifespan=lifespan,
            telemetry=NO_TELEMETRY,
            redirect_slashes=False,
        )
        app.include_router(health_router())
        for router in self.routers(cfg):
            app.include_router(router)
        return app


def run(spec: ServiceSpec[S]) -> None:
    """``python -m genwire_<service>``: read the settings from the environment, configure
    logging and serve until SIGTERM (exit status ``EXIT_FAILED`` after ``runtime.fail``)."""
    settings = spec.settings()
    configure_logging(settings.log_level, settings.log_json)
    kafka_security.use(settings)  # every Kafka client of this process connects as this service
    logging.getLogger(__name__).info("kafka: %s", kafka_security.describe(settings))
    runs_on = loop.label(settings.event_loop)  # uvloop asked for and missing: fail now
    logging.getLogger(__name__).info("event loop: %s (event_loop=%s)", runs_on, settings.event_loop)
    serve(spec.app(settings, freeze_heap=True), settings)


def freeze_startup_heap() -> None:
    """Collect start-up's garbage once, then leave every object alive now out of all later
    collections (``gc.freeze``): a full collection then scans only what requests allocated —
    1.5–2.8 ms instead of 110–119 ms for a stage's ~99 k start-up objects, a pause that landed
    on the request path (docs/benchmarks.md, *A stage's critical path*). A cycle among start-up
    objects that becomes garbage later is never collected (start-up builds what lives); the
    consumers already run then, so a few first requests' objects may be frozen too, once."""
    gc.collect()
    gc.freeze()
