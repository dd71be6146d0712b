"""The Kafka client settings every service's consumer gets (``consumer_options``), and the
settings that reach them (``kafka_fetch_max_wait_ms``). No broker: clients are built, not
started."""

from __future__ import annotations

import inspect
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer
from pydantic import BaseModel

from genwire.kafka import EventConsumer, EventProducer
from genwire.kafka.consumer import (
    COMMIT_INTERVAL_S,
    FETCH_MAX_WAIT_MS,
    FETCHER_TICK_MS,
    consumer_options,
    fetch_wait_options,
    fetcher_tick_ms,
)
from genwire.policyfeed import PolicyFeed
from genwire.service.runtime import ServiceRuntime
from genwire.settings import FETCH_WAIT_LIMIT_MS, ServiceSettings


class Rec(BaseModel):
    request_id: str


async def _nothing(event: Rec) -> None:
    return None


def test_offsets_are_committed_by_us_only() -> None:
    """At-least-once rests on this: no auto-commit, in a group or not."""
    for group in ("g", None):
        assert consumer_options("k:9092", group_id=group)["enable_auto_commit"] is False


def test_a_group_less_consumer_starts_at_the_end_a_group_where_it_is_told() -> None:
    assert consumer_options("k:9092", group_id=None)["auto_offset_reset"] == "latest"
    assert consumer_options("k:9092", group_id="g")["auto_offset_reset"] == "earliest"


def test_the_default_fetch_wait_is_the_settings_default() -> None:
    assert ServiceSettings().kafka_fetch_max_wait_ms == FETCH_MAX_WAIT_MS
    assert consumer_options("k:9092", group_id="g")["fetch_max_wait_ms"] == FETCH_MAX_WAIT_MS


def test_the_default_commit_interval_is_the_settings_default() -> None:
    assert ServiceSettings().kafka_commit_interval_ms == round(COMMIT_INTERVAL_S * 1000) == 250


@pytest.mark.usefixtures("on_aiokafka")
async def test_the_setting_reaches_every_consumer_of_a_service() -> None:
    settings = ServiceSettings(
        kafka_fetch_max_wait_ms=250,
        kafka_quiet_fetch_max_wait_ms=7_000,
        kafka_commit_interval_ms=400,
        retry_probe_s=0.3,
        service_name="t",
    )
    runtime = ServiceRuntime(settings, "test", set_global_tracer=False)
    try:
        grouped = runtime.consumer("genwire.requests", Rec, _nothing)
        groupless = runtime.consumer("genwire.control", Rec, _nothing, group=False)
        quiet = runtime.consumer("genwire.control", Rec, _nothing, group=False, quiet=True)
        runtime._add_replayer()
        assert runtime._replayer is not None
        waits = {
            grouped: 250,
            groupless: 250,
            quiet: 7_000,
            runtime._replayer: 7_000,  # genwire.retry: no request passes through it
        }
        consumer: EventConsumer[Any]
        for consumer, wait in waits.items():
            assert consumer._consumer._fetch_max_wait_ms == wait
            assert consumer._consumer._consumer_timeout == fetcher_tick_ms(wait) / 1000
            assert consumer._commit_interval_s == 0.4
            assert consumer._probe_s == 0.3
            assert consumer._consumer._enable_auto_commit is False
    finally:
        runtime.tracer_provider.shutdown()


@pytest.mark.parametrize("field", ["kafka_fetch_max_wait_ms", "kafka_quiet_fetch_max_wait_ms"])
def test_fetch_wait_out_of_range_is_refused(field: str) -> None:
    """Not below zero, and not near the client's request timeout (40 s), past which a waiting
    fetch would fail and take its connection down."""
    for refused in (-1, FETCH_WAIT_LIMIT_MS + 1, 60_000):
        with pytest.raises(ValueError):
            ServiceSettings(**{field: refused})
    assert getattr(ServiceSettings(**{field: FETCH_WAIT_LIMIT_MS}), field) == FETCH_WAIT_LIMIT_MS
    request_timeout = inspect.signature(AIOKafkaConsumer).parameters["request_timeout_ms"]
    assert request_timeout.default > FETCH_WAIT_LIMIT_MS


