"""aiokafka's background fetcher on a longer tick (``fetcher_tick_ms``), against the real
broker: an idle consumer's fetcher wakes for its answered fetches, not on a timer between them,
and a consumer held by a full pool resumes when a record finishes, without the timer."""

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
from genwire.kafka.consumer import FETCH_MAX_WAIT_MS, fetcher_tick_ms

from .support import _prepared, eventually

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
        await eventually(lambda: consumer.ready)
        yield consumer
    finally:
        await consumer.stop()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def _positioned(consumer: EventConsumer[PreparedRequest]) -> bool:
    client = consumer._consumer
    assignment = client._subscription.subscription.assignment
    return all(assignment.state_value(tp).has_valid_position for tp in client.assignment())


async def test_an_idle_consumers_fetcher_wakes_for_its_fetches_not_between_them(
    env: tuple[str, str, EventProducer], monkeypatch: pytest.MonkeyPatch
) -> None:
    assert fetcher_tick_ms(FETCH_MAX_WAIT_MS) > FETCH_MAX_WAIT_MS

    async def nothing(event: PreparedRequest) -> None:
        return None

    async with _running(env, nothing, concurrency=4) as consumer:
        await eventually(lambda: _positioned(consumer))
        await asyncio.sleep(0.5)  # the long polls under way
        client = consumer._consumer
        leaders = {client._client.cluster.leader_for_partition(tp) for tp in client.assignment()}
        fetcher = client._fetcher
        wakes = 0
        plan = fetcher._get_actions_per_node

        def counted(assignment: Any) -> Any:
            nonlocal wakes
            wakes += 1
            return plan(assignment)

        monkeypatch.setattr(fetcher, "_get_actions_per_node", counted)
        started = time.monotonic()
        await asyncio.sleep(3.0)
        elapsed = time.monotonic() - started
        monkeypatch.undo()
    # One wake per answered fetch (one fetch in flight per leader, answered every
    # FETCH_MAX_WAIT_MS with nothing to read), plus one at each end of the window; aiokafka's
    # default tick (200 ms) adds two between each pair (18 wakes here, checked).
    fetches = len(leaders) * elapsed * 1000 / FETCH_MAX_WAIT_MS
    assert 1 <= wakes <= fetches + 2, (wakes, fetches)


async def test_a_held_consumer_resumes_when_a_record_finishes_without_the_timer(
    env: tuple[str, str, EventProducer], monkeypatch: pytest.MonkeyPatch
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
        # A timer that never fires: whatever the fetcher does next, an event must start it.
        monkeypatch.setattr(consumer._consumer._fetcher, "_fetcher_timeout", 3600.0)
        run = uuid.uuid4().hex[:8]
        ids = [f"{run}-{i}" for i in range(3)]
        key = run.encode()  # one partition: the three wait behind the first
        for rid in ids:
            await (await producer.send(topic, dump(_prepared(rid)), key=key))
        async with asyncio.timeout(30):
            await first.wait()
        await asyncio.sleep(1.0)  # held: still one
        assert handled == ids[:1]
        assert consumer._consumer.paused()  # the full pool paused every partition
        gate.set()
        # Resumed by the pause being lifted (and the fetch it sends), not a tick: well within
        # the hour the timer now waits, and within a few fetch waits.
        async with asyncio.timeout(5):
            await all_three.wait()
    assert handled == ids
