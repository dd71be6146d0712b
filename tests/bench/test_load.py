"""Closed and open loop generators, with a fake send (pure logic, no stack)."""

from __future__ import annotations

import asyncio
import itertools
import time

import numpy as np
import pytest
from genwire_bench.load import closed_loop, open_loop, poisson_arrivals
from genwire_bench.records import BenchRequest, RequestRecord, SamplingSpec


def requests(n: int) -> list[BenchRequest]:
    return [BenchRequest(i, "p", (1, 2), SamplingSpec(seed=i)) for i in range(n)]


class FakeSend:
    def __init__(self, delay: float = 0.001) -> None:
        self.delay = delay
        self.inflight = 0
        self.max_inflight = 0
        self.seen: list[int] = []

    async def __call__(self, req: BenchRequest) -> RequestRecord:
        self.inflight += 1
        self.max_inflight = max(self.max_inflight, self.inflight)
        self.seen.append(req.index)
        r = RequestRecord("fake", req.index, str(req.index), start=time.perf_counter())
        await asyncio.sleep(self.delay)
        r.end = time.perf_counter()
        self.inflight -= 1
        return r


@pytest.mark.parametrize("concurrency", [1, 3, 8])
async def test_closed_loop_keeps_exactly_concurrency_in_flight(concurrency: int) -> None:
    send = FakeSend()
    done: list[RequestRecord] = []
    records = await closed_loop(send, requests(20), concurrency, done.append)
    assert [r.index for r in records] == list(range(20))
    assert sorted(send.seen) == list(range(20))  # each request once
    assert send.max_inflight == concurrency
    assert len(done) == 20


async def test_closed_loop_rejects_zero_concurrency() -> None:
    with pytest.raises(ValueError, match="concurrency"):
        await closed_loop(FakeSend(), requests(1), 0)


def test_poisson_arrivals_are_seeded_and_have_the_rate() -> None:
    a = poisson_arrivals(4000, 50.0, seed=7)
    assert a == poisson_arrivals(4000, 50.0, seed=7)
    assert a != poisson_arrivals(4000, 50.0, seed=8)
    assert a[0] == 0.0 and all(x <= y for x, y in itertools.pairwise(a))
    assert float(np.mean(np.diff(a))) == pytest.approx(1 / 50.0, rel=0.08)
    with pytest.raises(ValueError):
        poisson_arrivals(3, 0.0, seed=1)


async def test_open_loop_does_not_wait_for_completions() -> None:
    # 20 requests at 400/s arrive in ~50 ms; each takes 100 ms, so many overlap.
    send = FakeSend(delay=0.1)
    records = await open_loop(send, requests(20), rate=400.0, seed=3)
    assert len(records) == 20
    assert send.max_inflight > 5
    assert all(r.scheduled is not None for r in records)
    assert all(r.e2e_ms >= 99.0 for r in records)
