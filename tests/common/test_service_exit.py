"""A service that gives up exits with a failure status, so its supervisor restarts it."""

from __future__ import annotations

import socket
import subprocess
import sys
import textwrap

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


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_a_service_that_gives_up_exits_with_a_failure_status() -> None:
    done = subprocess.run(
        [sys.executable, "-c", PROGRAM, str(_free_port())],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == EXIT_FAILED, done.stderr[-2000:]
    assert "cannot make progress: cannot publish for 300 s" in done.stderr
