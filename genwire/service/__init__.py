"""How a service runs: the runner every ``__main__`` calls and the runtime every service shares.

- ``runner``: ``ServiceSpec`` (what one service's ``app.py`` declares) and ``run`` (what its
  ``__main__.py`` calls);
- ``runtime``: ``ServiceRuntime`` (telemetry, producer, consumers, supervised tasks, readiness),
  one per app, on ``app.state.runtime``;
- ``http``: ``health_router`` (``/healthz``, ``/readyz``, ``/metrics``) and ``serve`` (uvicorn;
  exit status ``EXIT_FAILED`` after ``ServiceRuntime.fail``);
- ``loop``: the event loop a service runs on (``event_loop``: uvloop when installed).
"""

from genwire.service.http import EXIT_FAILED, health_router, serve
from genwire.service.runner import Running, ServiceSpec, Setup, run
from genwire.service.runtime import ServiceRuntime

__all__ = [
    "EXIT_FAILED",
    "Running",
    "ServiceRuntime",
    "ServiceSpec",
    "Setup",
    "health_router",
    "run",
    "serve",
]
