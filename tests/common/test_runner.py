"""The service runner: the order of a service's lifespan, its way out when a step of the way in
fails, and the readiness it serves. No broker: the runtime's start is replaced by a stand-in."""

from __future__ import annotations

import gc
import weakref
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager

import httpx
import pytest
from fastapi import APIRouter, FastAPI
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from genwire.service import Running, ServiceRuntime, ServiceSpec, runner
from genwire.settings import ServiceSettings


class Recorder:
    """What happened, in order; and which step, if any, fails."""

    def __init__(self, fail_at: str | None = None) -> None:
        self.events: list[str] = []
        self.fail_at = fail_at
        self.check: list[str] = []

    def step(self, name: str) -> None:
        self.events.append(name)
        if name == self.fail_at:
            raise RuntimeError(f"{name} failed")


@pytest.fixture
def recorder(monkeypatch: pytest.MonkeyPatch) -> Recorder:
    rec = Recorder()
    real_stop = ServiceRuntime.stop

    async def start(self: ServiceRuntime) -> None:
        rec.step("runtime started")
        self.started = True

    async def stop(self: ServiceRuntime) -> None:
        rec.step("runtime stopped")
        await real_stop(self)  # nothing to stop but telemetry: it must not mind

    monkeypatch.setattr(ServiceRuntime, "start", start)
    monkeypatch.setattr(ServiceRuntime, "stop", stop)
    return rec


def _spec(rec: Recorder, *, running: bool = True) -> ServiceSpec[ServiceSettings]:
    @asynccontextmanager
    async def setup(
        cfg: ServiceSettings, runtime: ServiceRuntime, app: FastAPI
    ) -> AsyncIterator[Running | None]:
        rec.step("setup entered")
        runtime.add_check(lambda: list(rec.check))
        app.state.port = cfg.port

        @asynccontextmanager
        async def serving() -> AsyncIterator[None]:
            assert runtime.started, "Running is entered only after the runtime started"
            rec.step("running entered")
            try:
                yield
            finally:
                rec.events.append("running left")

        try:
            yield serving() if running else None
        finally:
            rec.events.append("setup cleaned up")

    def routers(cfg: ServiceSettings) -> Sequence[APIRouter]:
        router = APIRouter()

        @router.get("/port")
        async def port() -> int:
            return cfg.port

        return [router]

    return ServiceSpec(stage="test", settings=ServiceSettings, setup=setup, routers=routers)


def _app(spec: ServiceSpec[ServiceSettings]) -> FastAPI:
    settings = ServiceSettings(port=18123, kafka_bootstrap_servers="127.0.0.1:1")
    return spec.app(settings, span_exporter=InMemorySpanExporter(), set_global_tracer=False)


async def test_the_lifespan_runs_setup_start_running_and_leaves_in_reverse(
    recorder: Recorder,
) -> None:
    app = _app(_spec(recorder))
    async with app.router.lifespan_context(app):
        runtime = app.state.runtime
        assert isinstance(runtime, ServiceRuntime) and runtime.stage == "test"
        assert app.state.port == 18123
        assert recorder.events == ["setup entered", "runtime started", "running entered"]
    assert recorder.events[3:] == ["running left", "runtime stopped", "setup cleaned up"]
    assert app.title == "genwire-test"


async def test_a_setup_without_running_work_is_served_too(recorder: Recorder) -> None:
    app = _app(_spec(recorder, running=False))
    async with app.router.lifespan_context(app):
        pass
    assert recorder.events == [
        "setup entered",
        "runtime started",
        "runtime stopped",
        "setup cleaned up",
    ]


@pytest.mark.parametrize(
    ("fail_at", "expected"),
    [
        # The runtime cannot start: it is stopped anyway, and the setup closes what it built.
        ("runtime started", ["setup entered", "runtime started", "runtime stopped"]),
        # The work that needs the started runtime fails (the gateway's Redis ping, say).
        ("running entered", ["setup entered", "runtime started", "running entered"]),
    ],
)
async def test_a_failed_start_still_stops_the_runtime_and_cleans_up(
    recorder: Recorder, fail_at: str, expected: list[str]
) -> None:
    recorder.fail_at = fail_at
    app = _app(_spec(recorder))
    with pytest.raises(RuntimeError, match=f"{fail_at} failed"):
        async with app.router.lifespan_context(app):
            pytest.fail("served although the start failed")
    assert recorder.events[: len(expected)] == expected
    assert "running left" not in recorder.events  # never entered: nothing to leave
    assert recorder.events[-2:] == ["runtime stopped", "setup cleaned up"]


async def test_a_failing_setup_never_starts_the_runtime(recorder: Recorder) -> None:
    recorder.fail_at = "setup entered"
    app = _app(_spec(recorder))
    with pytest.raises(RuntimeError, match="setup entered failed"):
        async with app.router.lifespan_context(app):
            pass
    # Never started, but stopped: its telemetry (created with it) is shut down all the same.
    assert recorder.events == ["setup entered", "runtime stopped"]


async def test_readyz_says_why_including_the_services_own_checks(recorder: Recorder) -> None:
    app = _app(_spec(recorder))
    transport = httpx.ASGITransport(app=app)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=transport, base_url="http://t") as client,
    ):
        assert (await client.get("/readyz")).json() == {
            "ready": True,
            "failed": None,
            "reasons": [],
        }
        recorder.check.append("the span source has no partitions yet")
        not_ready = await client.get("/readyz")
        assert not_ready.status_code == 503
        assert not_ready.json()["reasons"] == ["the span source has no partitions yet"]
        recorder.check.clear()
        app.state.runtime.fail("cannot publish for 300 s")
        failed = await client.get("/readyz")
        assert failed.status_code == 503 and failed.json()["failed"] == "cannot publish for 300 s"
        assert (await client.get("/healthz")).json()["service"] == "genwire"
        assert (await client.get("/port")).json() == 18123  # the service's own router
        assert (await client.get("/metrics")).status_code == 200


async def test_a_services_own_process_freezes_its_start_up_heap_before_serving(
    recorder: Recorder, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(runner, "freeze_startup_heap", lambda: recorder.step("heap frozen"))
    settings = ServiceSettings(port=18123, kafka_bootstrap_servers="127.0.0.1:1")
    app = _spec(recorder).app(
        settings, span_exporter=InMemorySpanExporter(), set_global_tracer=False, freeze_heap=True
    )
    async with app.router.lifespan_context(app):
        assert recorder.events[-2:] == ["running entered", "heap frozen"]
    shared = _app(_spec(Recorder()))  # tests' apps share a process: never frozen by default
    async with shared.router.lifespan_context(shared):
        pass
    assert recorder.events.count("heap frozen") == 1


class Node:
    def __init__(self) -> None:
        self.me = self  # a cycle: only the cyclic collector frees it


def test_the_start_up_heap_is_collected_then_frozen() -> None:
    gc.unfreeze()
    garbage = Node()
    gone = weakref.ref(garbage)
    del garbage
    kept = Node()
    try:
        runner.freeze_startup_heap()
        assert gone() is None  # collected, not frozen with the rest
        frozen = gc.get_freeze_count()
        assert frozen > 0
        gc.collect()
        assert gc.get_freeze_count() == frozen  # later collections leave it alone
        assert kept.me is kept
    finally:
        gc.unfreeze()
