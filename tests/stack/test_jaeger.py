"""Tracing backbone: a service's span goes through Kafka (``otlp_spans``) into Jaeger."""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import psutil
from aiokafka import AIOKafkaConsumer, TopicPartition
from genwire_bench.jaeger_memory import HEAP
from genwire_stack import child_pid, down, ensure_up
from genwire_stack.components import Component, Jaeger

from genwire.service import ServiceRuntime
from genwire.settings import CommonSettings, ServiceSettings
from genwire.topics import TOPIC_SPECS, Topic


async def _find_trace(base: str, trace_id: str, timeout_s: float) -> dict[str, object] | None:
    deadline = time.monotonic() + timeout_s
    async with httpx.AsyncClient(base_url=base, timeout=5, trust_env=False) as http:
        while time.monotonic() < deadline:
            response = await http.get(f"/api/traces/{trace_id}")
            if response.status_code == 200:
                data = response.json().get("data") or []
                if data:
                    trace: dict[str, object] = data[0]
                    return trace
            await asyncio.sleep(0.25)
    return None


async def _commit_group_at_end(bootstrap: str, group: str) -> None:
    """Give ``group`` committed offsets at the end of every otlp_spans partition: it then reads
    from now on, and resumes there after a restart, whatever partition a span lands on."""
    spec = next(s for s in TOPIC_SPECS if s.name == Topic.SPANS)
    parts = [TopicPartition(Topic.SPANS, p) for p in range(spec.partitions)]
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False
    )
    await consumer.start()
    try:
        consumer.assign(parts)
        await consumer.commit(await consumer.end_offsets(parts))
    finally:
        await consumer.stop()


async def emit_span(service: str, name: str) -> str:
    """One span from a service runtime, exported to Kafka as every service does; its trace id."""
    assert os.environ.get("OTEL_TRACES_EXPORTER", "kafka") == "kafka"
    # The runtime's default exporter is the KafkaSpanExporter, as in every service.
    runtime = ServiceRuntime(
        ServiceSettings(service_name=service), "stack-test", set_global_tracer=False
    )
    with runtime.tracer.start_as_current_span(name) as span:
        span.set_attribute("genwire.test", "tracing backbone")
        trace_id = format(span.get_span_context().trace_id, "032x")
    await asyncio.to_thread(runtime.tracer_provider.shutdown)  # flush through Kafka
    return trace_id


async def test_a_service_span_reaches_jaeger_through_kafka(infra: CommonSettings) -> None:
    service = f"genwire-stack-test-{uuid.uuid4().hex[:8]}"
    trace_id = await emit_span(service, "stack-test-span")

    trace = await _find_trace(infra.jaeger_ui_url, trace_id, timeout_s=30)
    assert trace is not None, f"trace {trace_id} did not appear in Jaeger within 30 s"
    spans = trace["spans"]
    processes = trace["processes"]
    assert isinstance(spans, list) and isinstance(processes, dict)
    assert [s["operationName"] for s in spans] == ["stack-test-span"]
    assert processes[spans[0]["processID"]]["serviceName"] == service

    async with httpx.AsyncClient(base_url=infra.jaeger_ui_url, timeout=5, trust_env=False) as h:
        services = (await h.get("/api/services")).json()["data"]
    assert service in services


@dataclass
class PrivateJaeger:
    """A second Jaeger (own ports, data and consumer group) beside the stack's."""

    settings: CommonSettings
    catalog: dict[str, Component]
    base: str


@asynccontextmanager
async def private_jaeger(
    infra: CommonSettings, home: Path, **overrides: Any
) -> AsyncIterator[PrivateJaeger]:
    """Start one; it reads ``otlp_spans`` from now on, and is stopped on the way out."""
    settings = CommonSettings(home=home, **overrides)
    # From the newest offset: the shared otlp_spans may hold a day of spans (hundreds of MB
    # after a chaos run), which a new group starting at the oldest would read for minutes.
    group = f"test-jaeger-{uuid.uuid4().hex[:8]}"
    await _commit_group_at_end(infra.kafka_bootstrap_servers, group)
    jaeger = Jaeger.beside(infra, settings, group=group, initial_offset="latest")
    catalog: dict[str, Component] = {"jaeger": jaeger}
    try:
        ensure_up(["jaeger"], settings=settings, catalog=catalog, model=False)
        yield PrivateJaeger(settings, catalog, f"http://127.0.0.1:{jaeger.ui_port}")
    finally:
        down(settings=settings, catalog=catalog)


