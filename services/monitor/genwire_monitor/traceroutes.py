"""``/traces`` (search) and ``/traces/{trace_id}`` (waterfall): the monitor's trace view.

Reads Jaeger's query API at ``jaeger_ui_url`` on each request (nothing cached: a trace still
arriving shows more spans on reload). 404 while Jaeger lacks the trace, 502 when Jaeger is down.
"""

from __future__ import annotations

from fastapi import APIRouter, Query
from fastapi.responses import HTMLResponse

from genwire.telemetry import semconv
from genwire_monitor import tracepage
from genwire_monitor.jaeger import fetch_trace, search, services
from genwire_monitor.traceview import TRACE_ID, JaegerUnavailable, TraceNotFound

DEFAULT_SERVICE = "genwire-inference"
DEFAULT_OPERATION = semconv.SPAN_TRITON_GENERATE  # one span per model request: a list of requests
NOT_FOUND_REFRESH_S = 3


def _unavailable(jaeger_url: str, exc: JaegerUnavailable) -> HTMLResponse:
    return HTMLResponse(
        tracepage.render_problem(
            "Jaeger is unreachable",
            f"The monitor could not read traces from Jaeger's query API at {jaeger_url} "
            f"({exc}). Check it with `genwire status`.",
        ),
        status_code=502,
    )


def trace_router(jaeger_url: str, *, timeout_s: float = 5.0) -> APIRouter:
    """The two pages, reading from the Jaeger query API at ``jaeger_url``."""
    router = APIRouter()
    base = jaeger_url.rstrip("/")

    @router.get("/traces/{trace_id}", response_class=HTMLResponse)
    async def trace(trace_id: str) -> HTMLResponse:
        if not TRACE_ID.match(trace_id):
            return HTMLResponse(
                tracepage.render_problem(
                    "Not a trace id", f"{trace_id!r} is not a trace id (up to 32 hex digits)."
                ),
                status_code=400,
            )
        trace_id = trace_id.lower().rjust(32, "0")
        try:
            view = await fetch_trace(base, trace_id, timeout_s=timeout_s)
        except TraceNotFound:
            return HTMLResponse(
                tracepage.render_problem(
                    "Trace not found (yet)",
                    f"Jaeger has no trace {trace_id}. Spans reach it through Kafka within a "
                    "few seconds of a request; a trace older than Jaeger's retention is gone.",
                    refresh_s=NOT_FOUND_REFRESH_S,
                ),
                status_code=404,
            )
        except JaegerUnavailable as exc:
            return _unavailable(base, exc)
        return HTMLResponse(tracepage.render_trace(view, api_url=f"{base}/api/traces/{trace_id}"))

    @router.get("/traces", response_class=HTMLResponse)
    async def traces(
        service: str | None = None,
        operation: str | None = None,
        limit: int = Query(20, ge=1, le=500),
        health: bool = False,
    ) -> HTMLResponse:
        if service is None:  # first visit: recent model requests
            service, operation = DEFAULT_SERVICE, operation or DEFAULT_OPERATION
        operation = (operation or "").strip()
        try:
            names = await services(base, timeout_s=timeout_s)
            found = await search(
                base, service, operation=operation, limit=limit, timeout_s=timeout_s
            )
        except (JaegerUnavailable, TraceNotFound) as exc:
            return _unavailable(base, JaegerUnavailable(str(exc)))
        return HTMLResponse(
            tracepage.render_search(
                found,
                services=names,
                service=service,
                operation=operation,
                limit=limit,
                include_health=health,
            )
        )

    return router
