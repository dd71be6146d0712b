"""The stall watch stops when it is cancelled, wherever the cancel lands in its loop.

On Python 3.11 ``asyncio.wait_for`` returns the result of a reading that finishes as the cancel
arrives, and the loop polled on after the monitor's stop (a CI run's stop hung 60 s). Readings
here finish at once, so cancels land in every part of the loop, that window included.
"""

from __future__ import annotations

import asyncio

from genwire_monitor.offsetpoll import OffsetPoller


class _Client:
    """Stands in for the admin client and the consumer: connected, closes at once."""

    def __init__(self) -> None:
        self.closed = False

    async def close(self) -> None:
        self.closed = True

    async def stop(self) -> None:
        self.closed = True


class _InstantPoller(OffsetPoller):
    """Reads nothing, at once, every time."""

    def __init__(self) -> None:
        super().__init__(
            bootstrap_servers="127.0.0.1:1", watched={}, threshold_s=1.0, interval_s=0.0
        )
        self._admin, self._consumer = _Client(), _Client()
        self.readings = 0

    async def _read(self) -> list[str]:
        self.readings += 1
        await asyncio.sleep(0)
        return []


async def test_a_cancel_stops_the_poller_wherever_it_lands() -> None:
    lost = []
    for ticks in range(1, 40):  # event-loop iterations between the start and the cancel
        poller = _InstantPoller()
        admin, consumer = poller._admin, poller._consumer
        task = asyncio.create_task(poller.run())
        for _ in range(ticks):
            await asyncio.sleep(0)
        task.cancel()
        done, _ = await asyncio.wait({task}, timeout=2.0)
        if not done:
            lost.append((ticks, poller.readings))
            poller.interval_s = 3600.0  # its next wait is a sleep, where a cancel lands
            task.cancel()
            await asyncio.wait({task}, timeout=2.0)
            continue
        assert task.cancelled()
        assert admin.closed and consumer.closed  # the run's cleanup closed both clients
    assert lost == [], f"still polling after the cancel (ticks, readings): {lost}"
