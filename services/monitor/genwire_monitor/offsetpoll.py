"""Reads the watched consumer groups' committed offsets and the log end offsets from the broker.

The services report their own stalls on ``/readyz`` and ``/metrics``; a service that is dead,
hung, or wrong about itself reports nothing useful, so the monitor asks the broker instead:
every ``interval_s`` it reads each watched group's committed offsets
(``AIOKafkaAdminClient.list_consumer_group_offsets``) and the partitions' log start and end
offsets (a group-less ``AIOKafkaConsumer``), feeds them to a ``StallTracker`` and hands the
verdicts to ``sink``. One admin client and one consumer live as long as the poller; every read
is bounded by a timeout; a failed reading is logged (one line per interval at most) and tried
again next interval, and clients that keep failing are recreated. Nothing here ever raises
out of ``run``: the monitor keeps its other duties whatever the broker does.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from genwire.kafka.security import client_options
from genwire_monitor.stalls import PartitionSample, PartitionStatus, StallTracker

log = logging.getLogger(__name__)

Sink = Callable[[list[PartitionStatus]], Awaitable[None]]

RECONNECT_AFTER = 3  # readings in a row that raised before the clients are recreated
CLOSE_TIMEOUT_S = 5.0


class OffsetPoller:
    """Polls broker offsets of ``watched`` groups (group -> topic) into a ``StallTracker``."""

    def __init__(
        self,
        *,
        bootstrap_servers: str,
        watched: Mapping[str, str],
        threshold_s: float,
        interval_s: float,
        sink: Sink | None = None,
        timeout_s: float | None = None,
        client_id: str = "genwire-monitor-offsets",
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.watched = dict(watched)
        self.interval_s = interval_s
        self.timeout_s = timeout_s if timeout_s is not None else min(10.0, max(2.0, interval_s))
        self.tracker = StallTracker(threshold_s)
        self._bootstrap = bootstrap_servers
        self._sink = sink
        self._client_id = client_id
        self._clock = clock
        self._admin: Any = None
        self._consumer: Any = None
        self.failures = 0  # readings in a row that missed something
        self._broken = 0  # readings in a row that raised (the clients may be broken)
        self.last_error: str | None = None
        self.last_ok: float | None = None  # clock time of the last complete reading

    # ---- clients ------------------------------------------------------------------------

    async def _connect(self) -> None:
        request_ms = max(1000, int(self.timeout_s * 1000))
        admin = AIOKafkaAdminClient(
            bootstrap_servers=self._bootstrap,
            **client_options(),
            client_id=f"{self._client_id}-admin",
            request_timeout_ms=request_ms,
        )
        consumer = AIOKafkaConsumer(
            bootstrap_servers=self._bootstrap,
            **client_options(),
            client_id=self._client_id,
            group_id=None,
            enable_auto_commit=False,
            request_timeout_ms=request_ms,
        )
        try:
            async with asyncio.timeout(self.timeout_s):
                await admin.start()
            async with asyncio.timeout(self.timeout_s):
                await consumer.start()
        except BaseException:
            await self._close(admin, consumer)
            raise
        self._admin, self._consumer = admin, consumer

    @staticmethod
    async def _close(admin: Any, consumer: Any) -> None:
        for client in (consumer, admin):
            if client is None:
                continue
            with contextlib.suppress(Exception):
                async with asyncio.timeout(CLOSE_TIMEOUT_S):
                    await (client.stop() if client is consumer else client.close())

    async def stop(self) -> None:
        """Close the clients (a later ``poll_once`` would open new ones); a stop cut short
        (cancelled) leaves them for the next one."""
        admin, consumer = self._admin, self._consumer
        await self._close(admin, consumer)
        if self._admin is admin and self._consumer is consumer:
            self._admin = self._consumer = None

    # ---- one reading --------------------------------------------------------------------

    async def _partitions(self) -> tuple[dict[str, list[TopicPartition]], list[str]]:
        """Partitions of every watched topic; topics the broker does not know, as errors."""
        topics = sorted(set(self.watched.values()))
        described = await self._admin.describe_topics(topics)
        out: dict[str, list[TopicPartition]] = {}
        errors: list[str] = []
        for t in described:
            if t["error_code"]:
                errors.append(f"topic {t['topic']}: error code {t['error_code']}")
                continue
            out[t["topic"]] = sorted(
                (TopicPartition(t["topic"], p["partition"]) for p in t["partitions"]),
                key=lambda tp: tp.partition,
            )
        return out, errors

    async def _group_offsets(self, group: str, tps: list[TopicPartition]) -> dict[int, int | None]:
        offsets = await self._admin.list_consumer_group_offsets(group, partitions=tps)
        out: dict[int, int | None] = {tp.partition: None for tp in tps}
        for tp, meta in offsets.items():
            if tp in tps and meta.offset >= 0:
                out[tp.partition] = meta.offset
        return out

    async def _read(self) -> list[str]:
        """Read every watched group into the tracker; returns what could not be read."""
        parts, errors = await self._partitions()
        every = [tp for tps in parts.values() for tp in tps]
        starts: dict[TopicPartition, int] = {}
        ends: dict[TopicPartition, int] = {}
        if every:
            starts = await self._consumer.beginning_offsets(every)
            ends = await self._consumer.end_offsets(every)
        for group, topic in self.watched.items():
            tps = parts.get(topic)
            if tps is None:
                continue  # the topic is unknown (reported above); keep the last verdicts
            try:
                committed = await self._group_offsets(group, tps)
            except Exception as exc:
                errors.append(f"group {group}: {exc!r}")
                continue
            now = self._clock()
            self.tracker.observe(
                group,
                [
                    PartitionSample(
                        group, topic, tp.partition, committed[tp.partition], starts[tp], ends[tp]
                    )
                    for tp in tps
                ],
                now,
            )
        return errors

    async def poll_once(self) -> list[PartitionStatus]:
        """One reading of every watched group; returns (and sinks) the verdicts of all.

        A group that could not be read keeps its previous verdicts; the failure is logged
        once for this reading. Never raises except on cancellation.
        """
        errors: list[str]
        try:
            if self._admin is None:
                await self._connect()
            async with asyncio.timeout(self.timeout_s):
                errors = await self._read()
            self._broken = 0
        except Exception as exc:  # broker down, timeout, protocol error: try next interval
            errors = [f"reading offsets: {exc!r}"]
            self._broken += 1
            if self._broken % RECONNECT_AFTER == 0:
                await self.stop()  # fresh clients next time
        if errors:  # one line per reading, whatever went wrong in it
            self.failures += 1
            self.last_error = "; ".join(errors)
            log.warning(
                "stall watch: could not read every watched group from %s (%d in a row): %s",
                self._bootstrap,
                self.failures,
                self.last_error,
            )
        else:
            self.failures, self.last_error, self.last_ok = 0, None, self._clock()
        snapshot = self.tracker.snapshot()
        if self._sink is not None:
            await self._sink(snapshot)
        return snapshot

    async def run(self) -> None:
        """Poll every ``interval_s`` until cancelled, then close the clients."""
        try:
            while True:
                started = time.monotonic()
                try:
                    await self.poll_once()
                except Exception:  # the sink failed: keep watching
                    log.exception("stall watch: handing the verdicts over failed")
                await asyncio.sleep(max(0.0, self.interval_s - (time.monotonic() - started)))
        finally:
            await self.stop()
