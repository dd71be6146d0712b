"""The first-run demo: one request through the whole pipeline, its text and its Jaeger trace.

``genwire demo`` runs it; ``genwire up`` (``make up``) calls ``run_demo()`` at the end.
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TextIO

import httpx

from genwire_gateway.client import GenwireClient, GenwireClientError

DEMO_PROMPT = "Once upon a time"


@dataclass
class DemoOutcome:
    """What the demo saw."""

    text: str = ""
    trace_id: str = ""
    trace_url: str = ""
    services: list[str] = field(default_factory=list)
    spans: int = 0
    error: str = ""


async def trace_services(
    jaeger_url: str, trace_id: str, *, wait_s: float = 10.0, expect: int = 4
) -> tuple[int, list[str]]:
    """(span count, service names) of a trace in Jaeger, waiting for ``expect`` services."""
    url = f"{jaeger_url.rstrip('/')}/api/traces/{trace_id}"
    deadline = time.monotonic() + wait_s
    spans, services = 0, []
    async with httpx.AsyncClient(timeout=3.0) as http:
        while True:
            try:
                response = await http.get(url)
                if response.status_code == 200:
                    data = response.json().get("data") or []
                    if data:
                        spans = len(data[0].get("spans", []))
                        services = sorted(
                            {
                                p.get("serviceName", "")
                                for p in data[0].get("processes", {}).values()
                            }
                        )
            except (httpx.HTTPError, ValueError):
                pass
            if len(services) >= expect or time.monotonic() > deadline:
                return spans, services
            await asyncio.sleep(0.5)


async def demo(
    *,
    target: str,
    jaeger_url: str,
    prompt: str = DEMO_PROMPT,
    max_tokens: int = 32,
    ready_wait_s: float = 60.0,
    timeout_s: float = 60.0,
    trace_url: Callable[[str], str] | None = None,
) -> DemoOutcome:
    """Wait for the gateway, send one request, look its trace up in Jaeger.

    ``trace_url`` makes the link printed for people (``CommonSettings.trace_url``: the monitor's
    trace view natively, the Jaeger UI under compose); default: Jaeger's ``/trace/<id>``.
    """
    outcome = DemoOutcome()
    async with GenwireClient(target, timeout_s=timeout_s) as client:
        deadline = time.monotonic() + ready_wait_s
        while not await client.healthy():
            if time.monotonic() > deadline:
                outcome.error = f"the gateway at {target} is not serving after {ready_wait_s:.0f} s"
                return outcome
            await asyncio.sleep(0.5)
        try:
            result = await client.generate(prompt, max_tokens=max_tokens, seed=7)
        except GenwireClientError as exc:
            outcome.error = str(exc)
            return outcome
    outcome.text = result.text
    outcome.trace_id = result.trace_id
    outcome.trace_url = (
        trace_url(result.trace_id)
        if trace_url
        else f"{jaeger_url.rstrip('/')}/trace/{result.trace_id}"
    )
    outcome.spans, outcome.services = await trace_services(jaeger_url, result.trace_id)
    return outcome


def run_demo(
    *,
    target: str | None = None,
    jaeger_url: str | None = None,
    prompt: str = DEMO_PROMPT,
    ready_wait_s: float = 60.0,
    out: TextIO = sys.stdout,
) -> int:
    """Run the demo and print it; returns an exit status (0: the request went through)."""
    from genwire_gateway.config import GatewaySettings

    settings = GatewaySettings()
    target = target or f"{settings.grpc_host}:{settings.grpc_port}"
    jaeger_url = jaeger_url or settings.jaeger_ui_url
    outcome = asyncio.run(
        demo(
            target=target,
            jaeger_url=jaeger_url,
            prompt=prompt,
            ready_wait_s=ready_wait_s,
            trace_url=settings.trace_url,
        )
    )
    if outcome.error:
        print(f"demo request failed: {outcome.error}", file=out)
        return 1
    print(f"demo prompt: {prompt!r}", file=out)
    print(f"generated:   {outcome.text!r}", file=out)
    seen = (
        f" ({outcome.spans} spans from {', '.join(outcome.services)})"
        if outcome.services
        else " (not in Jaeger yet: give it a few seconds)"
    )
    print(f"trace:       {outcome.trace_url}{seen}", file=out)
    print(f"trace (API): {jaeger_url.rstrip('/')}/api/traces/{outcome.trace_id}", file=out)
    return 0