async def _first_stored_span(jaeger: PrivateJaeger, service: str, name: str) -> str:
    """Healthy is not yet in its group: a span sent before it joins is behind "latest"."""
    for _ in range(12):
        trace_id = await emit_span(service, name)
        if await _find_trace(jaeger.base, trace_id, timeout_s=5):
            return trace_id
    raise AssertionError("no span reached the private Jaeger")


async def test_a_jaeger_restart_loses_no_span(infra: CommonSettings, tmp_path: Path) -> None:
    """A private Jaeger is stopped and started again.

    Spans exported while it is down arrive after the restart (its Kafka offsets were committed),
    and spans stored before it are still there (Badger keeps them on disk).
    """
    service = f"genwire-stack-restart-{uuid.uuid4().hex[:8]}"
    async with private_jaeger(infra, tmp_path) as jaeger:
        before = await _first_stored_span(jaeger, service, "before-restart")

        down(["jaeger"], settings=jaeger.settings, catalog=jaeger.catalog)
        during = await emit_span(service, "while-jaeger-was-down")
        ensure_up(["jaeger"], settings=jaeger.settings, catalog=jaeger.catalog, model=False)

        base = jaeger.base
        assert await _find_trace(base, during, timeout_s=30), "span sent during the outage lost"
        assert await _find_trace(base, before, timeout_s=5), "stored span lost by the restart"


async def test_jaeger_runs_with_the_memory_limit_and_span_ttl_of_its_settings(
    infra: CommonSettings, tmp_path: Path
) -> None:
    """GENWIRE_JAEGER_MEMORY_LIMIT reaches the Go runtime; GENWIRE_JAEGER_SPAN_TTL expires spans."""
    service = f"genwire-stack-ttl-{uuid.uuid4().hex[:8]}"
    ttl_s = 6
    async with private_jaeger(
        infra, tmp_path, jaeger_memory_limit="300MiB", jaeger_span_ttl=f"{ttl_s}s"
    ) as jaeger:
        pid = child_pid("jaeger", jaeger.settings)
        assert pid is not None
        environ = psutil.Process(pid).environ()
        assert environ["GOMEMLIMIT"] == "300MiB"
        assert environ["JAEGER_SPAN_TTL"] == "6s"
        # GENWIRE_JAEGER_NICE (default 10): below the pipeline's priority, as the stack runs it.
        own = psutil.Process().nice()
        assert psutil.Process(pid).nice() == min(19, own + jaeger.settings.jaeger_nice)
        assert own == 19 or psutil.Process(pid).nice() > own
        # The heap reading of `python -m genwire_bench.jaeger_memory` matches this Jaeger's own.
        port = jaeger.catalog["jaeger"].ports()["metrics"]
        async with httpx.AsyncClient(timeout=5, trust_env=False) as http:
            metrics = (await http.get(f"http://127.0.0.1:{port}/metrics")).text
        heap = HEAP.search(metrics)
        assert heap is not None and float(heap.group(1)) > 0

        stored = await _first_stored_span(jaeger, service, "short-lived")
        found_at = time.monotonic()
        async with httpx.AsyncClient(base_url=jaeger.base, timeout=5, trust_env=False) as http:
            while (status := (await http.get(f"/api/traces/{stored}")).status_code) == 200:
                # Written a moment before it was found: gone within the TTL plus the polling.
                assert time.monotonic() - found_at < ttl_s + 10, "span outlived its TTL"
                await asyncio.sleep(0.5)
        assert status == 404, f"Jaeger answered {status}, not 'no such trace'"
        # Gone by expiry, not by a store that lost its data: a new span is still stored.
        assert await _first_stored_span(jaeger, service, "after-expiry")


async def test_jaeger_trace_links_lead_to_the_monitors_trace_view(infra: CommonSettings) -> None:
    """The native build has no Jaeger UI: its page on 16686 forwards /trace/<id> to the monitor."""
    trace_id = "0af7651916cd43dd8448eb211c80319c"
    async with httpx.AsyncClient(base_url=infra.jaeger_ui_url, timeout=5, trust_env=False) as h:
        page = await h.get(f"/trace/{trace_id}")
        api = await h.get("/api/services")
    assert page.status_code == 200
    assert "text/html" in page.headers["content-type"]
    assert ":8090" in page.text and "/traces/" in page.text
    assert api.status_code == 200 and "data" in api.json()  # the query API is unaffected
