"""Fixtures of the security tests: two in-process gateways (auth on, the default) and the
gateway tests' stand-in pipeline on a private requests topic; keys made per test."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

from genwire.apikeys import KeyRecord, KeyStore
from genwire.kafka import ensure_topics
from genwire.kafka.admin import delete_topics
from genwire.redisconn import connect
from genwire.settings import CommonSettings
from genwire.topics import HOUR_MS, TopicSpec
from tests.common.support import fresh_topic
from tests.gateway.harness import (
    FakePipeline,
    GatewayInstance,
    Script,
    start_gateway,
    stop_gateway,
)
from tests.gateway.private_redis import redis, redis_url  # noqa: F401  (fixtures)


async def _topic(infra: CommonSettings, kind: str, partitions: int) -> str:
    topic = fresh_topic(f"security.{kind}")
    await ensure_topics(infra.kafka_bootstrap_servers, [TopicSpec(topic, partitions, HOUR_MS)])
    return topic


async def _delete(infra: CommonSettings, topic: str) -> None:
    await delete_topics(infra.kafka_bootstrap_servers, [topic])


@pytest.fixture(scope="module")
async def security_pipeline(infra: CommonSettings) -> AsyncIterator[FakePipeline]:
    """The stand-in pipeline on this module's private requests topic."""
    topic = await _topic(infra, "requests", 3)
    fake = FakePipeline(infra, topic)
    await fake.start()
    yield fake
    await fake.stop()
    await _delete(infra, topic)


@pytest.fixture(autouse=True)
def _default_script(request: pytest.FixtureRequest) -> None:
    if "security_pipeline" in request.fixturenames:
        request.getfixturevalue("security_pipeline").script = lambda _: Script()


@pytest.fixture(scope="module")
async def two_gateways(
    infra: CommonSettings, security_pipeline: FakePipeline
) -> AsyncIterator[tuple[GatewayInstance, GatewayInstance]]:
    """Two gateways in this process (auth on, as by default), one reply group. Their key-change
    poll is an hour apart: a revocation reaches them by its announcement or not at all."""
    replies = await _topic(infra, "replies", 6)
    group = f"{replies}.group"
    first, second = [
        await start_gateway(infra, security_pipeline.topic, replies, group, auth_poll_s=3600.0)
        for _ in range(2)
    ]
    yield first, second
    await stop_gateway(second)
    await stop_gateway(first)
    await _delete(infra, replies)


MakeKey = Callable[..., Awaitable[tuple[str, KeyRecord]]]


@pytest.fixture
async def make_key(infra: CommonSettings) -> AsyncIterator[MakeKey]:
    """Creates keys with unique names; revokes them after the test."""
    client = connect(infra.redis_url)
    store = KeyStore(client)
    made: list[KeyRecord] = []

    async def make(scopes: tuple[str, ...] = ("generate",), **limits: Any) -> tuple[str, KeyRecord]:
        key, record = await store.create(f"test-{uuid.uuid4().hex[:10]}", scopes, **limits)
        made.append(record)
        return key, record

    yield make
    for record in made:
        with contextlib.suppress(Exception):  # already revoked by the test
            await store.revoke(record.id)
    await client.aclose()  # type: ignore[attr-defined]
