"""The suite's own hygiene: a session fixture deletes the ``test.`` topics made during its life
and keeps those already there (another run's, or one made before it started)."""

from __future__ import annotations

import time
import uuid

from genwire_stack.health import run_coro

from genwire.kafka import ensure_topics
from genwire.kafka.admin import delete_topics
from genwire.settings import CommonSettings
from genwire.topics import TopicSpec
from tests.common.support import deleting_new_test_topics, listed_test_topics

HOUR_MS = 3_600_000


def _topics_soon(infra: CommonSettings, gone: str, timeout_s: float = 15.0) -> set[str]:
    """The ``test.`` topics once ``gone`` is no longer listed (deletion is asynchronous)."""
    deadline = time.monotonic() + timeout_s
    while True:
        names = run_coro(listed_test_topics(infra))
        if gone not in names or time.monotonic() > deadline:
            return names
        time.sleep(0.2)


def test_a_fixtures_new_test_topics_are_deleted_and_older_ones_kept(
    infra: CommonSettings,
) -> None:
    bootstrap = infra.kafka_bootstrap_servers
    tag = uuid.uuid4().hex[:8]
    older, made = f"test.hygiene.older.{tag}", f"test.hygiene.made.{tag}"
    run_coro(ensure_topics(bootstrap, [TopicSpec(older, 1, HOUR_MS)]))
    try:
        with deleting_new_test_topics(infra):
            run_coro(ensure_topics(bootstrap, [TopicSpec(made, 1, HOUR_MS)]))
            assert made in run_coro(listed_test_topics(infra))
        names = _topics_soon(infra, gone=made)
        assert made not in names
        assert older in names
    finally:
        run_coro(delete_topics(bootstrap, [older, made]))
