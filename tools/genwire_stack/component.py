"""What every component of the native stack offers the manager: ports, install, start, probes."""

from __future__ import annotations

import json
import ssl
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path

import httpx

from genwire.settings import CommonSettings
from genwire_stack.paths import StackPaths


@dataclass(frozen=True)
class Readiness:
    """One probe's verdict: ready or not, whether it answered at all, and why not."""

    ready: bool
    answered: bool
    reason: str | None = None


class Component(ABC):
    """A server genwire can install, start, probe and stop."""

    name: str
    """Short id: pid file, log file and the ``--only`` option use it."""
    title: str
    """What it is, for the status table."""
    phase: int
    """Start order: every component of a phase is started together, phases one after another."""
    start_timeout_s: float = 120.0
    adoptable: bool = False
    """A server of this kind already running (not started by genwire) may be reused."""
    supervised: bool = True
    """Runs under :mod:`genwire_stack.supervise`, which restarts it whenever it exits."""
    stop_timeout_s: float = 20.0
    """How long its supervisor waits after SIGTERM before SIGKILL."""

    def __init__(self, paths: StackPaths, settings: CommonSettings) -> None:
        self.paths = paths
        self.settings = settings
        self.group = ""
        """Several components answering to one name in ``--only`` (Kafka nodes, instances)."""
        self.aliases: tuple[str, ...] = ()
        """Other names of this component in ``--only`` (``kafka-1``, ``preprocess-1``)."""

    @property
    def log(self) -> Path:
        """This component's log file."""
        return self.paths.logs / f"{self.name}.log"

    @abstractmethod
    def ports(self) -> dict[str, int]:
        """Every port it listens on, by role (all on 127.0.0.1)."""

    def endpoints(self) -> str:
        """Where to reach it, for the status table."""
        return " ".join(f"{role}:{port}" for role, port in self.ports().items())

    def installed(self) -> bool:
        """Whether what it needs is already in the genwire home (or on the system)."""
        return True

    def install(self) -> None:
        """Fetch and build what is missing (idempotent)."""
        return None

    def prepare(self) -> None:
        """Write configuration and initialise storage before each start."""
        return None

    @abstractmethod
    def command(self) -> list[str]:
        """The argv that runs it in the foreground."""

    def environment(self) -> dict[str, str]:
        """Extra environment variables for the process."""
        return {}

    @abstractmethod
    def healthy(self) -> bool:
        """One cheap probe: does it serve now?"""

    def after_ready(self) -> None:
        """Run once it is healthy, also when an existing instance is reused (idempotent)."""
        return None

    def readiness(self) -> Readiness:
        """Like ``healthy``, with the reason when it answers but is not ready (services)."""
        ok = self.healthy()
        return Readiness(ok, answered=ok)

    def after_restart(self) -> tuple[str, list[str]] | None:
        """What its supervisor runs after each restart, once the URL answers 200:
        ``(url, argv)`` (Triton: the default model's versions checked, nothing built, and the
        models ``genwire model load`` served loaded again), or None."""
        return None

    def restart_arguments(self) -> list[str]:
        """Arguments its supervisor adds to ``command()`` when it restarts it (not at the first
        start): Triton loads the default model as it starts again."""
        return []

    def unready_restart(self) -> tuple[str, float] | None:
        """``(readiness URL, seconds)``: its supervisor restarts it once the URL has not
        answered 200 for that long (None: never for being unready)."""
        return None

    def probe_tls(self) -> tuple[str, str | None, str | None] | None:
        """(CA, client certificate, key) its supervisor's unready probe uses when the URL is
        ``https`` (None: plain HTTP)."""
        return None

    def nice(self) -> int:
        """How far below the other components' CPU priority it runs (supervised ones)."""
        return 0


def readyz(url: str, timeout_s: float = 2.0, verify: ssl.SSLContext | bool = True) -> Readiness:
    """A service's ``/readyz`` verdict, with the first reason it gives when not ready.
    ``verify``: the TLS context of an ``https`` URL (the secure stack's CA, client cert)."""
    try:
        with httpx.Client(timeout=timeout_s, trust_env=False, verify=verify) as client:
            response = client.get(url)
    except httpx.HTTPError:
        return Readiness(False, answered=False)
    if response.status_code == 200:
        return Readiness(True, answered=True)
    reason: str | None = None
    try:
        body = response.json()
    except (ValueError, json.JSONDecodeError):
        body = None
    if isinstance(body, dict):
        reasons = body.get("reasons")
        if isinstance(reasons, list) and reasons:
            reason = str(reasons[0])
        elif body.get("failed"):
            reason = str(body["failed"])
    reason = one_line(reason or f"HTTP {response.status_code}")
    return Readiness(False, answered=True, reason=reason)


def one_line(text: str, limit: int = 200) -> str:
    """``text`` squeezed onto one line of at most ``limit`` characters."""
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"
