"""Kafka I/O of the fault suite: the paced request load, topic tails and the stuck-partition check.

The load goes straight to ``genwire.requests`` (no gateway in the way), each request keyed by its
own unique id and retried by the producer until the broker acknowledges it (a broker outage
delays requests, it does not drop them). The tails are group-less consumers assigned every
partition of a topic from its current end, so they see only this run's records and commit
nothing. The stuck check compares each genwire consumer group's committed offsets with the end
offsets of the partitions it consumes.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError
from aiokafka.structs import ConsumerRecord

from genwire.events import GenerationResult
from genwire.request import GenerationRequest
from genwire.topics import Topic
from genwire_chaos.tracker import Outcome, ResultTracker

log = logging.getLogger(__name__)
T = TypeVar("T")

PROMPTS = (
    "Once upon a time",
    "The weather today",
    "In a small village",
    "The robot said",
    "A long time ago",
    "She opened the door and",
)
STAGE_GROUPS = ("genwire-preprocess", "genwire-inference", "genwire-postprocess")
"""Consumer groups of the request path (checked first)."""
KNOWN_TOPICS: dict[str, tuple[str, ...]] = {
    "genwire-preprocess": (Topic.REQUESTS,),
    "genwire-inference": (Topic.PREPARED,),
    "genwire-postprocess": (Topic.GENERATIONS,),
    "genwire-monitor": (Topic.SPANS,),
}
"""What each genwire group consumes, so a group that never committed is checked too; a
``<service>-retry`` group consumes ``genwire.retry``; others: the topics they committed on."""


def group_topics(group: str, committed: Iterable[TopicPartition]) -> set[str]:
    """The topics ``group`` consumes: known ones, plus every topic it has committed on."""
    known = set(KNOWN_TOPICS.get(group, ()))
    if group.endswith("-retry"):
        known.add(Topic.RETRY)
    return known | {tp.topic for tp in committed}


MAX_RECORD_BYTES = 32 * 1024 * 1024


def request_bytes(request_id: str, index: int, max_tokens: int) -> tuple[bytes, bytes]:
    """(key, value) of one load request: a short prompt, ``max_tokens``, the id as the key."""
    request = GenerationRequest(
        request_id=request_id, prompt=PROMPTS[index % len(PROMPTS)], max_tokens=max_tokens
    )
    return request.to_kafka()


def outcome_of(value: bytes | None) -> tuple[str | None, Outcome]:
    """The request id and outcome of one ``genwire.results`` value (unreadable: an error)."""
    try:
        result = GenerationResult.model_validate_json(value or b"")
    except ValueError as exc:
        return None, Outcome(error_code="chaos_unreadable_result", text=str(exc)[:200])
    code = result.error.code if result.error is not None else None
    return result.request_id, Outcome(
        text=result.text, finish_reason=result.finish_reason, error_code=code
    )


def new_producer(bootstrap_servers: str, client_id: str = "genwire-chaos") -> AIOKafkaProducer:
    """A producer for test traffic: acks=all, no idempotence (its fatal states would need a
    restart; a resent request is a duplicate the pipeline must absorb anyway)."""
    return AIOKafkaProducer(
        bootstrap_servers=bootstrap_servers,
        client_id=client_id,
        acks="all",
        enable_idempotence=False,
        linger_ms=5,
        request_timeout_ms=15000,
        retry_backoff_ms=500,
        max_request_size=MAX_RECORD_BYTES,
    )


@dataclass
class LoadStats:
    """What the load generator did."""

    scheduled: int = 0
    acked: int = 0
    gave_up: int = 0
    send_errors: int = 0
    started_at: float = 0.0
    finished_at: float = 0.0
    """When the last request was acknowledged (or given up)."""
    last_error: str = ""


class RequestLoad:
    """``count`` requests at ``rate``/s into ``genwire.requests``, each retried until acked."""

    def __init__(
        self,
        bootstrap_servers: str,
        tracker: ResultTracker,
        *,
        run_id: str,
        count: int,
        rate: float,
        max_tokens: int = 8,
        give_up_s: float = 600.0,
        retry_delay_s: float = 1.0,
    ) -> None:
        if rate <= 0 or count < 0:
            raise ValueError("rate must be > 0 and count ≥ 0")
        self._bootstrap = bootstrap_servers
        self._tracker = tracker
        self.run_id = run_id
        self.count = count
        self.rate = rate
        self.max_tokens = max_tokens
        self._give_up_s = give_up_s
        self._retry_delay_s = retry_delay_s
        self.stats = LoadStats()
        self._producer: AIOKafkaProducer | None = None

    @property
    def duration_s(self) -> float:
        """How long the schedule lasts (the last request is due then)."""
        return self.count / self.rate

    def request_id(self, index: int) -> str:
        """The id of request ``index`` of this run."""
        return f"{self.run_id}-{index:05d}"

    async def start(self) -> None:
        """Connect (the broker must be up now)."""
        self._producer = new_producer(self._bootstrap)
        await self._producer.start()

    async def stop(self) -> None:
        """Disconnect."""
        if self._producer is not None:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(30):
                    await self._producer.stop()
            self._producer = None

    async def run(self) -> LoadStats:
        """Send on schedule; returns once every request is acknowledged or given up."""
        t0 = time.monotonic()
        self.stats.started_at = t0
        tasks: list[asyncio.Task[None]] = []
        for i in range(self.count):
            delay = t0 + i / self.rate - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(self._send(i)))
            self.stats.scheduled += 1
        if tasks:
            await asyncio.gather(*tasks)
        self.stats.finished_at = time.monotonic()
        return self.stats

    async def _send(self, index: int) -> None:
        assert self._producer is not None, "start() first"
        rid = self.request_id(index)
        key, value = request_bytes(rid, index, self.max_tokens)
        self._tracker.expect(rid)
        give_up = time.monotonic() + self._give_up_s
        while True:
            try:
                future = await self._producer.send(Topic.REQUESTS, value, key=key)
                await future
            except (KafkaError, TimeoutError) as exc:
                self.stats.send_errors += 1
                self.stats.last_error = f"{type(exc).__name__}: {exc}"[:200]
                if time.monotonic() >= give_up:
                    self.stats.gave_up += 1
                    return
                await asyncio.sleep(self._retry_delay_s)
                continue
            self._tracker.acked(rid, time.monotonic())
            self.stats.acked += 1
            return


RecordSink = Callable[[ConsumerRecord[bytes, bytes], float], None]


class TopicTail:
    """Reads every partition of ``topics`` from their end at ``start``, without a group."""

    def __init__(
        self, bootstrap_servers: str, topics: Sequence[str], sink: RecordSink, *, name: str
    ) -> None:
        self._bootstrap = bootstrap_servers
        self._topics = list(topics)
        self._sink = sink
        self._name = name
        self._consumer: AIOKafkaConsumer | None = None
        self._task: asyncio.Task[None] | None = None
        self.records = 0

    async def start(self, timeout_s: float = 30.0) -> None:
        """Assign every partition and resolve its end offset before returning."""
        consumer = AIOKafkaConsumer(
            *self._topics,
            bootstrap_servers=self._bootstrap,
            group_id=None,
            enable_auto_commit=False,
            auto_offset_reset="latest",
            client_id=f"genwire-chaos-{self._name}",
            fetch_max_wait_ms=100,
            max_partition_fetch_bytes=MAX_RECORD_BYTES,
            fetch_max_bytes=MAX_RECORD_BYTES * 2,
        )
        await consumer.start()
        deadline = time.monotonic() + timeout_s
        while {tp.topic for tp in consumer.assignment()} != set(self._topics):
            if time.monotonic() > deadline:
                await consumer.stop()
                raise RuntimeError(f"topics {self._topics} not found: is the stack up?")
            await asyncio.sleep(0.05)
        for tp in consumer.assignment():
            await consumer.position(tp)
        self._consumer = consumer
        self._task = asyncio.create_task(self._read(), name=f"chaos-tail-{self._name}")

    async def stop(self) -> None:
        """Stop reading."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._consumer is not None:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(30):
                    await self._consumer.stop()
            self._consumer = None

    async def _read(self) -> None:
        assert self._consumer is not None
        while True:
            try:
                batches = await self._consumer.getmany(timeout_ms=500)
            except KafkaError as exc:  # the broker is away: the client reconnects by itself
                log.debug("tail %s: %s", self._name, exc)
                await asyncio.sleep(0.5)
                continue
            now = time.monotonic()
            for records in batches.values():
                for record in records:
                    self.records += 1
                    self._sink(record, now)


