"""A service that gives up exits with a failure status, so its supervisor restarts it."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest
from genwire_stack.health import free_port

from genwire.service import EXIT_FAILED

PROGRAM = textwrap.dedent(
    """
    import asyncio, sys
    from contextlib import asynccontextmanager
    from fastapi import FastAPI
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
    from genwire.service import ServiceRuntime, health_router, serve
    from genwire.settings import ServiceSettings

    settings = ServiceSettings(port=int(sys.argv[1]), kafka_bootstrap_servers="127.0.0.1:1")

    @asynccontextmanager
    async def lifespan(app):
        runtime = ServiceRuntime(settings, "test", span_exporter=InMemorySpanExporter(),
                                 set_global_tracer=False)
        app.state.runtime = runtime
        asyncio.get_running_loop().call_later(0.5, runtime.fail, "cannot publish for 300 s")
        yield

    app = FastAPI(lifespan=lifespan)
    app.include_router(health_router())
    serve(app, settings)
    """
)


def test_a_service_that_gives_up_exits_with_a_failure_status() -> None:
    done = subprocess.run(
        [sys.executable, "-c", PROGRAM, str(free_port())],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == EXIT_FAILED, done.stderr[-2000:]
    assert "cannot make progress: cannot publish for 300 s" in done.stderr


RUNNER_PROGRAM = textwrap.dedent(
    """
    import asyncio, sys
    from contextlib import asynccontextmanager
    from pydantic_settings import SettingsConfigDict
    from genwire.service import ServiceRuntime, ServiceSpec, run
    from genwire.settings import ServiceSettings

    class Settings(ServiceSettings):
        model_config = SettingsConfigDict(env_prefix="GENWIRE_RUNNERTEST_", extra="ignore")

    async def start(self):  # no broker here: the runtime starts without one
        self.started = True

    if sys.argv[1] == "fail":
        ServiceRuntime.start = start

    @asynccontextmanager
    async def setup(cfg, runtime, app):
        @asynccontextmanager
        async def running():
            asyncio.get_running_loop().call_later(0.5, runtime.fail, "cannot publish for 300 s")
            try:
                yield
            finally:
                print("running left", file=sys.stderr, flush=True)
        try:
            yield running()
        finally:
            print("setup cleaned up", file=sys.stderr, flush=True)

    run(ServiceSpec(stage="test", settings=Settings, setup=setup))
    """
)


@pytest.mark.parametrize("case", ["fail", "no-broker"])
def test_the_runner_exits_with_a_failure_status_after_cleaning_up(case: str) -> None:
    """``fail``: the runtime gave up while serving; ``no-broker``: it could not start."""
    env = {
        **os.environ,
        "GENWIRE_RUNNERTEST_PORT": str(free_port()),
        "GENWIRE_RUNNERTEST_KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:1",
        "OTEL_TRACES_EXPORTER": "none",
    }
    done = subprocess.run(
        [sys.executable, "-c", RUNNER_PROGRAM, case],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env=env,
    )
    assert done.returncode == EXIT_FAILED, done.stderr[-2000:]
    lines = [line for line in done.stderr.splitlines() if line.endswith(("left", "cleaned up"))]
    if case == "fail":
        assert "cannot make progress: cannot publish for 300 s" in done.stderr
        assert lines == ["running left", "setup cleaned up"], done.stderr[-2000:]
    else:
        assert "Unable to bootstrap" in done.stderr
        assert lines == ["setup cleaned up"], done.stderr[-2000:]
