"""aiokafka's background fetcher on a longer tick (``FETCHER_TICK_MS``), against the real
broker: an idle consumer's fetcher wakes for its answered fetches, not on a timer between them,
and a consumer held by a full pool still resumes when a record finishes."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest

from genwire.events import PreparedRequest, dump
from genwire.kafka import EventConsumer, EventProducer
from genwire.kafka.consumer import FETCH_MAX_WAIT_MS, FETCHER_TICK_MS

from .support import _prepared

# The tick is aiokafka's (librdkafka's consumer has its own thread and no such loop).
pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("on_aiokafka")]


@contextlib.asynccontextmanager
async def _running(
    env: tuple[str, str, EventProducer], handler: Any, concurrency: int
) -> AsyncIterator[EventConsumer[PreparedRequest]]:
    bootstrap, topic, producer = env
    consumer = EventConsumer(
        topic=topic,
        group_id=f"test-tick-{uuid.uuid4().hex[:8]}",
        model=PreparedRequest,
        handler=handler,
        producer=producer,
        bootstrap_servers=bootstrap,
        stage="test",
        concurrency=concurrency,
    )
    await consumer.start()
    task = asyncio.create_task(consumer.run())
    try:
        yield consumer
    finally:
        await consumer.stop()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def _assigned(consumer: EventConsumer[PreparedRequest], timeout_s: float = 30.0) -> None:
    async with asyncio.timeout(timeout_s):
        while not consumer._assigned:  # noqa: ASYNC110 (the rebalance sets no event)
            await asyncio.sleep(0.05)


async def test_an_idle_consumers_fetcher_wakes_for_its_fetches_not_between_them(
    env: tuple[str, str, EventProducer],
) -> None:
    assert FETCHER_TICK_MS > FETCH_MAX_WAIT_MS  # else the timer, not the fetch, would wake it

    async def nothing(event: PreparedRequest) -> None:
        return None

    async with _running(env, nothing, concurrency=4) as consumer:
        await _assigned(consumer)
        await asyncio.sleep(1.0)  # positions fetched, the long poll under way
        fetcher = consumer._consumer._fetcher
        wakes = 0
        plan = fetcher._get_actions_per_node

        def counted(assignment: Any) -> Any:
            nonlocal wakes
            wakes += 1
            return plan(assignment)

        fetcher._get_actions_per_node = counted
        window_s = 3.0
        started = time.monotonic()
        await asyncio.sleep(window_s)
        elapsed = time.monotonic() - started
        fetcher._get_actions_per_node = plan
    # One wake per answered fetch (every FETCH_MAX_WAIT_MS with nothing to read), plus one at
    # each end of the window; aiokafka's default tick (200 ms) would add two between each pair.
    fetches = elapsed * 1000 / FETCH_MAX_WAIT_MS
    assert 1 <= wakes <= fetches + 2, (wakes, fetches)


async def test_a_held_consumer_resumes_when_a_record_finishes(
    env: tuple[str, str, EventProducer],
) -> None:
    _, topic, producer = env
    gate, first, all_three = asyncio.Event(), asyncio.Event(), asyncio.Event()
    handled: list[str] = []

    async def slow_first(event: PreparedRequest) -> None:
        handled.append(event.request_id)
        first.set()
        if len(handled) == 1:
            await gate.wait()
        if len(handled) == 3:
            all_three.set()

    async with _running(env, slow_first, concurrency=1) as consumer:
        await _assigned(consumer)
        run = uuid.uuid4().hex[:8]
        ids = [f"{run}-{i}" for i in range(3)]
        key = run.encode()  # one partition: the three wait behind the first
        for rid in ids:
            await (await producer.send(topic, dump(_prepared(rid)), key=key))
        async with asyncio.timeout(30):
            await first.wait()
        await asyncio.sleep(FETCHER_TICK_MS / 1000 * 2)  # held over two ticks: still one
        assert handled == ids[:1]
        assert consumer._consumer.paused()  # the full pool paused every partition
        gate.set()
        async with asyncio.timeout(30):
            await all_three.wait()
    assert handled == ids
