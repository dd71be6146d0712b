"""The trace viewer's client of Jaeger's query API: the three HTTP calls it makes.

Jaeger's failures become ``JaegerUnavailable`` (unreachable, an error status, not JSON) and
``TraceNotFound`` (404, or an answer without the trace); answers are read by
``genwire_monitor.traceview``.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

import httpx

from genwire_monitor.traceview import (
    JaegerUnavailable,
    TraceNotFound,
    TraceSummary,
    TraceView,
    layout,
    summaries,
)


async def _get(base_url: str, path: str, params: Mapping[str, str], timeout_s: float) -> Any:
    url = f"{base_url.rstrip('/')}{path}"
    try:
        # trust_env=False: a proxy from the environment must not intercept a loopback call.
        async with httpx.AsyncClient(timeout=timeout_s, trust_env=False) as http:
            response = await http.get(url, params=params)
    except httpx.HTTPError as exc:
        raise JaegerUnavailable(f"Jaeger at {base_url} did not answer: {exc!r}") from exc
    if response.status_code == 404:
        raise TraceNotFound(f"Jaeger answered 404 for {path}")
    if response.status_code != 200:
        raise JaegerUnavailable(
            f"Jaeger answered {response.status_code} for {path}: {response.text[:200]}"
        )
    try:
        return response.json()
    except ValueError as exc:
        raise JaegerUnavailable(f"Jaeger's answer for {path} is not JSON") from exc


async def fetch_trace(base_url: str, trace_id: str, *, timeout_s: float = 5.0) -> TraceView:
    """One trace, laid out; ``TraceNotFound`` or ``JaegerUnavailable`` otherwise."""
    return layout(await _get(base_url, f"/api/traces/{trace_id}", {}, timeout_s))


async def search(
    base_url: str,
    service: str,
    *,
    operation: str = "",
    limit: int = 20,
    lookback_s: float = 3600.0,
    timeout_s: float = 5.0,
) -> list[TraceSummary]:
    """Traces of the last ``lookback_s`` with a span of ``service`` (and ``operation``)."""
    end_us = int(time.time() * 1e6)
    params = {
        "service": service,
        "limit": str(limit),
        "start": str(end_us - int(lookback_s * 1e6)),
        "end": str(end_us),
    }
    if operation:
        params["operation"] = operation
    try:
        return summaries(await _get(base_url, "/api/traces", params, timeout_s))
    except TraceNotFound:
        return []


async def services(base_url: str, *, timeout_s: float = 5.0) -> list[str]:
    """The service names Jaeger has seen."""
    data = await _get(base_url, "/api/services", {}, timeout_s)
    names = data.get("data") if isinstance(data, Mapping) else None
    return sorted(str(n) for n in names or ())
