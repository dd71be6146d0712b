"""Reading raw OTLP records from the spans topic as the monitor's own consumer group.

Why not the shared ``EventConsumer``: it decodes JSON into pydantic events, opens a process
span per record and dead-letters bad input. For spans that is wrong three times over: a span
per consumed span batch would feed the topic it reads (amplification), a malformed telemetry
record is counted and skipped rather than dead-lettered, and 20k spans/s needs whole batches
handed to one decoding thread, not a task per record. The hygiene stays: explicit group id,
manual commits of what was aggregated, commit on revoke and on stop, clean leave.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable

from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, ConsumerRecord, TopicPartition

from genwire.kafka.consumer import FETCH_MAX_WAIT_MS, IDLE_POLL_MS, fetch_wait_options
from genwire.kafka.security import client_options

log = logging.getLogger(__name__)

LEAVE_FLOOR_S = 1.0
"""The least a stop leaves for leaving the group, however long the steps before it took."""

Sink = Callable[[list[bytes]], Awaitable[None]]


class _Listener(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, owner: SpanSource) -> None:
        self._owner = owner

    async def on_partitions_revoked(self, revoked: list[TopicPartition]) -> None:
        try:
            await self._owner.commit(set(revoked))
        finally:  # committed or not, they are the next owner's now (it reads again what was not)
            self._owner.assigned -= set(revoked)
            for tp in revoked:
                self._owner._positions.pop(tp, None)

    async def on_partitions_assigned(self, assigned: list[TopicPartition]) -> None:
        self._owner.assigned |= set(assigned)


class SpanSource:
    """Fetch batches, hand their values to ``sink``, then mark them for commit."""

    def __init__(
        self,
        *,
        topic: str,
        group_id: str,
        bootstrap_servers: str,
        sink: Sink,
        max_records: int = 500,
        commit_interval_s: float = 1.0,
        auto_offset_reset: str = "latest",
        fetch_max_wait_ms: int = FETCH_MAX_WAIT_MS,
    ) -> None:
        self.topic = topic
        self.group_id = group_id
        self._sink = sink
        self._max_records = max_records
        self._commit_interval = commit_interval_s
        self._consumer = AIOKafkaConsumer(
            bootstrap_servers=bootstrap_servers,
            **client_options(),
            group_id=group_id,
            client_id=f"{group_id}-spans",
            enable_auto_commit=False,
            auto_offset_reset=auto_offset_reset,
            max_partition_fetch_bytes=16 * 1024 * 1024,
            # A waiting fetch returns at the first span; this only sets how often an idle
            # source asks (the spans' 500 ms: 2/s; 10/s at 100 ms cost the broker and this
            # process for nothing).
            **fetch_wait_options(fetch_max_wait_ms),
        )
        self._positions: dict[TopicPartition, int] = {}  # aggregated, not yet committed
        self.assigned: set[TopicPartition] = set()
        self.consumed = 0
        self._stopping = False
        self._running = False
        self._poll: asyncio.Task[dict[TopicPartition, list[ConsumerRecord[bytes, bytes]]]] | None
        self._poll = None
        self._done = asyncio.Event()

    @property
    def ready(self) -> bool:
        """True once the group has assigned partitions to this member."""
        return bool(self.assigned) and not self._stopping

    async def start(self) -> None:
        """Join the group (the assignment completes in the background)."""
        self._consumer.subscribe([self.topic], listener=_Listener(self))
        await self._consumer.start()

    async def run(self) -> None:
        """Consume until ``stop``; a batch is committed only after ``sink`` has taken it."""
        last_commit = time.monotonic()
        self._running = True
        try:
            while not self._stopping:
                self._poll = asyncio.create_task(
                    self._consumer.getmany(
                        timeout_ms=self._wait_ms(last_commit), max_records=self._max_records
                    )
                )
                try:
                    batches = await self._poll
                except asyncio.CancelledError:
                    task = asyncio.current_task()
                    if self._stopping and not (task is not None and task.cancelling()):
                        break  # ``stop`` ended the wait: nothing was taken from the fetcher
                    raise
                values = [r.value or b"" for records in batches.values() for r in records]
                if values:
                    await self._sink(values)
                    self.consumed += len(values)
                    for tp, records in batches.items():
                        if tp in self.assigned:  # else revoked while in the sink: not ours
                            self._positions[tp] = records[-1].offset + 1
                if time.monotonic() - last_commit >= self._commit_interval:
                    await self._safe_commit()
                    last_commit = time.monotonic()
        finally:
            self._done.set()

    def _wait_ms(self, last_commit: float) -> int:
        """How long one poll may wait: until the next commit is due while spans are handed over
        and not committed, else ``IDLE_POLL_MS`` (a span ends the wait at once, ``stop`` cancels
        it: only an idle source's empty wake-ups depend on it)."""
        if not self._positions:
            return IDLE_POLL_MS
        due = last_commit + self._commit_interval - time.monotonic()
        return max(0, min(IDLE_POLL_MS, round(due * 1000)))

    async def _safe_commit(self) -> None:
        try:
            await self.commit()
        except Exception as exc:  # a rebalance can race a commit: the records come again
            log.warning("committing span offsets failed (will be re-read): %s", exc)

    async def commit(self, only: set[TopicPartition] | None = None) -> None:
        """Commit what was aggregated (of ``only`` these partitions)."""
        offsets = {
            tp: pos
            for tp, pos in self._positions.items()
            if (only is None or tp in only) and tp in self.assigned
        }
        if offsets:
            await self._consumer.commit(offsets)
            for tp, pos in offsets.items():
                if self._positions.get(tp) == pos:  # unless a newer batch moved it meanwhile
                    del self._positions[tp]

    async def stop(self, timeout_s: float = 10.0) -> None:
        """Finish the batch in hand, commit it, leave the group: within ``timeout_s`` in all.

        aiokafka retries a commit for as long as the coordinator answers with a retryable
        error, and a monitor asked to stop must stop. A step cut short is logged: the spans
        since the last commit are read again by the next member, and a consumer whose stop
        was cut short may keep its partitions until its session times out. The leave gets
        ``LEAVE_FLOOR_S`` even when the steps before it used the budget.
        """
        self._stopping = True
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        if self._poll is not None:
            # A no-op once the poll has returned its batch. (A cancelled getmany leaves
            # aiokafka's poll-interval bookkeeping behind: only for a client about to stop.)
            self._poll.cancel()
        if self._running:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout_s):
                    await self._done.wait()
        for step, action, floor in (
            ("the last commit", self._safe_commit, 0.0),
            ("leaving the group", self._consumer.stop, LEAVE_FLOOR_S),
        ):
            budget = max(deadline - loop.time(), floor)
            try:
                async with asyncio.timeout(budget):
                    await action()
            except TimeoutError:
                log.warning(
                    "stopping the %s source: %s took over %.1fs, cut short",
                    self.topic,
                    step,
                    budget,
                )
