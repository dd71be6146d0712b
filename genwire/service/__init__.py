"""How a service runs: the runner every ``__main__`` calls and the runtime every service shares.

- ``runner``: ``ServiceSpec`` (what one service's ``app.py`` declares) and ``run`` (what its
  ``__main__.py`` calls);
- ``runtime``: ``ServiceRuntime`` (telemetry, producer, consumers, supervised tasks, readiness),
  one per app, on ``app.state.runtime``;
- ``http``: ``health_router`` (``/healthz``, ``/readyz``, ``/metrics``) and ``serve`` (uvicorn;
  exit status ``EXIT_FAILED`` after ``ServiceRuntime.fail``);
- ``loop``: the event loop a service runs on (``event_loop``: uvloop when installed).
"""

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from genwire.service.http import EXIT_FAILED, health_router, serve
    from genwire.service.runner import Running, ServiceSpec, Setup, run
    from genwire.service.runtime import ServiceRuntime

# Imported on first use (PEP 562): ``genwire.service.loop`` alone (the benchmarks, the model
# tools) must not pay for FastAPI, uvicorn, Kafka and telemetry (~0.75 s) by importing the package.
_LAZY = {
    "EXIT_FAILED": "http",
    "health_router": "http",
    "serve": "http",
    "Running": "runner",
    "ServiceSpec": "runner",
    "Setup": "runner",
    "run": "runner",
    "ServiceRuntime": "runtime",
}


if not TYPE_CHECKING:  # mypy reads the imports above: a misspelt name stays an error

    def __getattr__(name: str) -> Any:
        module = _LAZY.get(name)
        if module is None:
            raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
        value = getattr(import_module(f"{__name__}.{module}"), name)
        globals()[name] = value
        return value

    def __dir__() -> list[str]:
        return sorted({*globals(), *_LAZY})


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
