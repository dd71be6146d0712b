"""A live PolicyFeed on the real broker: a change arrives with the fetch that is waiting for it,
not at the feed's next poll (so the long fetch wait costs idle polling, not propagation)."""

from __future__ import annotations

import asyncio
import contextlib
import uuid

import pytest
from prometheus_client import CollectorRegistry

from genwire.policy import ModelPolicy
from genwire.policyfeed import PolicyFeed, PolicyStore, delete_policy, publish_policy
from genwire.settings import CommonSettings

pytestmark = [pytest.mark.integration, pytest.mark.slow]


async def test_a_change_arrives_at_once_not_at_the_next_poll(infra: CommonSettings) -> None:
    bootstrap = infra.kafka_bootstrap_servers
    model = f"feedtest-{uuid.uuid4().hex[:8]}"  # its own key on the real genwire.config
    first = ModelPolicy(model=model, aliases={"champion": "1"}, revision=1)
    await publish_policy(bootstrap, first)
    # A minute between polls: only a fetch that returns at the first record brings the change
    # within the bound below.
    feed = PolicyFeed(bootstrap, store=PolicyStore(CollectorRegistry()), poll_ms=60_000)
    await feed.start()
    task = asyncio.create_task(feed.run())
    try:
        await asyncio.wait_for(feed.caught_up.wait(), 30)
        assert feed.get(model) == first
        await asyncio.sleep(1.0)  # the feed's next fetch is now waiting on the broker
        second = first.changed(by="test", weights={"1": 100})
        await publish_policy(bootstrap, second)
        for _ in range(200):  # 10 s at most, against the 60 s the poll would take
            if feed.get(model) == second:
                break
            await asyncio.sleep(0.05)
        assert feed.get(model) == second
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await feed.stop()
        await delete_policy(bootstrap, model)
