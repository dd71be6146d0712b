"""Load generators: a closed loop at a fixed concurrency and an open (Poisson) loop at a rate."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence

import numpy as np

from genwire_bench.records import BenchRequest, RequestRecord

Send = Callable[[BenchRequest], Awaitable[RequestRecord]]
Done = Callable[[RequestRecord], None]


async def closed_loop(
    send: Send, requests: Sequence[BenchRequest], concurrency: int, on_done: Done | None = None
) -> list[RequestRecord]:
    """``concurrency`` workers each send the next request as soon as their previous one ends."""
    if concurrency < 1:
        raise ValueError("concurrency must be at least 1")
    queue = list(reversed(requests))
    records: list[RequestRecord] = []

    async def worker() -> None:
        while queue:
            record = await send(queue.pop())
            records.append(record)
            if on_done is not None:
                on_done(record)

    await asyncio.gather(*(worker() for _ in range(min(concurrency, len(requests)))))
    return sorted(records, key=lambda r: r.index)


def poisson_arrivals(n: int, rate: float, seed: int) -> list[float]:
    """Arrival offsets (s) of ``n`` requests of a Poisson process of ``rate``/s; seeded."""
    if rate <= 0:
        raise ValueError("rate must be positive")
    gaps = np.random.default_rng(seed).exponential(1.0 / rate, size=n)
    return [float(x) for x in np.cumsum(gaps) - gaps[0]]  # the first request goes at once


async def open_loop(
    send: Send,
    requests: Sequence[BenchRequest],
    rate: float,
    seed: int,
    on_done: Done | None = None,
    max_inflight: int = 1024,
) -> list[RequestRecord]:
    """Send at Poisson arrival times regardless of completions (latency counts from the due time).

    ``max_inflight`` only guards the client's memory; a request held back by it still has its
    latency measured from when it was due.
    """
    offsets = poisson_arrivals(len(requests), rate, seed)
    gate = asyncio.Semaphore(max_inflight)
    t0 = time.perf_counter()
    records: list[RequestRecord] = []

    async def one(req: BenchRequest, due: float) -> None:
        async with gate:
            record = await send(req)
        record.scheduled = due
        records.append(record)
        if on_done is not None:
            on_done(record)

    tasks = []
    for req, offset in zip(requests, offsets, strict=True):
        delay = t0 + offset - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(req, t0 + offset)))
    await asyncio.gather(*tasks)
    return sorted(records, key=lambda r: r.index)
