"""What every service serves over HTTP (``/healthz``, ``/readyz``, ``/metrics``), and ``serve``:
uvicorn on the service's port, exiting with ``EXIT_FAILED`` when the runtime gave up."""

from __future__ import annotations

import asyncio
import ssl
from typing import Any

from fastapi import APIRouter, FastAPI, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from genwire.service import loop
from genwire.service.runtime import ServiceRuntime
from genwire.settings import ServiceSettings


def health_router() -> APIRouter:
    """``/healthz`` (alive), ``/readyz`` (ready to serve) and Prometheus ``/metrics``."""
    router = APIRouter()

    @router.get("/healthz")
    async def healthz(request: Request) -> dict[str, str]:
        return {"status": "ok", "service": request.app.state.runtime.settings.service_name}

    @router.get("/readyz")
    async def readyz(request: Request, response: Response) -> dict[str, Any]:
        runtime: ServiceRuntime = request.app.state.runtime
        reasons = runtime.reasons()
        if reasons:
            response.status_code = 503
        return {"ready": not reasons, "failed": runtime.failed, "reasons": reasons}

    @router.get("/metrics")
    async def metrics(request: Request) -> Response:
        runtime: ServiceRuntime = request.app.state.runtime
        return Response(generate_latest(runtime.registry), media_type=CONTENT_TYPE_LATEST)

    return router


EXIT_FAILED = 3
"""Exit status of a service that stopped because it could not make progress (``fail``)."""


def tls_options(settings: ServiceSettings) -> dict[str, Any]:
    """uvicorn's TLS arguments: none unless ``tls_certfile`` is set; with ``tls_client_ca_file``
    a client certificate signed by that CA is required (mTLS)."""
    if settings.tls_certfile is None:
        return {}
    options: dict[str, Any] = {
        "ssl_certfile": str(settings.tls_certfile),
        "ssl_keyfile": str(settings.tls_keyfile),
    }
    if settings.tls_client_ca_file is not None:
        options |= {
            "ssl_ca_certs": str(settings.tls_client_ca_file),
            "ssl_cert_reqs": ssl.CERT_REQUIRED,
        }
    return options


HTTP_PARSER = "h11"
"""uvicorn's HTTP/1.1 implementation, named so that an installed httptools never replaces it:
h11 refuses a request whose headers outgrow its buffer (uvicorn's 16 KiB); httptools parses in
C, 0.2–0.3 core-ms less per request, but under uvicorn it bounds no header (a 50 MB header was
answered 200 and cost the process ~48 MB): not for a public port (docs/benchmarks.md,
*Round 8: the HTTP parser*)."""


def uvicorn_config(app: FastAPI, settings: ServiceSettings) -> Any:
    """The service's uvicorn configuration (its port, TLS, no access log, h11, keep-alive)."""
    import uvicorn

    return uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_config=None,
        access_log=False,
        http=HTTP_PARSER,
        timeout_keep_alive=settings.http_keep_alive_s,
        **tls_options(settings),
    )


def serve(app: FastAPI, settings: ServiceSettings) -> None:
    """Run ``app`` under uvicorn on the service's health/metrics port.

    A service that gave up (``ServiceRuntime.fail``) stops gracefully, then exits with
    ``EXIT_FAILED``, so any supervisor sees a failure rather than a requested stop.
    """
    from genwire.service.quiet_server import QuietServer

    def failed() -> bool:
        runtime = getattr(app.state, "runtime", None)
        return isinstance(runtime, ServiceRuntime) and runtime.failed is not None

    async def failure() -> None:
        # Awaited once the app's lifespan has started (the runtime exists by then); its end
        # is a graceful stop: drain, commit, flush.
        runtime = getattr(app.state, "runtime", None)
        await (runtime.failure.wait() if isinstance(runtime, ServiceRuntime) else asyncio.Future())

    server = QuietServer(uvicorn_config(app, settings), stop_when=failure)
    loop.run(server.serve(), settings.event_loop)
    if failed():
        raise SystemExit(EXIT_FAILED)
