"""uvicorn's server without its ten idle wake-ups a second.

``uvicorn.Server.main_loop`` sleeps 0.1 s at a time to poll its exit flag (and refreshes the
``Date`` header every tenth tick). Every service serves its health port under uvicorn, so
each woke 10 times a second with nothing to do; on this project's two-core VMs a wake-up from
idle costs a process up to 0.2 ms of CPU (docs/benchmarks.md, *The idle stack's wake-ups*).
``QuietServer`` waits on its exit flag instead: setting ``should_exit`` (a signal), or the end
of ``stop_when`` (``serve``: the runtime's failure), wakes it at once, and it ticks once a
second for the header. uvicorn offers no setting for the tick; ``main_loop`` and ``on_tick``
are its own (uvicorn 0.55, pinned in deploy/native/constraints.txt), and
tests/common/test_quiet_server.py checks their behaviour against the installed version.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

import uvicorn

log = logging.getLogger(__name__)

TICK_S = 1.0
"""How often the idle server wakes: uvicorn's once-a-second work (the ``Date`` header, its
``limit_max_requests`` check) runs at every tick."""

_TICKS_PER_S = 10  # uvicorn's ``on_tick`` does its once-a-second work when counter % 10 == 0


class QuietServer(uvicorn.Server):
    """``uvicorn.Server`` whose main loop sleeps until asked to exit (or ``TICK_S``)."""

    def __init__(
        self, config: uvicorn.Config, stop_when: Callable[[], Awaitable[object]] | None = None
    ) -> None:
        """``stop_when``: awaited beside the main loop; when it returns, a graceful stop."""
        self._stop_when = stop_when
        self._wake: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._should_exit = False
        super().__init__(config)

    @property  # type: ignore[override]  # uvicorn's plain attribute, now waking the loop
    def should_exit(self) -> bool:
        return self._should_exit

    @should_exit.setter
    def should_exit(self, value: bool) -> None:
        self._should_exit = value
        if value and self._loop is not None and self._wake is not None:
            # From a signal handler (uvicorn's) or another thread: the loop's own wake-up pipe.
            with contextlib.suppress(RuntimeError):  # the loop already closed: nothing waits
                self._loop.call_soon_threadsafe(self._wake.set)

    async def main_loop(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        watch: asyncio.Future[object] | None = None
        try:
            if self._stop_when is not None:
                watch = asyncio.ensure_future(self._stop_when())
                watch.add_done_callback(self._watched)
            counter = 0
            should_exit = await self.on_tick(counter)
            while not should_exit:
                counter = (counter + _TICKS_PER_S) % 864000  # every tick a once-a-second one
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(TICK_S):
                        await self._wake.wait()
                should_exit = await self.on_tick(counter)
        finally:
            if watch is not None:
                watch.remove_done_callback(self._watched)
                watch.cancel()

    def _watched(self, watch: asyncio.Future[object]) -> None:
        if not watch.cancelled() and watch.exception() is not None:
            log.error("stopping: the stop condition's watch failed", exc_info=watch.exception())
        self.should_exit = True
