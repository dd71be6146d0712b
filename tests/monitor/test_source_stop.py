"""The span source's stop is bounded: a commit or a leave that never finishes is cut short, and
a poll under way ends at the stop. Its polls wait long only when there is nothing to commit;
the monitor's quiet readers take the quiet fetch wait."""

from __future__ import annotations

import asyncio
import logging
import time

import pytest
from aiokafka import TopicPartition
from genwire_monitor.app import policy_feed, span_source
from genwire_monitor.config import MonitorSettings
from genwire_monitor.source import LEAVE_FLOOR_S, SpanSource, _Listener
from prometheus_client import CollectorRegistry

from genwire.kafka.consumer import FETCH_MAX_WAIT_MS, IDLE_POLL_MS, fetcher_tick_ms
from genwire.policyfeed import PolicyStore


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


async def test_the_monitors_quiet_readers_take_the_quiet_fetch_wait() -> None:
    """Feedback and policies: no request passes through them; the spans come with every one."""
    cfg = MonitorSettings(
        kafka_bootstrap_servers="127.0.0.1:1", kafka_quiet_fetch_max_wait_ms=7_000
    )
    feedback = span_source(cfg, _noop, feedback=True)
    spans = span_source(cfg, _noop)
    feed = policy_feed(cfg, PolicyStore(CollectorRegistry()))
    assert (feedback.topic, spans.topic) == (cfg.feedback_topic, cfg.spans_topic)
    try:
        for client, wait in (
            (feedback._consumer, 7_000),
            (feed._consumer, 7_000),
            (spans._consumer, FETCH_MAX_WAIT_MS),
        ):
            assert client._fetch_max_wait_ms == wait
            assert client._consumer_timeout == fetcher_tick_ms(wait) / 1000
    finally:
        for client in (feedback._consumer, feed._consumer, spans._consumer):
            await client.stop()  # never started: nothing to close but its handle


async def test_a_poll_waits_for_the_next_commit_only_while_spans_are_uncommitted() -> None:
    source = SpanSource(
        topic="otlp_spans",
        group_id="g",
        bootstrap_servers="127.0.0.1:1",
        sink=_noop,
        commit_interval_s=1.0,
    )
    await source._consumer.stop()  # never started
    now = time.monotonic()
    assert source._wait_ms(now) == IDLE_POLL_MS  # nothing to commit: an idle wait
    source._positions[TopicPartition("otlp_spans", 0)] = 3
    # due a second after the last commit (bounds that hold however late the call comes)
    assert source._wait_ms(time.monotonic() + 0.5) == IDLE_POLL_MS  # 1.5 s off: capped
    assert source._wait_ms(now) <= 1_000
    assert source._wait_ms(now - 0.75) <= 250
    assert source._wait_ms(now - 5.0) == 0  # overdue: commit straight after this poll


class _Waiting:
    """A client whose poll waits for ever (an idle topic's long fetch)."""

    def __init__(self) -> None:
        self.polling = asyncio.Event()

    async def getmany(self, *, timeout_ms: int, max_records: int) -> dict[object, list[object]]:
        self.polling.set()
        await asyncio.Event().wait()
        return {}

    async def commit(self, offsets: object) -> None:
        return None

    async def stop(self) -> None:
        return None


async def _polling_for_ever() -> tuple[SpanSource, asyncio.Task[None]]:
    """A source whose run is inside a poll that never returns by itself."""
    source = SpanSource(
        topic="otlp_spans", group_id="g", bootstrap_servers="127.0.0.1:1", sink=_noop
    )
    await source._consumer.stop()  # never started
    client = _Waiting()
    source._consumer = client  # type: ignore[assignment]
    run = asyncio.create_task(source.run())
    await client.polling.wait()
    return source, run


async def test_a_stop_ends_the_poll_under_way_at_once() -> None:
    source, run = await _polling_for_ever()
    async with asyncio.timeout(5):  # the poll would never return by itself
        await source.stop(timeout_s=2.0)
        await run  # ended by the stop, not cancelled
    assert not run.cancelled()


async def test_a_cancel_of_the_run_is_not_taken_for_a_stop() -> None:
    source, run = await _polling_for_ever()
    source._stopping = True  # a stop begun, and the runtime cancels the task meanwhile
    run.cancel()
    with pytest.raises(asyncio.CancelledError):
        await run


class _Refusing:
    """A client whose commit fails (the coordinator moved during the rebalance)."""

    async def commit(self, offsets: object) -> None:
        raise RuntimeError("not the coordinator")


async def test_a_revoked_partitions_position_is_dropped_committed_or_not() -> None:
    """Else an idle source would keep waking for a commit it can never make, and could commit
    an old position over the next owner's if the partition came back."""
    source = SpanSource(
        topic="otlp_spans", group_id="g", bootstrap_servers="127.0.0.1:1", sink=_noop
    )
    await source._consumer.stop()  # never started
    source._consumer = _Refusing()  # type: ignore[assignment]
    kept, revoked = TopicPartition("otlp_spans", 0), TopicPartition("otlp_spans", 1)
    source.assigned |= {kept, revoked}
    source._positions.update({kept: 5, revoked: 9})
    with pytest.raises(RuntimeError):
        await _Listener(source).on_partitions_revoked([revoked])
    assert source.assigned == {kept}
    assert source._positions == {kept: 5}
