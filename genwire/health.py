"""Dependency outages as a service sees them: backoff, readiness reasons, rate-limited logs.

A dependency (Kafka, Redis, Triton) that fails is retried with capped exponential backoff and
jitter for the service's outage budget. While it is down, ``Dependencies`` keeps one record per
dependency: readiness names it once it has been down longer than a short grace, the
``genwire_dependency_up`` gauge says 0, and the log gets one line when it goes down, one line per
interval while it stays down (with the count of failed attempts), and one when it is back —
never a line per failed attempt.

Records waiting for the same dependency do not all find out on their own when it is back: one
of them (the *prober*, ``claim_probe``) retries at least every probe interval, and its success
(``recovered``) wakes the others (``wait_back``) at once, instead of each sleeping out a backoff
that has grown to ``retry_backoff_max_s``.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Gauge

from genwire.telemetry import semconv as sc

log = logging.getLogger("genwire.health")


@dataclass(frozen=True)
class Backoff:
    """Capped exponential backoff with "equal jitter": half fixed, half random.

    The random half spreads many waiting records (and instances) apart while the dependency is
    down. When it is back, the records waiting for it in a service retry together
    (``Dependencies.recovered``): at most the service's consumer concurrency at once, the load
    it takes anyway.
    """

    first_s: float = 0.2
    cap_s: float = 10.0

    def delay(self, attempt: int) -> float:
        """Seconds to wait before retry number ``attempt`` (0-based)."""
        ceiling = min(self.cap_s, self.first_s * 2.0 ** min(attempt, 30))
        return ceiling / 2 + random.uniform(0, ceiling / 2)


@dataclass
class _Outage:
    since: float
    failures: int
    last_error: str
    last_logged: float
    logged_failures: int
    last_failure: float


class Dependencies:
    """What is down right now, for how long, and why; logs and gauges it (rate-limited)."""

    def __init__(
        self,
        stage: str,
        registry: CollectorRegistry | None = None,
        *,
        unready_after_s: float = 5.0,
        log_interval_s: float = 10.0,
        forget_after_s: float = 30.0,
    ) -> None:
        self.stage = stage
        self.unready_after_s = unready_after_s
        self.log_interval_s = log_interval_s
        self.forget_after_s = forget_after_s
        """An outage with no failed attempt for this long is over: records that waited were
        parked, or succeeded without saying so. (Waiting records retry at least every
        ``retry_backoff_max_s``, so a real outage keeps reporting.)"""
        self._down: dict[str, _Outage] = {}
        self._back: dict[str, asyncio.Event] = {}  # set (and dropped) when the name is back
        self._probers: dict[str, object] = {}  # the waiting record that retries most often
        self._gauge = (
            Gauge(
                sc.METRIC_DEPENDENCY_UP,
                "1 while the dependency answers, 0 while the stage waits for it.",
                ["dependency", "stage"],
                registry=registry,
            )
            if registry is not None
            else None
        )

    def failed(self, name: str, error: object) -> None:
        """One failed attempt on ``name``."""
        now = time.monotonic()
        text = str(error) or type(error).__name__
        self._forget_quiet(now)
        outage = self._down.get(name)
        if outage is None:
            self._down[name] = _Outage(now, 1, text, now, 1, now)
            log.warning("%s unavailable: %s (retrying with backoff)", name, text)
            if self._gauge is not None:
                self._gauge.labels(name, self.stage).set(0)
            return
        outage.failures += 1
        outage.last_error = text
        outage.last_failure = now
        if now - outage.last_logged >= self.log_interval_s:
            log.warning(
                "%s still unavailable after %.0f s (%d failed attempts, %d since the last "
                "line): %s",
                name,
                now - outage.since,
                outage.failures,
                outage.failures - outage.logged_failures,
                text,
            )
            outage.last_logged = now
            outage.logged_failures = outage.failures

    def recovered(self, name: str) -> None:
        """``name`` answered again: every record waiting for it (``wait_back``) retries now."""
        back = self._back.pop(name, None)
        if back is not None:
            back.set()
        outage = self._down.pop(name, None)
        if self._gauge is not None:
            self._gauge.labels(name, self.stage).set(1)
        if outage is not None:
            log.warning(
                "%s is back after %.1f s (%d failed attempts)",
                name,
                time.monotonic() - outage.since,
                outage.failures,
            )

    async def wait_back(
        self, name: str, timeout_s: float, who: object = None, probe_s: float | None = None
    ) -> None:
        """Wait out a retry's backoff (``timeout_s``) for ``name``; less when it is reported
        back. With ``who`` and ``probe_s``: every ``probe_s`` the waiter asks to be the one
        that probes ``name`` (``claim_probe``) and returns to retry if it is, so the prober
        retries every ``probe_s`` and another waiter takes over when it leaves."""
        if who is not None:
            self._let_go(who, name)  # it waits for this dependency now, not for another
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while (remaining := deadline - loop.time()) > 0:
            back = self._back.get(name)
            if back is None:
                back = self._back[name] = asyncio.Event()
            try:
                async with asyncio.timeout(min(remaining, probe_s or remaining)):
                    await back.wait()
                return
            except TimeoutError:
                # Reported back in the loop turn the timeout fired: ``recovered`` popped this
                # event, so a new one would wait out the whole backoff.
                if back.is_set():
                    return
            if who is not None and probe_s and self.claim_probe(name, who):
                return

    def claim_probe(self, name: str, who: object) -> bool:
        """Whether ``who`` (a waiting record) is the one that probes ``name``: the first to ask
        while none does, until ``release_probe``. A record waits for one dependency at a time:
        claiming one lets go of any other it probed."""
        self._let_go(who, name)
        return self._probers.setdefault(name, who) is who

    def _let_go(self, who: object, keep: str) -> None:
        for name in [n for n, w in self._probers.items() if w is who and n != keep]:
            del self._probers[name]

    def release_probe(self, who: object) -> None:
        """``who`` stops waiting: the next record to ask probes in its place."""
        for name in [n for n, w in self._probers.items() if w is who]:
            del self._probers[name]

    def _forget_quiet(self, now: float) -> None:
        for name in [
            n for n, o in self._down.items() if now - o.last_failure > self.forget_after_s
        ]:
            self.recovered(name)

    def down_for(self, name: str) -> float | None:
        """Seconds ``name`` has been down, or None when it is up."""
        self._forget_quiet(time.monotonic())
        outage = self._down.get(name)
        return None if outage is None else time.monotonic() - outage.since

    def reasons(self) -> list[str]:
        """Why the stage cannot make progress: each dependency down past the grace."""
        now = time.monotonic()
        self._forget_quiet(now)
        return [
            f"{name} unavailable for {now - o.since:.0f} s ({o.failures} failed attempts): "
            f"{o.last_error[:200]}"
            for name, o in self._down.items()
            if now - o.since >= self.unready_after_s
        ]