def test_the_quiet_consumers_wait_longer_by_default() -> None:
    settings = ServiceSettings()
    assert settings.kafka_quiet_fetch_max_wait_ms == 5_000
    assert settings.kafka_quiet_fetch_max_wait_ms > settings.kafka_fetch_max_wait_ms


def test_a_probe_interval_of_zero_is_refused() -> None:
    with pytest.raises(ValueError):
        ServiceSettings(retry_probe_s=0)


@pytest.mark.usefixtures("on_aiokafka")
async def test_the_producer_is_idempotent_with_acks_all_and_no_linger() -> None:
    """The durability the services state (docs/stages.md): every in-sync replica has a record
    before it counts as published, and retries do not duplicate it."""
    producer = EventProducer("k:9092")
    client = producer._producer
    assert client._txn_manager is not None  # idempotence: aiokafka keeps sequence numbers
    assert client._sender._acks == -1  # "all"
    assert client._message_accumulator._linger_time == 0


async def test_records_finishing_within_the_interval_share_one_commit() -> None:
    """Each finished record marks the consumer dirty; the commit loop commits once, then waits
    the interval before the next commit, whatever finished meanwhile."""
    import asyncio

    producer = EventProducer("k:9092")
    consumer = EventConsumer(
        topic="t",
        group_id="g",
        model=Rec,
        handler=_nothing,
        producer=producer,
        bootstrap_servers="k:9092",
        stage="test",
        commit_interval_s=3600.0,
    )
    commits = 0

    async def commit(only: object = None) -> None:
        nonlocal commits
        commits += 1

    consumer._commit = commit  # type: ignore[method-assign]
    loop_task = asyncio.create_task(consumer._commit_loop())
    try:
        consumer._dirty.set()
        for _ in range(5):
            await asyncio.sleep(0)
        assert commits == 1
        for _ in range(4):  # more records finish during the interval
            consumer._dirty.set()
            await asyncio.sleep(0)
        assert commits == 1
        assert consumer._dirty.is_set()  # committed once the interval is over
    finally:
        loop_task.cancel()


def test_the_fetchers_tick_is_longer_than_the_fetch_wait() -> None:
    """Else the timer, not the answered fetch, would wake an idle consumer's fetcher."""
    for wait in (0, 100, FETCH_MAX_WAIT_MS, 1_000, 5_000, FETCH_WAIT_LIMIT_MS):
        assert fetcher_tick_ms(wait) > wait
        pair = {"fetch_max_wait_ms": wait, "consumer_timeout_ms": fetcher_tick_ms(wait)}
        assert fetch_wait_options(wait) == pair
        options = consumer_options("k:9092", group_id="g", fetch_max_wait_ms=wait)
        assert pair.items() <= options.items()
    assert fetcher_tick_ms(FETCH_MAX_WAIT_MS) == FETCHER_TICK_MS
    assert fetch_wait_options()["fetch_max_wait_ms"] == FETCH_MAX_WAIT_MS
    for refused in (-1, FETCH_WAIT_LIMIT_MS + 1):  # whoever builds the client, not only settings
        with pytest.raises(ValueError, match="fetch wait"):
            fetch_wait_options(refused)


async def test_the_policy_feed_wakes_on_the_fetchers_tick() -> None:
    feed = PolicyFeed("127.0.0.1:1", poll_ms=2_000)
    try:
        assert feed._consumer._fetch_max_wait_ms == 2_000
        assert feed._consumer._consumer_timeout == fetcher_tick_ms(2_000) / 1000
    finally:
        await feed._consumer.stop()  # never started: nothing to close but its handle
