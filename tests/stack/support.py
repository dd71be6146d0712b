"""Helpers shared by the stack tests: free ports and small stand-in components."""

from __future__ import annotations

import asyncio
import json
import sys
import textwrap
from pathlib import Path

import uvicorn
from genwire_stack.components import Component, Service
from genwire_stack.health import free_port, http_status
from genwire_stack.paths import StackPaths

from genwire.settings import CommonSettings


async def serve_in_task(server: uvicorn.Server, timeout_s: float = 60.0) -> asyncio.Task[None]:
    """Run ``server`` in a task and return it once the server listens; a server that exits
    during start-up raises its error here (uvicorn offers no "listening" event to await)."""
    task = asyncio.create_task(server.serve())
    async with asyncio.timeout(timeout_s):
        while not server.started:
            if task.done():
                task.result()  # raise the start-up failure
                raise RuntimeError("the server exited during start-up")
            await asyncio.sleep(0.02)
    return task


class HttpServer(Component):
    """A stand-in component: ``python -m http.server`` on a given port."""

    title = "test http server"

    def __init__(self, paths: StackPaths, settings: CommonSettings, name: str, phase: int) -> None:
        super().__init__(paths, settings)
        self.name = name
        self.phase = phase
        self.port = free_port()
        self.start_timeout_s = 20.0

    def ports(self) -> dict[str, int]:
        return {"http": self.port}

    def command(self) -> list[str]:
        return [sys.executable, "-m", "http.server", str(self.port), "--bind", "127.0.0.1"]

    def healthy(self) -> bool:
        return http_status(f"http://127.0.0.1:{self.port}/") == 200


READYZ_SERVER = textwrap.dedent(
    """
    import http.server, json, sys
    port, path = int(sys.argv[1]), sys.argv[2]
    try:
        with open(path) as f:
            start = json.load(f)
    except (OSError, ValueError):
        start = {}
    if "exit" in start:  # a service that gives up at once
        print("fatal: gave up", flush=True)
        sys.exit(start["exit"])
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            try:
                with open(path) as f:
                    body = json.load(f)
            except (OSError, ValueError):
                body = {"ready": True, "failed": None, "reasons": []}
            data = json.dumps(body).encode()
            self.send_response(200 if body.get("ready") else 503)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
        def log_message(self, *args):
            pass
    print("dummy service listening", flush=True)
    http.server.ThreadingHTTPServer(("127.0.0.1", port), Handler).serve_forever()
    """
)


class DummyService(Service):
    """A stand-in genwire service: answers ``/readyz`` with whatever ``verdict`` says."""

    def __init__(
        self, paths: StackPaths, settings: CommonSettings, short: str = "dummy", index: int = 1
    ) -> None:
        super().__init__(paths, settings, short, free_port(), index=index)
        self.verdict_file = paths.home / f"{self.name}.verdict.json"
        self.start_timeout_s = 20.0

    def command(self) -> list[str]:
        return [sys.executable, "-c", READYZ_SERVER, str(self.port), str(self.verdict_file)]

    def set_verdict(
        self, ready: bool, reasons: list[str] | None = None, exit_code: int | None = None
    ) -> None:
        """What ``/readyz`` answers from now on (503 with these reasons when not ready);
        ``exit_code``: from its next start on, the server exits at once with it."""
        self.verdict_file.parent.mkdir(parents=True, exist_ok=True)
        body: dict[str, object] = {"ready": ready, "failed": None, "reasons": reasons or []}
        if exit_code is not None:
            body["exit"] = exit_code
        Path(self.verdict_file).write_text(json.dumps(body))
