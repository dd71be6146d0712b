"""A live PolicyFeed on the real broker: a change arrives with the fetch that is waiting for it,
not at the feed's next poll (so the long fetch wait costs idle polling, not propagation), and a
service's feed takes that wait from its settings."""

from __future__ import annotations

import asyncio
import contextlib
import uuid

import pytest
from prometheus_client import CollectorRegistry

from genwire.kafka.admin import delete_topics, ensure_topics
from genwire.policy import ModelPolicy
from genwire.policyfeed import PolicyFeed, PolicyStore, delete_policy, followed, publish_policy
from genwire.service.runtime import ServiceRuntime
from genwire.settings import CommonSettings, ServiceSettings
from genwire.topics import HOUR_MS, TopicSpec
from tests.common.support import fresh_topic

pytestmark = [pytest.mark.integration, pytest.mark.slow]


async def test_a_change_arrives_at_once_not_at_the_next_poll(infra: CommonSettings) -> None:
    bootstrap = infra.kafka_bootstrap_servers
    model = f"feedtest-{uuid.uuid4().hex[:8]}"  # its own key on the real genwire.config
    first = ModelPolicy(model=model, aliases={"champion": "1"}, revision=1)
    await publish_policy(bootstrap, first)
    # 30 s between polls (under the client's 40 s request timeout): only a fetch that returns
    # at the first record brings the change within the bound below.
    feed = PolicyFeed(bootstrap, store=PolicyStore(CollectorRegistry()), poll_ms=30_000)
    await feed.start()
    task = asyncio.create_task(feed.run())
    try:
        await asyncio.wait_for(feed.caught_up.wait(), 30)
        assert feed.get(model) == first
        await asyncio.sleep(1.0)  # the feed's next fetch is now waiting on the broker
        second = first.changed(by="test", weights={"1": 100})
        await publish_policy(bootstrap, second)
        for _ in range(200):  # 10 s at most, against the 30 s the poll would take
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


async def test_an_empty_topic_is_caught_up_without_waiting_a_poll(infra: CommonSettings) -> None:
    bootstrap = infra.kafka_bootstrap_servers
    topic = fresh_topic("policyfeed")
    await ensure_topics(bootstrap, [TopicSpec(topic, 1, HOUR_MS)])
    feed = PolicyFeed(
        bootstrap, store=PolicyStore(CollectorRegistry()), topic=topic, poll_ms=30_000
    )
    try:
        # Nothing to read: started and ready at once, not after a (30 s) fetch came back empty.
        await asyncio.wait_for(feed.start(), 10)
        task = asyncio.create_task(feed.run())
        try:
            await asyncio.wait_for(feed.caught_up.wait(), 10)
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
    finally:
        await feed.stop()
        await delete_topics(bootstrap, [topic])


async def test_a_missing_topic_is_not_ready_until_it_exists(infra: CommonSettings) -> None:
    """A topic the feed cannot find nor create is not "no policies": the feed says why it is
    not ready, keeps looking, and catches up once the topic exists."""
    bootstrap = infra.kafka_bootstrap_servers
    topic = fresh_topic("policyfeed")  # not one of genwire's topics: the feed creates nothing
    feed = PolicyFeed(bootstrap, store=PolicyStore(CollectorRegistry()), topic=topic)
    task: asyncio.Task[None] | None = None
    try:
        await asyncio.wait_for(feed.start(), 30)
        task = asyncio.create_task(feed.run())
        await asyncio.sleep(0.5)
        assert not feed.caught_up.is_set()
        (why,) = feed.not_ready()
        assert topic in why and "does not exist" in why and "unknown" in why
        await ensure_topics(bootstrap, [TopicSpec(topic, 1, HOUR_MS)])
        policy = ModelPolicy(model="m", aliases={"champion": "1"}, revision=1)
        await publish_policy(bootstrap, policy, topic=topic)
        await asyncio.wait_for(feed.caught_up.wait(), 30)  # found at its next look (5 s)
        for _ in range(200):
            if feed.get("m") == policy:
                break
            await asyncio.sleep(0.05)
        assert feed.get("m") == policy and feed.not_ready() == []
    finally:
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await feed.stop()
        await delete_topics(bootstrap, [topic])


async def test_a_services_feed_fetches_on_the_quiet_wait(infra: CommonSettings) -> None:
    """``kafka_quiet_fetch_max_wait_ms`` reaches the feed every service follows: the policy
    topic has no request's records, so its fetch is held long (the test above: a change still
    arrives at once)."""
    settings = ServiceSettings(
        kafka_bootstrap_servers=infra.kafka_bootstrap_servers,
        kafka_quiet_fetch_max_wait_ms=7_000,
        service_name="feedtest",
    )
    runtime = ServiceRuntime(settings, "test", set_global_tracer=False)
    try:
        async with followed(runtime, wait_s=30) as feed:
            assert feed.caught_up.is_set()
            assert feed._consumer._fetch_max_wait_ms == 7_000
            for task in runtime._tasks:
                task.cancel()
    finally:
        runtime.tracer_provider.shutdown()
