"""The monitor's policy follower: current only while its feed has read genwire.config to its end;
a feed that fails is rebuilt on the same store and reads the topic again, never taking a
policy back to an older revision; not ready, with the reason, meanwhile."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

from genwire_monitor.policyfollow import PolicyFollower

from genwire.policy import ModelPolicy
from genwire.policyfeed import PolicyStore

TOPIC = "test.config"


class MemoryFeed:
    """Reads ``topic`` (a list of records) from its start into ``store``, like ``PolicyFeed``:
    caught up once it reached the end it saw at start; then applies what is appended. It
    waits at ``gate`` before catching up, and fails when ``fail`` is set."""

    def __init__(self, store: PolicyStore, topic: list[ModelPolicy], gate: asyncio.Event) -> None:
        self.store, self.topic, self.gate = store, topic, gate
        self.caught_up = asyncio.Event()
        self.fail = asyncio.Event()
        self.stopped = False
        self.missing = False  # PolicyFeed's topic neither found nor created

    def not_ready(self) -> list[str]:
        if self.caught_up.is_set():
            return []
        if self.missing:
            return [f"{TOPIC}: the topic does not exist"]
        return [f"{TOPIC}: not read to its end yet"]

    async def start(self) -> None:
        return None

    async def run(self) -> None:
        end, position = len(self.topic), 0
        while True:
            if position == end:  # the end it saw at start: what a replay must reach first
                await self.gate.wait()
                self.caught_up.set()
            while position < len(self.topic):
                record = self.topic[position]
                self.store.apply(record.key(), record.value(), quiet=not self.caught_up.is_set())
                position += 1
                if position == end:
                    break
            if self.fail.is_set():
                raise ConnectionError("broker gone")
            await asyncio.sleep(0.001)

    async def stop(self) -> None:
        self.stopped = True


async def _until(predicate: Callable[[], bool]) -> None:
    for _ in range(2000):  # 2 s at most
        if predicate():
            return
        await asyncio.sleep(0.001)
    raise AssertionError("not within 2 s")


async def test_a_feed_rebuilt_after_a_failure_reads_again_without_going_back() -> None:
    four = ModelPolicy(model="m", aliases={"champion": "1"}, weights={"1": 75, "2": 25}, revision=4)
    five = four.changed(by="monitor", weights={"1": 100})
    six = five.changed(by="cli:op", aliases={"champion": "2"}, weights={"2": 100})
    topic = [four, five]
    gate = asyncio.Event()
    feeds: list[MemoryFeed] = []

    def new_feed(store: PolicyStore) -> MemoryFeed:
        feeds.append(MemoryFeed(store, topic, gate))
        return feeds[-1]

    follower = PolicyFollower(PolicyStore(), TOPIC, new_feed, retry_s=0.0)
    assert not follower.current
    assert follower.not_ready() == [
        f"{TOPIC}: not read to its end yet: no canary alert retired nor rollback decided meanwhile"
    ]
    task = asyncio.create_task(follower.run())
    try:
        await _until(lambda: follower.store.get("m") == five)
        assert not follower.current, "a partial read is not current"
        gate.set()
        await _until(lambda: follower.current)
        assert follower.not_ready() == []
        topic.append(six)  # the operator's promotion, followed live
        await _until(lambda: follower.store.get("m") == six)
        gate.clear()
        feeds[0].fail.set()
        await _until(lambda: len(feeds) == 2)
        assert feeds[0].stopped and not follower.current
        (why,) = follower.not_ready()
        assert why.startswith(f"{TOPIC}: following failed (broker gone)")
        await _until(lambda: follower.store.stale == 2)  # the new feed read it all again...
        assert follower.store.get("m") == six, "...and never went back to revision 4 or 5"
        assert follower.store.stale == 2 and not follower.current
        gate.set()
        await _until(lambda: follower.current)
        assert follower.store.get("m") == six
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def test_a_missing_topic_is_the_reason_given() -> None:
    """The feed's own reason reaches the monitor's readiness: a topic that does not exist is
    not "still reading"."""
    feeds: list[MemoryFeed] = []

    def new_feed(store: PolicyStore) -> MemoryFeed:
        feeds.append(MemoryFeed(store, [], asyncio.Event()))
        feeds[-1].missing = True
        return feeds[-1]

    follower = PolicyFollower(PolicyStore(), TOPIC, new_feed, retry_s=0.0)
    task = asyncio.create_task(follower.run())
    try:
        await _until(lambda: bool(feeds))
        assert follower.not_ready() == [
            f"{TOPIC}: the topic does not exist: no canary alert retired nor rollback decided "
            "meanwhile"
        ]
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
