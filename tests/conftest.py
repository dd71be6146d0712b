"""Session fixtures shared by every test area: the real native stack, started when missing.

``infra`` makes sure Kafka, Redis, Triton and Jaeger run (``genwire_stack.ensure_up``, the same
code as ``make up``); ``stack`` also starts genwire's five services with the default model
loaded. What the suite starts is left running afterwards, like ``make up`` (stop it with
``make down``): the next run, and everyone else on the machine, reuses it. Tests that use either
fixture are marked ``integration`` automatically (``pytest -m "not integration"`` skips them).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import pytest
from aiokafka.admin import AIOKafkaAdminClient
from genwire_stack import INFRA, StackError, ensure_up

from genwire.kafka.admin import delete_topics
from genwire.kafka_security import client_options
from genwire.settings import CommonSettings

log = logging.getLogger("genwire_stack.tests")

STACK_FIXTURES = frozenset({"infra", "stack"})
TEST_TOPIC_PREFIX = "test."
"""How tests name the topics they make (``test.<area>.<random>``): the run deletes its own."""


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark every test that needs the real stack as ``integration``."""
    for item in items:
        if STACK_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.integration)


def _bring_up(components: tuple[str, ...] | None, model: bool) -> CommonSettings:
    settings = CommonSettings()
    try:
        ensure_up(components, model=model, settings=settings, out=log.info)
    except StackError as exc:
        pytest.fail(f"the native stack could not start: {exc}", pytrace=False)
    return settings


T = TypeVar("T")


def _run(work: Coroutine[Any, Any, T]) -> T:
    """Run ``work`` to its end on a loop in a thread of its own: the session's test loop (and
    which loop is current here) stays untouched."""
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="genwire-test-topics") as pool:
        return pool.submit(asyncio.run, work).result()


async def _test_topics(settings: CommonSettings) -> set[str]:
    admin = AIOKafkaAdminClient(
        bootstrap_servers=settings.kafka_bootstrap_servers, **client_options(settings)
    )
    await admin.start()
    try:
        return {t for t in await admin.list_topics() if t.startswith(TEST_TOPIC_PREFIX)}
    finally:
        await admin.close()


async def _delete_new_test_topics(settings: CommonSettings, before: set[str]) -> list[str]:
    made = sorted(await _test_topics(settings) - before)
    if made:
        await delete_topics(settings.kafka_bootstrap_servers, made, settings=settings)
    return made


@pytest.fixture(scope="session")
def infra() -> Iterator[CommonSettings]:
    """Kafka, Redis, Triton and Jaeger up and healthy; yields the settings that reach them.
    At the end, the ``test.`` topics made during the run are deleted (those already there when
    it started are not), so the broker does not collect them run by run."""
    settings = _bring_up(INFRA, model=False)
    before = _run(_test_topics(settings))
    yield settings
    try:
        made = _run(_delete_new_test_topics(settings, before))
    except Exception as exc:  # the broker stopped by a test and not back: say so, fail nothing
        log.warning("the run's test topics were not deleted: %s", exc)
    else:
        log.info("deleted the run's %d test topics", len(made))


@pytest.fixture(scope="session")
def stack(infra: CommonSettings) -> CommonSettings:
    """The whole stack: ``infra`` plus the default model loaded and the five services ready."""
    return _bring_up(None, model=True)


def _on_client(monkeypatch: pytest.MonkeyPatch, name: str) -> Iterator[str]:
    from genwire import kafka_security

    monkeypatch.setenv("GENWIRE_KAFKA_CLIENT", name)
    previous = kafka_security._process.get("settings")
    kafka_security.use(None)  # the environment applies, not a service's settings left behind
    assert kafka_security.client_kind() == name
    yield name
    kafka_security.use(previous)


@pytest.fixture(params=["aiokafka", "librdkafka"])
def kafka_client(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """Each test that uses it runs on both clients of the data path (``kafka_client``)."""
    yield from _on_client(monkeypatch, request.param)


@pytest.fixture
def on_aiokafka(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """The test reads aiokafka's own attributes: aiokafka, whatever the environment says."""
    yield from _on_client(monkeypatch, "aiokafka")


@pytest.fixture
def on_librdkafka(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """The test is about librdkafka's client, whatever the environment says."""
    yield from _on_client(monkeypatch, "librdkafka")
