"""Fixtures of the gateway tests: a private requests topic, the stand-in pipeline, gateways."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from genwire.kafka import ensure_topics
from genwire.kafka.admin import delete_topics
from genwire.settings import CommonSettings
from genwire.topics import HOUR_MS, TopicSpec
from tests.common.support import fresh_topic
from tests.gateway.private_redis import redis, redis_url  # noqa: F401  (fixtures)

from .harness import FakePipeline, GatewayInstance, start_gateway, stop_gateway


@pytest.fixture(scope="module")
async def requests_topic(infra: CommonSettings) -> AsyncIterator[str]:
    """A requests topic only this module's gateways and stand-in pipeline use."""
    topic = fresh_topic("gateway.requests")
    await ensure_topics(infra.kafka_bootstrap_servers, [TopicSpec(topic, 3, HOUR_MS)])
    yield topic
    await delete_topics(infra.kafka_bootstrap_servers, [topic])


@pytest.fixture(scope="module")
async def reply_topic(infra: CommonSettings) -> AsyncIterator[str]:
    """A reply topic only this module's gateways read (their own group: the stack's gateways
    never rebalance because of a test)."""
    topic = fresh_topic("gateway.replies")
    await ensure_topics(infra.kafka_bootstrap_servers, [TopicSpec(topic, 6, HOUR_MS)])
    yield topic
    await delete_topics(infra.kafka_bootstrap_servers, [topic])


@pytest.fixture(scope="module")
async def pipeline(infra: CommonSettings, requests_topic: str) -> AsyncIterator[FakePipeline]:
    """The stand-in pipeline, answering with its default script unless a test sets one."""
    fake = FakePipeline(infra, requests_topic)
    await fake.start()
    yield fake
    await fake.stop()


@pytest.fixture(autouse=True)
def _default_script(request: pytest.FixtureRequest) -> None:
    """Each test starts from the default script."""
    if "pipeline" in request.fixturenames:
        from .harness import Script

        request.getfixturevalue("pipeline").script = lambda _: Script()


@pytest.fixture(scope="module")
async def gateways(
    infra: CommonSettings, requests_topic: str, reply_topic: str, pipeline: FakePipeline
) -> AsyncIterator[tuple[GatewayInstance, GatewayInstance]]:
    """Two gateway instances in this process, on different ports, sharing the broker and one
    reply group."""
    group = f"{reply_topic}.group"
    first = await start_gateway(infra, requests_topic, reply_topic, group)
    second = await start_gateway(infra, requests_topic, reply_topic, group)
    yield first, second
    await stop_gateway(second)
    await stop_gateway(first)
