"""Outage bookkeeping: backoff, dependency reasons and logs, log flood limits, stall clocks."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import types
from collections.abc import AsyncIterator

import pytest
from prometheus_client import CollectorRegistry

from genwire import health
from genwire.health import Backoff, Dependencies
from genwire.kafka.offsets import PartitionOffsets
from genwire.kafka.replay import replay_headers
from genwire.telemetry import logs
from genwire.telemetry import semconv as sc
from genwire.telemetry.logs import RateLimitFilter


def _clock(monkeypatch: pytest.MonkeyPatch, module: types.ModuleType) -> list[float]:
    """``module``'s ``time.monotonic``, moved by hand: ``clock[0]``. On the real one, a stall
    of a loaded machine (another process, a GC pause) between two steps would pass a grace or
    an interval of a few tens of milliseconds that the test means to stay within."""
    clock = [1000.0]
    monkeypatch.setattr(module, "time", types.SimpleNamespace(monotonic=lambda: clock[0]))
    return clock


def test_backoff_grows_is_capped_and_jittered() -> None:
    b = Backoff(first_s=0.1, cap_s=2.0)
    for attempt, ceiling in [(0, 0.1), (1, 0.2), (3, 0.8), (10, 2.0), (500, 2.0)]:
        delays = {b.delay(attempt) for _ in range(50)}
        assert all(ceiling / 2 <= d <= ceiling for d in delays)
        assert len(delays) > 1  # jittered: many waiting records do not retry in lockstep


def test_dependencies_name_what_is_down_once_past_the_grace(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = _clock(monkeypatch, health)
    registry = CollectorRegistry()
    deps = Dependencies("post", registry, unready_after_s=0.05, log_interval_s=60)
    caplog.set_level(logging.WARNING, "genwire.health")
    for _ in range(500):
        deps.failed("redis", ConnectionError("Connection refused"))
        clock[0] += 0.0001  # 50 ms in all: still within the grace
    assert deps.reasons() == []  # within the grace: a blip is not "not ready"
    clock[0] += 0.01
    (reason,) = deps.reasons()
    assert reason.startswith("redis unavailable for") and "500 failed attempts" in reason
    gauge = registry.get_sample_value(
        sc.METRIC_DEPENDENCY_UP, {"dependency": "redis", "stage": "post"}
    )
    assert gauge == 0
    deps.recovered("redis")
    assert deps.reasons() == [] and deps.down_for("redis") is None
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 2  # one when it went down, one when it came back: not 500
    assert "back after" in lines[1] and "500 failed attempts" in lines[1]


def test_rate_limit_filter_keeps_one_line_per_interval_and_counts_the_rest(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    clock = _clock(monkeypatch, logs)
    filt = RateLimitFilter(("aiokafka",), interval_s=0.1)

    def record(name: str, msg: str) -> logging.LogRecord:
        return logging.LogRecord(name, logging.ERROR, "f", 1, msg, ("node 1",), None)

    passed = []
    for _ in range(1000):
        passed.append(filt.filter(record("aiokafka.conn", "Unable connect to %s")))
        clock[0] += 0.00009  # 90 ms in all: within the interval
    assert passed.count(True) == 1
    assert all(filt.filter(record("genwire.x", "ours %s")) for _ in range(10))  # not limited
    clock[0] += 0.02
    summary = record("aiokafka.conn", "Unable connect to %s")
    assert filt.filter(summary)
    assert "999 similar lines suppressed" in summary.getMessage()


def test_a_partition_stalls_when_its_oldest_record_makes_no_progress() -> None:
    p = PartitionOffsets()
    assert p.stalled_for() == 0  # nothing to do is not a stall
    p.started(10)
    p.started(11)
    p.finished(11)  # a later record done does not move the commit position
    now = time.monotonic()
    assert p.stalled_for(now + 5) >= 5
    p.finished(10)
    assert p.committable() == 12
    assert p.stalled_for(now + 5) >= 4.9  # finished but not committed: still waiting
    p.was_committed(12)
    assert p.stalled_for(now + 5) == 0


def test_replay_headers_keep_the_request_and_count_the_replay() -> None:
    headers = (
        ("traceparent", b"00-abc-def-01"),
        (sc.HEADER_RETRY_TOPIC, b"genwire.prepared"),
        (sc.HEADER_RETRY_COUNT, b"1"),
        (sc.HEADER_ORIGIN, b"gw1"),
    )
    out = dict(replay_headers(headers, 2))
    assert out == {
        "traceparent": b"00-abc-def-01",
        sc.HEADER_ORIGIN: b"gw1",
        sc.HEADER_RETRY_COUNT: b"2",
    }


def test_an_outage_nobody_reports_any_more_is_over(monkeypatch: pytest.MonkeyPatch) -> None:
    """Records that waited were parked, or others succeed: readiness must not stay false."""
    clock = _clock(monkeypatch, health)
    deps = Dependencies("post", unready_after_s=0.0, forget_after_s=0.05)
    deps.failed("triton", "UNAVAILABLE")
    clock[0] += 0.04
    assert deps.reasons()
    clock[0] += 0.02
    assert deps.reasons() == [] and deps.down_for("triton") is None


async def test_waiting_records_wake_when_their_dependency_is_back() -> None:
    deps = Dependencies("post")
    woke: list[str] = []

    async def wait(name: str) -> None:
        await deps.wait_back(name, 30.0)  # a backoff grown long
        woke.append(name)

    waiters = [asyncio.create_task(wait(n)) for n in ("redis", "redis", "triton")]
    await asyncio.sleep(0.01)
    deps.failed("redis", "refused")
    deps.recovered("redis")
    await asyncio.wait_for(asyncio.gather(*waiters[:2]), 1.0)
    assert woke == ["redis", "redis"]  # not the one waiting for another dependency
    assert not waiters[2].done()
    deps.recovered("triton")
    await asyncio.wait_for(waiters[2], 1.0)
    # A backoff still ends by itself when nobody reports the dependency back.
    start = time.monotonic()
    await deps.wait_back("redis", 0.05)
    assert time.monotonic() - start >= 0.05


def test_one_waiting_record_probes_each_dependency() -> None:
    deps = Dependencies("post")
    a, b = object(), object()
    assert deps.claim_probe("redis", a) and deps.claim_probe("redis", a)
    assert not deps.claim_probe("redis", b)
    assert deps.claim_probe("triton", b)  # per dependency
    deps.release_probe(a)
    # The next to ask takes over; a record probes one dependency at a time, so b lets
    # triton go (it now waits for redis).
    assert deps.claim_probe("redis", b)
    assert deps.claim_probe("triton", a)
    deps.release_probe(b)
    assert deps.claim_probe("redis", a)
    assert deps.claim_probe("triton", b)  # a let triton go when it claimed redis
    # A claim that fails lets go too: a, probing redis, now waits for triton (b probes it),
    # so redis is free for the records still waiting for it.
    assert not deps.claim_probe("triton", a)
    assert deps.claim_probe("redis", object())


async def test_waiting_for_another_dependency_frees_the_probe_of_the_first() -> None:
    deps = Dependencies("post")
    x, y, w = object(), object(), object()
    assert deps.claim_probe("redis", x) and deps.claim_probe("kafka", y)
    waiting = asyncio.create_task(deps.wait_back("kafka", 30.0, x, 0.02))  # x: past redis
    # One turn: the waiter starts and lets go of redis. (Not a sleep: one that overran the
    # 0.02 s probe interval on a busy machine let the interval's timeout land together with
    # the ``recovered`` below, and the waiter slept on, its wake-up missed: see the report.)
    await asyncio.sleep(0)
    assert deps.claim_probe("redis", w)  # w, still waiting for redis, probes it now
    deps.recovered("kafka")
    await asyncio.wait_for(waiting, 1.0)


async def test_the_prober_retries_each_probe_interval_and_a_waiter_takes_over() -> None:
    deps = Dependencies("post")
    prober, waiter = object(), object()
    assert deps.claim_probe("redis", prober)
    # The prober's backoff has grown to 30 s: it retries after one probe interval anyway.
    # (10 s: far below the 30 s backoff, far above the 0.02 s interval on a loaded machine.)
    await asyncio.wait_for(deps.wait_back("redis", 30.0, prober, 0.02), 10.0)
    waiting = asyncio.create_task(deps.wait_back("redis", 30.0, waiter, 0.02))
    await asyncio.sleep(0.2)
    assert not waiting.done()  # the prober still probes: the others wait
    deps.release_probe(prober)  # it was parked, revoked, or succeeded without a word
    await asyncio.wait_for(waiting, 10.0)  # the waiter's next interval: it probes now
    assert not deps.claim_probe("redis", prober)


async def test_a_recovery_in_the_turn_a_wait_times_out_is_not_missed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``recovered`` sets the waiters' event and drops it; a waiter whose wait (a probe
    interval) timed out in that same loop turn sees a timeout, yet its event is set: it retries
    now, instead of waiting out its whole backoff on a new event nobody will set."""
    deps = Dependencies("test")
    real_timeout = asyncio.timeout
    raced: list[bool] = []

    @contextlib.asynccontextmanager
    async def timeout_that_wins_the_race(delay: float | None) -> AsyncIterator[None]:
        if raced:
            async with real_timeout(delay):
                yield
            return
        raced.append(True)
        deps.recovered("redis")  # the wake-up ...
        yield
        raise TimeoutError  # ... and the interval's end, seen as a timeout

    monkeypatch.setattr(health.asyncio, "timeout", timeout_that_wins_the_race)
    deps.failed("redis", "down")
    await asyncio.wait_for(deps.wait_back("redis", 30.0), 5.0)
    assert raced == [True]
