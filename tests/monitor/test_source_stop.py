"""The span source's stop is bounded: a commit or a leave that never finishes is cut short."""

from __future__ import annotations

import asyncio
import logging

import pytest
from aiokafka import TopicPartition
from genwire_monitor.source import LEAVE_FLOOR_S, SpanSource

from genwire.kafka.consumer import FETCH_MAX_WAIT_MS, fetcher_tick_ms


class _Stuck:
    """Stands in for the client: its commit and its stop wait for ever (a coordinator that
    keeps answering with retryable errors, as aiokafka would keep retrying)."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    async def commit(self, offsets: object) -> None:
        self.calls.append("commit")
        await asyncio.Event().wait()

    async def stop(self) -> None:
        self.calls.append("stop")
        await asyncio.Event().wait()


async def _noop(values: list[bytes]) -> None:
    return None


async def test_a_commit_and_a_leave_that_hang_are_cut_short_and_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    source = SpanSource(
        topic="otlp_spans", group_id="g", bootstrap_servers="127.0.0.1:1", sink=_noop
    )
    await source._consumer.stop()  # never started: nothing to close but its handle
    stuck = _Stuck()
    source._consumer = stuck  # type: ignore[assignment]
    tp = TopicPartition("otlp_spans", 0)
    source.assigned.add(tp)
    source._positions[tp] = 7  # a batch handed over, not yet committed
    with caplog.at_level(logging.WARNING, logger="genwire_monitor.source"):
        async with asyncio.timeout(5):  # one budget for the whole stop, plus the leave's floor
            await source.stop(timeout_s=0.2)
    assert stuck.calls == ["commit", "stop"]
    messages = [r.getMessage() for r in caplog.records]
    assert any("the last commit took over 0.2s" in m for m in messages), messages
    # the commit used the whole budget: the leave still had its floor
    assert any(f"leaving the group took over {LEAVE_FLOOR_S:.1f}s" in m for m in messages), messages


async def test_the_span_source_wakes_on_the_fetchers_tick() -> None:
    source = SpanSource(
        topic="otlp_spans", group_id="g", bootstrap_servers="127.0.0.1:1", sink=_noop
    )
    try:
        assert source._consumer._fetch_max_wait_ms == FETCH_MAX_WAIT_MS
        assert source._consumer._consumer_timeout == fetcher_tick_ms(FETCH_MAX_WAIT_MS) / 1000
    finally:
        await source._consumer.stop()  # never started: nothing to close but its handle
