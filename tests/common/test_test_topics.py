"""The suite's own hygiene: a session fixture deletes the ``test.`` topics its own process made
during its life and keeps those already there and those another test run made meanwhile."""

from __future__ import annotations

import time
import uuid

from genwire_stack.health import run_coro

from genwire.kafka import ensure_topics
from genwire.kafka.admin import delete_topics
from genwire.settings import CommonSettings
from genwire.topics import TopicSpec
from tests.common.support import (
    SESSION_TOKEN,
    deleting_new_test_topics,
    fresh_topic,
    listed_test_topics,
    ours,
)

HOUR_MS = 3_600_000


def _topics_soon(infra: CommonSettings, gone: str, timeout_s: float = 15.0) -> set[str]:
    """The ``test.`` topics once ``gone`` is no longer listed (deletion is asynchronous)."""
    deadline = time.monotonic() + timeout_s
    while True:
        names = run_coro(listed_test_topics(infra))
        if gone not in names or time.monotonic() > deadline:
            return names
        time.sleep(0.2)


def test_only_this_runs_topics_are_its_own() -> None:
    assert ours(fresh_topic("a.b"))
    assert not ours("test.a.zzzzzz.0123abcd")  # another run's token
    assert not ours(f"test.a.{SESSION_TOKEN}x.0123abcd")  # a token that merely starts alike
    assert not ours(f"other.a.{SESSION_TOKEN}.0123abcd")  # not a test topic


def test_a_fixtures_new_test_topics_are_deleted_and_older_and_foreign_ones_kept(
    infra: CommonSettings,
) -> None:
    bootstrap = infra.kafka_bootstrap_servers
    older, made = fresh_topic("hygiene.older"), fresh_topic("hygiene.made")
    # Another pytest run's topic, made while this fixture lives (CI beside a developer's run).
    # Its token is not hex, so never this run's.
    foreign = f"test.hygiene.foreign.zzzzzz.{uuid.uuid4().hex[:8]}"
    assert SESSION_TOKEN in made and SESSION_TOKEN not in foreign
    run_coro(ensure_topics(bootstrap, [TopicSpec(older, 1, HOUR_MS)]))
    try:
        with deleting_new_test_topics(infra):
            run_coro(ensure_topics(bootstrap, [TopicSpec(t, 1, HOUR_MS) for t in (made, foreign)]))
            assert {made, foreign} <= run_coro(listed_test_topics(infra))
        names = _topics_soon(infra, gone=made)
        assert made not in names
        assert older in names
        assert foreign in names
    finally:
        run_coro(delete_topics(bootstrap, [older, made, foreign]))
