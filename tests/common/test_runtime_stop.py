"""The runtime's stop ends its supervised tasks within ``TASKS_STOP_S``, and never hangs on one
that will not end."""

from __future__ import annotations

import asyncio
import logging

import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from genwire.service import ServiceRuntime
from genwire.service import runtime as runtime_module
from genwire.settings import ServiceSettings


@pytest.fixture(autouse=True)
def _short_bound(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(runtime_module, "TASKS_STOP_S", 0.4)


def _runtime() -> ServiceRuntime:
    settings = ServiceSettings(kafka_bootstrap_servers="127.0.0.1:1")
    return ServiceRuntime(
        settings, "test", span_exporter=InMemorySpanExporter(), set_global_tracer=False
    )


async def _swallowing(cancels_to_swallow: int, seen: list[int]) -> None:
    """Catches its first ``cancels_to_swallow`` cancels (a lost cancel), then stops on the next."""
    while True:
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            seen.append(1)
            if len(seen) > cancels_to_swallow:
                raise


async def test_a_task_that_lost_its_cancel_is_cancelled_again_and_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    runtime = _runtime()
    seen: list[int] = []
    polite = runtime.supervise(asyncio.sleep(3600), "polite")
    stubborn = runtime.supervise(_swallowing(1, seen), "stubborn")
    await asyncio.sleep(0)
    with caplog.at_level(logging.WARNING, logger="genwire.service.runtime"):
        async with asyncio.timeout(10):
            await runtime.stop()
    assert polite.cancelled() and stubborn.cancelled()
    assert len(seen) == 2  # cancelled, lost it, cancelled again
    messages = [r.getMessage() for r in caplog.records]
    assert messages == ["stopping: stubborn still running 0.2 s after its cancel; cancelled again"]


async def test_a_task_that_never_ends_is_left_and_the_stop_returns(
    caplog: pytest.LogCaptureFixture,
) -> None:
    runtime = _runtime()
    seen: list[int] = []
    deaf = runtime.supervise(_swallowing(2, seen), "deaf")
    await asyncio.sleep(0)
    with caplog.at_level(logging.WARNING, logger="genwire.service.runtime"):
        async with asyncio.timeout(10):
            await runtime.stop()
    assert not deaf.done() and len(seen) == 2
    assert [r.getMessage() for r in caplog.records] == [
        "stopping: deaf still running 0.2 s after its cancel; cancelled again",
        "stopping: deaf still running 0.2 s after a second cancel; left",
    ]
    deaf.cancel()  # the third cancel ends it (not left behind for the next test)
    await asyncio.wait({deaf}, timeout=1)
    assert deaf.cancelled()


async def _failing_on_cancel() -> None:
    try:
        await asyncio.sleep(3600)
    except asyncio.CancelledError:
        raise RuntimeError("clean-up failed") from None


async def test_a_task_raising_on_the_stops_cancel_is_logged_not_a_failure(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A requested stop exits 0 (``serve`` exits ``EXIT_FAILED`` only when ``failed`` is set)."""
    runtime = _runtime()
    task = runtime.supervise(_failing_on_cancel(), "clumsy")
    await asyncio.sleep(0)
    with caplog.at_level(logging.WARNING, logger="genwire.service.runtime"):
        async with asyncio.timeout(10):
            await runtime.stop()
    assert task.done() and isinstance(task.exception(), RuntimeError)
    assert runtime.failed is None
    assert [r.getMessage() for r in caplog.records] == [
        "stopping: clumsy ended with RuntimeError('clean-up failed')"
    ]


async def test_a_task_dying_before_the_stop_is_still_a_failure() -> None:
    runtime = _runtime()

    async def dies() -> None:
        raise RuntimeError("broken")

    task = runtime.supervise(dies(), "dies")
    await asyncio.wait({task})
    await asyncio.sleep(0)  # the done callback runs on the next turn of the loop
    assert runtime.failed == "background task dies died: RuntimeError('broken')"
    async with asyncio.timeout(10):
        await runtime.stop()
    assert runtime.failed == "background task dies died: RuntimeError('broken')"
