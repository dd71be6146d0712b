"""Session fixtures shared by every test area: the real native stack, started when missing.

``infra`` makes sure Kafka, Redis, Triton and Jaeger run (``genwire_stack.ensure_up``, the same
code as ``make up``); ``stack`` also starts genwire's five services with the default model
loaded. What the suite starts is left running afterwards, like ``make up`` (stop it with
``make down``): the next run, and everyone else on the machine, reuses it. Tests that use either
fixture are marked ``integration`` automatically (``pytest -m "not integration"`` skips them).
``tiny_checkpoint`` trains the tests' tiny GPT-2 once per session, for every area that asks.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from genwire_stack import INFRA, StackError, ensure_up

from genwire.settings import CommonSettings
from tests.common.support import deleting_new_test_topics

log = logging.getLogger("genwire_stack.tests")

# A JMX port exported for measuring (README) would reach every private broker the tests start
# (their settings read the environment) and collide with the stack's broker or be refused on
# the secure one; the tests that want JMX set it themselves.
os.environ.pop("GENWIRE_KAFKA_JMX_PORT", None)

STACK_FIXTURES = frozenset({"infra", "stack"})


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


@pytest.fixture(scope="session")
def infra() -> Iterator[CommonSettings]:
    """Kafka, Redis, Triton and Jaeger up and healthy; yields the settings that reach them.
    The ``test.`` topics made meanwhile are deleted at the end (``deleting_new_test_topics``)."""
    settings = _bring_up(INFRA, model=False)
    with deleting_new_test_topics(settings):
        yield settings


@pytest.fixture(scope="session")
def stack(infra: CommonSettings) -> CommonSettings:
    """The whole stack: ``infra`` plus the default model loaded and the five services ready."""
    return _bring_up(None, model=True)


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An HF checkpoint folder of a 2-layer GPT-2 with a 512-token byte-level BPE, trained once
    for the whole session (``tests.common.tiny``)."""
    from genwire_model.train import train  # torch: only for the tests that ask

    from tests.common.tiny import TINY, tiny_documents

    out = tmp_path_factory.mktemp("tiny-checkpoint")
    train(out, tiny_documents(), TINY, progress=lambda _: None)
    return out


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
