"""A consumer on a long fetch wait (``kafka_quiet_fetch_max_wait_ms``), against the real broker:
the wait sets only how often an idle consumer polls. A record produced while its fetch waits,
or while a full pool holds the consumer, is handled at once, not when the wait runs out."""

from __future__ import annotations

import asyncio
import uuid

import pytest

from genwire.events import PreparedRequest, dump
from genwire.kafka import EventProducer

from .support import _prepared, running_consumer

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("kafka_client")]

LONG_WAIT_MS = 10_000
"""Twice and more the bound below: a record that waited for the fetch in flight to run out
would miss it. (Not longer: on librdkafka the first record after the assignment can wait for
the fetch that was in flight when its partition became fetchable, docs/stages.md.)"""

PROMPT_S = 4.0
"""Well within the wait: the fetch did not run out first."""


async def test_a_record_ends_the_long_wait_at_once(
    env: tuple[str, str, EventProducer],
) -> None:
    _, topic, producer = env
    handled: list[str] = []
    warm, seen = asyncio.Event(), asyncio.Event()

    async def note(event: PreparedRequest) -> None:
        handled.append(event.request_id)
        (warm if len(handled) == 1 else seen).set()

    async with running_consumer(env, note, concurrency=4, fetch_max_wait_ms=LONG_WAIT_MS):
        run = uuid.uuid4().hex[:8]
        # The first record proves the consumer fetches from its position (on librdkafka it
        # may wait for the fetch in flight at the assignment); the second comes during a
        # waiting fetch.
        await (await producer.send(topic, dump(_prepared(f"{run}-0")), key=run.encode()))
        async with asyncio.timeout(30):
            await warm.wait()
        await asyncio.sleep(1.0)  # the next fetch is under way, waiting on the broker
        await (await producer.send(topic, dump(_prepared(f"{run}-1")), key=run.encode()))
        async with asyncio.timeout(PROMPT_S):
            await seen.wait()
    assert handled == [f"{run}-0", f"{run}-1"]


async def test_a_record_produced_while_held_is_handled_at_once_after_the_hold(
    env: tuple[str, str, EventProducer],
) -> None:
    """The pool full (aiokafka: every partition paused, before its fetcher sends again;
    librdkafka: held in the loop, the client fetching on): the record that arrives meanwhile
    is handled as soon as the hold ends, not at the end of a fetch wait. (A fetch already in
    flight at a pause: tests/common/test_fetcher_tick.py.)"""
    _, topic, producer = env
    gate, first, second = asyncio.Event(), asyncio.Event(), asyncio.Event()
    handled: list[str] = []

    async def slow_first(event: PreparedRequest) -> None:
        handled.append(event.request_id)
        if len(handled) == 1:
            first.set()
            await gate.wait()
        else:
            second.set()

    async with running_consumer(env, slow_first, concurrency=1, fetch_max_wait_ms=LONG_WAIT_MS):
        run = uuid.uuid4().hex[:8]
        key = run.encode()
        await (await producer.send(topic, dump(_prepared(f"{run}-0")), key=key))
        async with asyncio.timeout(30):  # the first after the assignment: as above
            await first.wait()
        await asyncio.sleep(1.0)  # held
        await (await producer.send(topic, dump(_prepared(f"{run}-1")), key=key))
        await asyncio.sleep(1.0)
        assert handled == [f"{run}-0"]  # still held
        gate.set()
        async with asyncio.timeout(PROMPT_S):
            await second.wait()
    assert handled == [f"{run}-0", f"{run}-1"]