def results_sink(tracker: ResultTracker) -> RecordSink:
    """Feed ``genwire.results`` records to ``tracker`` (the key is the request id)."""

    def sink(record: ConsumerRecord[bytes, bytes], at: float) -> None:
        rid, outcome = outcome_of(record.value)
        key = (record.key or b"").decode("utf-8", "replace") or rid or ""
        tracker.record(key, outcome, at)

    return sink


@dataclass(frozen=True)
class StuckPartition:
    """A partition whose group's committed offset stayed below the end offset."""

    group: str
    topic: str
    partition: int
    committed: int
    end: int

    @property
    def lag(self) -> int:
        """Records not committed."""
        return self.end - max(self.committed, 0)

    def __str__(self) -> str:
        return f"{self.group} {self.topic}[{self.partition}] {self.committed}/{self.end}"


async def _relevant_groups(admin: AIOKafkaAdminClient) -> list[str]:
    """The consumer groups of genwire: the stages', then the others (retry consumers…).

    Old per-instance control groups (``genwire-inference-control-<id>``, left behind by earlier
    releases) are skipped: nobody consumes them. Group states are not asked for: aiokafka
    0.14 misreads the DescribeGroups v3 answer of Kafka 3.9 and drops the connection.
    """
    names = sorted(str(g[0]) for g in await admin.list_consumer_groups())
    ours = [n for n in names if n.startswith("genwire") and "-control-" not in n]
    return [n for n in STAGE_GROUPS if n in ours] + [n for n in ours if n not in STAGE_GROUPS]


