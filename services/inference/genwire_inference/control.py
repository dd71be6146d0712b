"""What stops a generation early, apart from its own deadline: cancels and dead gateways.

``InFlight`` holds the generations running here (``Run``) and reads ``genwire.control``: a
cancel stops its request's generation, or is remembered for a while when it arrives first; a
heartbeat says its gateway is alive, and the unnamed requests of a gateway that went silent
are stopped (nobody is left to collect them). No Kafka or HTTP imports.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from genwire.events import MAX_REASON_CHARS, ControlEvent
from genwire_inference.backend import ModelStream

log = logging.getLogger(__name__)

FINISH_CANCELLED = "cancelled"
FINISH_DEADLINE = "deadline"
FINISH_ERROR = "error"


@dataclass
class Run:
    """A generation in flight here: what cancels it, and why it stopped early."""

    stream: ModelStream | None = None
    stop_reason: str | None = None
    cancel_reason: str = ""
    """Why it was cancelled: the cancel's ``reason`` (a caller's, postprocess's stop string or
    filter, the gateway's), or that its gateway went silent; empty when not cancelled."""
    timer: asyncio.TimerHandle | None = None
    origin: str = ""
    keep: bool = False
    streams: int = 0
    """Its choices counted in ``Inference.live_streams`` (each from its first chunk)."""
    _stopped: asyncio.Event | None = None

    def stop(self, reason: str, why: str = "") -> None:
        if self.stop_reason is None:
            self.stop_reason = reason
            self.cancel_reason = why[:MAX_REASON_CHARS]
        if self.stream is not None:
            self.stream.cancel()
        if self._stopped is not None:
            self._stopped.set()

    def stopped(self) -> asyncio.Event:
        """Set once it is stopped: what a wait with no model call to cancel (Triton coming
        back) ends on. Made on first use: most generations never wait."""
        if self._stopped is None:
            self._stopped = asyncio.Event()
            if self.stop_reason is not None:
                self._stopped.set()
        return self._stopped


class InFlight:
    """The generations running here, the cancels that came before their request, and when
    each gateway was last heard from."""

    def __init__(
        self,
        *,
        cancelled_memory_s: float = 600.0,
        max_remembered_cancels: int = 10_000,
        origin_timeout_s: float = 15.0,
        kafka_down: Callable[[], bool] = lambda: False,
    ) -> None:
        self.cancelled_memory_s = cancelled_memory_s
        self.max_remembered_cancels = max_remembered_cancels
        self.origin_timeout_s = origin_timeout_s
        self.kafka_down = kafka_down
        self.runs: dict[str, Run] = {}
        self._cancelled: OrderedDict[str, tuple[float, str]] = OrderedDict()  # when, why
        self._heard: dict[str, float] = {}  # gateway instance → last heartbeat (monotonic)

    async def control(self, event: ControlEvent) -> None:
        """A cancel stops the request's generation here, or is remembered for when it comes;
        a heartbeat says its gateway is alive."""
        if event.action == "heartbeat":
            self._heard[event.origin] = time.monotonic()
            return
        run = self.runs.get(event.request_id)
        # The reason goes on the request's span (genwire.cancel.reason): postprocess cancels
        # every request that meets a stop string, too many for a log line each.
        why = (event.reason or "no reason given")[:MAX_REASON_CHARS]
        if run is not None:
            log.debug("cancel of %s (%r): its generation stops", event.request_id, why)
            run.stop(FINISH_CANCELLED, why)
            return
        log.debug("cancel of %s (%r): remembered until it comes", event.request_id, why)
        self._cancelled[event.request_id] = (time.monotonic(), why)
        self._cancelled.move_to_end(event.request_id)
        self._forget_old_cancels()

    def _forget_old_cancels(self) -> None:
        horizon = time.monotonic() - self.cancelled_memory_s
        while self._cancelled and (
            len(self._cancelled) > self.max_remembered_cancels
            or next(iter(self._cancelled.values()))[0] < horizon
        ):
            self._cancelled.popitem(last=False)

    def origin_gone(self, origin: str, now: float | None = None) -> bool:
        """True when gateway ``origin`` sent no heartbeat for ``origin_timeout_s``.

        An origin never heard of (this instance just started) gets the timeout from now.
        """
        now = time.monotonic() if now is None else now
        heard = self._heard.setdefault(origin, now)
        return now - heard > self.origin_timeout_s

    def cancel_orphans(self) -> list[str]:
        """Stop the unnamed generations whose gateway died (nobody can collect them).

        Named ones (``keep``: the caller sent an idempotency key) run on, so that the caller's
        retry, on any gateway, finds the result. Returns the request ids stopped.
        """
        now = time.monotonic()
        if self.kafka_down():
            # Heartbeats cannot arrive while our own Kafka link is down: that says nothing
            # about the gateways. Start their clocks again once it is back.
            for origin in self._heard:
                self._heard[origin] = now
            return []
        stopped = []
        for rid, run in list(self.runs.items()):
            if run.origin and not run.keep and self.origin_gone(run.origin, now):
                run.stop(FINISH_CANCELLED, f"gateway {run.origin} went silent")
                stopped.append(rid)
        horizon = now - 10 * self.origin_timeout_s
        for origin in [o for o, t in self._heard.items() if t < horizon]:
            if not any(r.origin == origin for r in self.runs.values()):
                del self._heard[origin]
        return stopped

    async def watch_origins(self, interval_s: float = 1.0) -> None:
        """Every ``interval_s``: ``cancel_orphans``."""
        while True:
            await asyncio.sleep(interval_s)
            self.cancel_orphans()

    def was_cancelled(self, request_id: str) -> str | None:
        """The reason of a cancel for ``request_id`` that arrived before it (and is still
        remembered); None: none did."""
        self._forget_old_cancels()
        remembered = self._cancelled.get(request_id)
        return None if remembered is None else remembered[1]