async def _partitions(admin: AIOKafkaAdminClient, topics: Sequence[str]) -> list[TopicPartition]:
    """Every partition of ``topics`` (that exist)."""
    if not topics:
        return []
    described: list[Any] = await admin.describe_topics(list(topics))
    found: list[TopicPartition] = []
    for topic in described:
        if topic.get("error_code", 0) != 0:
            continue
        for partition in topic.get("partitions", ()):
            found.append(TopicPartition(str(topic["topic"]), int(partition["partition"])))
    return sorted(found)


async def _retrying(what: str, call: Callable[[], Awaitable[T]], deadline: float) -> T:
    """``call()``, retried on Kafka errors (a broker just back, a coordinator moving) until
    ``deadline``; then the last error is raised."""
    while True:
        try:
            return await call()
        except KafkaError as exc:
            if time.monotonic() >= deadline:
                raise KafkaError(f"{what}: {exc!r}") from exc
            log.debug("%s: %r; retrying", what, exc)
            await asyncio.sleep(1.0)


async def stuck_partitions(
    bootstrap_servers: str, *, wait_s: float = 60.0, poll_s: float = 2.0
) -> tuple[list[StuckPartition], float]:
    """Partitions still uncommitted after ``wait_s``, and how long they took to settle.

    The end offsets are taken once, at the start: a group is caught up when its committed
    offset reaches them (records written afterwards, e.g. spans, do not move the goal). Kafka
    errors (a broker just restarted) are retried within ``wait_s``, then raised.
    """
    began = time.monotonic()
    deadline = began + wait_s
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap_servers, request_timeout_ms=10000)
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap_servers, group_id=None, enable_auto_commit=False
    )
    try:
        await _retrying("admin client", admin.start, deadline)
        await _retrying("consumer", consumer.start, deadline)
        groups = await _retrying("list groups", lambda: _relevant_groups(admin), deadline)
        committed: dict[str, dict[TopicPartition, Any]] = {}
        for g in groups:
            committed[g] = await _retrying(
                f"offsets of {g}", functools.partial(admin.list_consumer_group_offsets, g), deadline
            )
        group_topic = {g: group_topics(g, offsets) for g, offsets in committed.items()}
        topics = sorted({t for ts in group_topic.values() for t in ts})
        partitions = await _retrying("partitions", lambda: _partitions(admin, topics), deadline)
        ends: dict[TopicPartition, int] = await _retrying(
            "end offsets", lambda: consumer.end_offsets(partitions), deadline
        )
        starts: dict[TopicPartition, int] = await _retrying(
            "beginning offsets", lambda: consumer.beginning_offsets(partitions), deadline
        )
        while True:
            pending: list[StuckPartition] = []
            for group in groups:
                for tp in partitions:
                    if tp.topic not in group_topic[group]:
                        continue
                    meta = committed[group].get(tp)
                    position = meta.offset if meta is not None else starts.get(tp, 0)
                    if position < ends[tp]:
                        pending.append(
                            StuckPartition(group, tp.topic, tp.partition, position, ends[tp])
                        )
            elapsed = time.monotonic() - began
            if not pending or elapsed >= wait_s:
                return pending, elapsed
            await asyncio.sleep(poll_s)
            for group in {p.group for p in pending}:
                with contextlib.suppress(KafkaError):  # try again at the next poll
                    committed[group] = await admin.list_consumer_group_offsets(group)
    finally:
        with contextlib.suppress(Exception):
            await consumer.stop()
        with contextlib.suppress(Exception):
            await admin.close()
