"""The floor on other Kafka clients than the services' runtime: ``floor --client``.

Issue 18's untried lever, measured before anything is built on it: aiokafka's Python protocol
layer is 35–59 % of every service's profile (docs/benchmarks.md), and librdkafka (confluent-kafka)
does the same work in C threads outside the GIL. ``--client`` picks the measuring process's
clients and the ``hop``/``chain``/``idle`` relays:

- ``aiokafka`` (default): the services' own runtime (``ServiceRuntime``, ``EventConsumer``,
  ``EventProducer``); not this module.
- ``plain-aiokafka``: this module's relay on bare aiokafka clients: what genwire's wrappers add.
- ``mixed``: this module's relay with aiokafka's consumer and librdkafka's producer (the client
  likewise): what a producer-only swap would give.
- ``mixed-consumer``: the other way round, librdkafka's consumer and aiokafka's producer: what a
  consumer-only swap would give.
- ``librdkafka``: this module's relay and client on librdkafka alone.
- ``adapters-librdkafka``: this module's relay on genwire's librdkafka adapters (``RdConsumer``
  read from the loop as aiokafka's consumer is, ``RdProducer``), the client as ``librdkafka``'s:
  what the adapters add to bare librdkafka, and (against ``runtime-librdkafka``, the services'
  runtime on them: ``floor.relay_main``) what the runtime adds to the adapters.

Every variant keeps the services' settings and semantics:

- producer: idempotent, ``acks=all``, no linger, no Nagle (asyncio's sockets, aiokafka's, are
  TCP_NODELAY), Java's murmur2 partitioner (a key lands on the same partition on both); each
  record's acknowledgement settles an asyncio future (librdkafka: a poller thread serves the
  delivery reports).
- relay: each record is decoded with pydantic, published, and only once it is acknowledged is its
  offset stored, in order per partition (at-least-once, as ``EventConsumer``); stored offsets are
  committed every ``--commit-interval-ms``; at most ``--relay-concurrency`` records in flight.

Not here: tracing (span export is the runtime's: these variants need ``--no-tracing``) and the
gRPC front (``--front none`` only).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
import threading
import time
from collections import deque
from collections.abc import Sequence
from typing import Any

from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import KafkaError as AIOKafkaError
from confluent_kafka import Consumer, KafkaError, KafkaException, Message, Producer
from confluent_kafka import TopicPartition as RdPartition

from genwire.kafka import rdkafka_consumer
from genwire.kafka.consumer import consumer_options
from genwire.kafka.producer import new_client
from genwire.settings import KafkaClient, ServiceSettings
from genwire_bench.floor_chain import ADAPTERS, SIDES, FloorRecord

POLL_S = 0.1
"""How long a poller or consumer thread blocks in C before it looks at its stop flag."""
BATCH = 64
"""Records taken at once, after the first (``consume`` waits to fill its batch: not for that)."""


def take(consumer: Consumer) -> list[Message]:
    """The next records: waits up to ``POLL_S`` for one, then takes what else is already here.

    Error events are not records: a fatal one raises (the caller's thread reports it), the others
    (a partition's end, a broker down for a while) are librdkafka's to recover from."""
    first = consumer.poll(POLL_S)
    if first is None:
        return []
    records = []
    for m in [first, *consumer.consume(BATCH, 0)]:
        err = m.error()
        if err is None:
            records.append(m)
        elif err.fatal():
            raise KafkaException(err)
    return records


def producer_config(bootstrap_servers: str, client_id: str) -> dict[str, Any]:
    """``EventProducer``'s settings in librdkafka's words."""
    return {
        "bootstrap.servers": bootstrap_servers,
        "client.id": client_id,
        "acks": "all",
        "enable.idempotence": True,
        "linger.ms": 0,
        "partitioner": "murmur2_random",
        "socket.nagle.disable": True,  # asyncio's sockets (aiokafka's) are TCP_NODELAY too
    }


def consumer_config(
    bootstrap_servers: str, group: str, fetch_max_wait_ms: int, commit_interval_ms: int
) -> dict[str, Any]:
    """``consumer_options`` in librdkafka's words; offsets are stored by hand after the output is
    delivered and committed by librdkafka's timer (``enable.auto.offset.store`` off)."""
    return {
        "bootstrap.servers": bootstrap_servers,
        "group.id": group,
        "client.id": group,
        "enable.auto.commit": True,
        "auto.commit.interval.ms": commit_interval_ms,
        "enable.auto.offset.store": False,
        "auto.offset.reset": "earliest",  # as consumer_options with a group
        "fetch.wait.max.ms": fetch_max_wait_ms,
        "fetch.min.bytes": 1,
        "max.partition.fetch.bytes": 16 * 1024 * 1024,
        "session.timeout.ms": 10_000,
        "heartbeat.interval.ms": 3_000,
        "socket.nagle.disable": True,
    }


class _Untraced:
    """``EventProducer.send``'s shape over a ``produce`` that returns the acknowledgement's
    future; ``traced`` is refused (these clients make no spans)."""

    def produce(
        self,
        topic: str,
        value: bytes,
        key: bytes | None,
        headers: Sequence[tuple[str, bytes]] = (),
        partition: int | None = None,
    ) -> asyncio.Future[object]:
        raise NotImplementedError

    async def send(
        self,
        topic: str,
        value: bytes,
        *,
        key: bytes | None = None,
        headers: Sequence[tuple[str, bytes]] = (),
        traced: bool = True,
        partition: int | None = None,
    ) -> asyncio.Future[object]:
        if traced:
            raise ValueError(f"{type(self).__name__} publishes untraced records only")
        return self.produce(topic, value, key, headers, partition)


class RdProducer(_Untraced):
    """An asyncio face on one librdkafka producer: ``send`` returns a future the delivery report
    settles (what ``EventProducer.send`` returns), served by a poller thread."""

    def __init__(self, bootstrap_servers: str, client_id: str) -> None:
        self._producer = Producer(producer_config(bootstrap_servers, client_id))
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._poll, name=f"{client_id}-poll", daemon=True)
        self._loop: asyncio.AbstractEventLoop | None = None

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._thread.start()

    def _poll(self) -> None:
        while not self._stopping.is_set():
            self._producer.poll(POLL_S)  # runs the delivery callbacks, GIL released meanwhile

    def produce(
        self,
        topic: str,
        value: bytes,
        key: bytes | None,
        headers: Sequence[tuple[str, bytes]] = (),
        partition: int | None = None,
    ) -> asyncio.Future[object]:
        """Queue one record; the future is settled on the event loop by its delivery report."""
        loop = self._loop
        assert loop is not None, "start() first"
        fut: asyncio.Future[object] = loop.create_future()

        def delivered(err: KafkaError | None, msg: Message) -> None:  # the poller's thread
            loop.call_soon_threadsafe(_settle, fut, err, msg)

        kwargs: dict[str, Any] = {"key": key, "on_delivery": delivered}
        if headers:
            kwargs["headers"] = list(headers)
        if partition is not None:
            kwargs["partition"] = partition
        try:
            self._producer.produce(topic, value, **kwargs)
        except BufferError:  # the local queue is full: serve reports, then once more
            self._producer.poll(0)
            self._producer.produce(topic, value, **kwargs)
        return fut

    async def stop(self) -> None:
        await asyncio.to_thread(self._producer.flush, 10.0)
        self._stopping.set()
        if self._thread.ident is not None:  # started
            await asyncio.to_thread(self._thread.join)


def _settle(fut: asyncio.Future[object], err: KafkaError | None, msg: Message) -> None:
    if fut.done():
        return
    if err is not None:
        fut.set_exception(KafkaException(err))
    else:
        fut.set_result(msg.offset())


_NO_LEADER_YET = frozenset(
    {
        KafkaError.NOT_LEADER_FOR_PARTITION,
        KafkaError.LEADER_NOT_AVAILABLE,
        KafkaError.UNKNOWN_TOPIC_OR_PART,
        KafkaError._UNKNOWN_PARTITION,
    }
)


class RdReader:
    """``floor.Reader`` on librdkafka: assigned the topic's partitions at their ends, no group
    (nothing is committed), each record's key settles the future ``expect`` gave for it, timed
    on the event loop as aiokafka's reader is."""

    def __init__(
        self, bootstrap_servers: str, topic: str, fetch_max_wait_ms: int, partitions: Sequence[int]
    ) -> None:
        self.topic = topic
        self._partitions = tuple(partitions)
        # assign() only, nothing committed: the group id is never created on the broker
        config = consumer_config(bootstrap_servers, f"floor-reader-{id(self)}", 500, 5000)
        config |= {"enable.auto.commit": False, "fetch.wait.max.ms": fetch_max_wait_ms}
        self._consumer = Consumer(config)
        self._waiters: dict[bytes, asyncio.Future[float]] = {}
        self._failure: Exception | None = None
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        parts = [RdPartition(self.topic, p) for p in self._partitions]
        for tp in parts:  # from the ends now, before the first record is sent
            tp.offset = await asyncio.to_thread(self._high, tp.partition)
        self._consumer.assign(parts)
        self._thread = threading.Thread(target=self._read, args=(loop,), daemon=True)
        self._thread.start()

    def _high(self, partition: int, timeout_s: float = 30.0) -> int:
        # A topic created a moment ago may have no leader known to this broker yet
        # (NOT_LEADER_FOR_PARTITION and kin): asked again until the deadline, as aiokafka's
        # seek_to_end does; anything else is raised at once. The codes are listed because
        # confluent-kafka marks none of this call's errors retriable().
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                _, high = self._consumer.get_watermark_offsets(
                    RdPartition(self.topic, partition), timeout=10.0
                )
                return int(high)
            except KafkaException as exc:
                if exc.args[0].code() not in _NO_LEADER_YET or time.monotonic() >= deadline:
                    raise
            time.sleep(0.1)

    async def fetching(self, on: bool) -> None:
        """Only on: the records nobody waits for are dropped (no front reads for this client)."""
        if not on:
            raise ValueError("the librdkafka floor client has no gRPC front")

    def expect(self, key: bytes) -> asyncio.Future[float]:
        fut: asyncio.Future[float] = asyncio.get_running_loop().create_future()
        if self._failure is not None:
            fut.set_exception(self._failure)
        else:
            self._waiters[key] = fut
        return fut

    def _read(self, loop: asyncio.AbstractEventLoop) -> None:
        try:
            while not self._stopping.is_set():
                keys = [m.key() or b"" for m in take(self._consumer)]
                if keys:
                    loop.call_soon_threadsafe(self._seen, keys)
        except Exception as exc:  # a fatal consumer error: every waiter hears it, not a timeout
            loop.call_soon_threadsafe(self._failed, exc)

    def _failed(self, exc: Exception) -> None:
        self._failure = exc
        for fut in self._waiters.values():
            if not fut.done():
                fut.set_exception(exc)
        self._waiters.clear()

    def _seen(self, keys: list[bytes]) -> None:
        now = time.perf_counter()
        for key in keys:
            fut = self._waiters.pop(key, None)
            if fut is not None and not fut.done():
                fut.set_result(now)

    async def stop(self) -> None:
        self._stopping.set()
        if self._thread is not None:
            await asyncio.to_thread(self._thread.join)
        await asyncio.to_thread(self._consumer.close)


class OffsetTracker:
    """Per partition, the offset to store: one past the highest record whose output is delivered
    and whose every predecessor (of those handed out) is too. Pure; the relay's loop drives it.
    Not reset when a partition is revoked, as ``EventConsumer``'s is: the floor's groups have one
    member each."""

    def __init__(self) -> None:
        self._pending: dict[int, deque[int]] = {}
        self._done: dict[int, set[int]] = {}

    def started(self, partition: int, offset: int) -> None:
        self._pending.setdefault(partition, deque()).append(offset)

    def finished(self, partition: int, offset: int) -> int | None:
        """Record ``offset`` as done; returns the offset to store now, or None (no progress)."""
        pending = self._pending[partition]
        done = self._done.setdefault(partition, set())
        done.add(offset)
        advanced: int | None = None
        while pending and pending[0] in done:
            head = pending.popleft()
            done.discard(head)
            advanced = head + 1
        return advanced

    def in_flight(self) -> int:
        return sum(len(p) for p in self._pending.values())


class PlainProducer(_Untraced):
    """``RdProducer``'s face on the client an ``EventProducer`` publishes with
    (``genwire.kafka.producer.new_client``), bare: no span, no reset logic, no wrapper. On
    ``kind`` ``aiokafka`` (``plain-aiokafka``) or ``librdkafka`` (genwire's adapter:
    ``adapters-librdkafka``). Each publish runs in a task of its own, as a handler's does."""

    def __init__(
        self, bootstrap_servers: str, client_id: str, kind: KafkaClient = "aiokafka"
    ) -> None:
        self._producer = new_client(bootstrap_servers, client_id, kind=kind)

    async def start(self) -> None:
        await self._producer.start()

    def produce(
        self,
        topic: str,
        value: bytes,
        key: bytes | None,
        headers: Sequence[tuple[str, bytes]] = (),
        partition: int | None = None,
    ) -> asyncio.Future[object]:
        return asyncio.ensure_future(self._acked(topic, value, key, list(headers), partition))

    async def _acked(
        self,
        topic: str,
        value: bytes,
        key: bytes | None,
        headers: list[tuple[str, bytes]],
        partition: int | None,
    ) -> object:
        ack = await self._producer.send(
            topic, value, key=key, headers=headers or None, partition=partition
        )
        return await ack

    async def stop(self) -> None:
        await self._producer.stop()


def new_producer(
    library: str, bootstrap_servers: str, client_id: str
) -> RdProducer | PlainProducer:
    """The bare producer of ``library`` (``produce``, ``send``, ``start``, ``stop``)."""
    if library == "librdkafka":
        return RdProducer(bootstrap_servers, client_id)
    return PlainProducer(bootstrap_servers, client_id)


class _Joined(ConsumerRebalanceListener):  # type: ignore[misc]
    """Set once the group has given the aiokafka consumer a partition."""

    def __init__(self) -> None:
        self._event = asyncio.Event()

    async def wait(self) -> None:
        await self._event.wait()

    async def on_partitions_revoked(self, revoked: list[TopicPartition]) -> None:
        return None

    async def on_partitions_assigned(self, assigned: list[TopicPartition]) -> None:
        if assigned:
            self._event.set()


class Relay:
    """in → decode → out; a record's offset is stored once its output is acknowledged, and the
    stored offsets are committed every ``commit_interval_ms`` (librdkafka: by its own timer)."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.topic_in, self.topic_out = args.relay
        self._args = args
        consumer_lib, producer_lib = SIDES[args.client]
        self._adapters = args.client == ADAPTERS
        # librdkafka's consumer on a thread of this relay's; otherwise one read from the loop
        # (aiokafka's, or genwire's RdConsumer with its own thread behind it)
        self._threaded = consumer_lib == "librdkafka" and not self._adapters
        name = f"{args.group}-out"
        self._producer: RdProducer | PlainProducer = (
            PlainProducer(args.bootstrap_servers, name, kind="librdkafka")
            if self._adapters
            else new_producer(producer_lib, args.bootstrap_servers, name)
        )
        self._tracker = OffsetTracker()
        self._stored: deque[tuple[int, int]] = deque()  # (partition, offset) to store/commit
        self._pending: set[asyncio.Future[object]] = set()  # publishes not yet acknowledged
        limit = args.relay_concurrency or ServiceSettings().concurrency
        self._permits = threading.BoundedSemaphore(limit)  # librdkafka's thread waits
        self._free = asyncio.Semaphore(limit)  # aiokafka's reading task waits
        self._stopping = threading.Event()
        self._assigned = threading.Event()
        self._loop = asyncio.get_running_loop()
        self._crashed: asyncio.Future[None] = self._loop.create_future()  # a thread's failure

    def forward(self, partition: int, offset: int, value: bytes | None) -> None:  # on the loop
        self._tracker.started(partition, offset)
        try:
            record = FloorRecord.model_validate_json(value or b"")
        except ValueError as exc:  # a record no relay can forward: said, and passed
            print(f"relay: record {partition}/{offset} not forwarded: {exc!r}", file=sys.stderr)
            self._finished(partition, offset)
            return
        try:
            ack = self._producer.produce(
                self.topic_out,
                record.model_dump_json(exclude_none=True).encode(),
                record.request_id.encode(),
                partition=record.partition_on(self.topic_out),
            )
        except Exception as exc:  # not published: its offset stays pending, as a failed ack's
            ack = asyncio.get_running_loop().create_future()
            ack.set_exception(exc)
        self._pending.add(ack)
        ack.add_done_callback(self._pending.discard)
        ack.add_done_callback(lambda f: self._acked(partition, offset, f))

    async def _settled(self) -> None:
        """Every publish's outcome recorded (its offset queued to store, or left pending)."""
        if self._pending:
            await asyncio.wait(set(self._pending), timeout=10.0)
        await asyncio.sleep(0)  # the done callbacks queued by the last of them

    def _acked(self, partition: int, offset: int, ack: asyncio.Future[object]) -> None:
        """A publish that failed leaves its offset pending (the partition stops committing, as
        ``EventConsumer``'s would); its room is given back either way."""
        failure = None if ack.cancelled() else ack.exception()
        if ack.cancelled() or failure is not None:
            print(f"relay: record {partition}/{offset} not published: {failure!r}", file=sys.stderr)
            self._release()
            return
        self._finished(partition, offset)

    def _release(self) -> None:
        if self._threaded:
            self._permits.release()
        else:
            self._free.release()

    def _finished(self, partition: int, offset: int) -> None:  # on the loop
        self._release()
        store = self._tracker.finished(partition, offset)
        if store is not None:
            self._stored.append((partition, store))

    # --- librdkafka's consumer: while its thread runs, every call on it is made there ---

    def _rd_consume(self, consumer: Consumer) -> None:
        try:
            while not self._stopping.is_set():
                self._rd_store(consumer)
                for m in take(consumer):
                    partition, offset = m.partition(), m.offset()
                    if partition is None or offset is None:  # only error events lack them
                        continue
                    while not self._permits.acquire(timeout=POLL_S):
                        if self._stopping.is_set():
                            return  # not forwarded, not stored: redelivered
                    self._loop.call_soon_threadsafe(self.forward, partition, offset, m.value())
            self._rd_store(consumer)
        except Exception as exc:  # fatal: the relay stops and says why
            self._loop.call_soon_threadsafe(self._crash, exc)

    def _crash(self, exc: Exception) -> None:
        if not self._crashed.done():
            self._crashed.set_exception(exc)

    def _rd_store(self, consumer: Consumer) -> None:
        while self._stored:
            partition, offset = self._stored.popleft()
            with contextlib.suppress(KafkaException):  # revoked meanwhile: redelivered
                consumer.store_offsets(offsets=[RdPartition(self.topic_in, partition, offset)])

    def _on_assign(self, _consumer: Consumer, parts: list[RdPartition]) -> None:
        if parts:
            self._assigned.set()

    async def _run_librdkafka(self, serving: asyncio.Future[None]) -> None:
        args = self._args
        consumer = Consumer(
            consumer_config(
                args.bootstrap_servers, args.group, args.fetch_max_wait_ms, args.commit_interval_ms
            )
        )
        consumer.subscribe([self.topic_in], on_assign=self._on_assign)
        thread = threading.Thread(target=self._rd_consume, args=(consumer,), daemon=True)
        thread.start()
        try:
            if not await asyncio.to_thread(self._assigned.wait, 60.0):
                raise RuntimeError(f"no partition of {self.topic_in} was assigned")
            serving.set_result(None)
            await self._crashed  # until cancelled, or the consumer's thread failed
        finally:
            self._stopping.set()
            self._assigned.set()  # a wait for the assignment still running ends now
            await asyncio.to_thread(thread.join)
            await self._producer.stop()  # every acknowledgement in
            await self._settled()  # and its offset queued
            self._rd_store(consumer)
            await asyncio.to_thread(consumer.close)  # commits what is stored, leaves the group

    # --- a consumer read from the loop (aiokafka's, or genwire's RdConsumer): a reading task
    # and a committing task ---

    def _loop_consumer(self) -> AIOKafkaConsumer:
        args = self._args
        options = consumer_options(
            args.bootstrap_servers, group_id=args.group, fetch_max_wait_ms=args.fetch_max_wait_ms
        )
        if not self._adapters:
            return AIOKafkaConsumer(**options)
        return rdkafka_consumer.RdConsumer(  # type: ignore[return-value]  # the same face
            bootstrap_servers=args.bootstrap_servers,
            group_id=args.group,
            auto_offset_reset=options["auto_offset_reset"],
            max_partition_fetch_bytes=options["max_partition_fetch_bytes"],
            fetch_max_wait_ms=args.fetch_max_wait_ms,
            session_timeout_ms=options["session_timeout_ms"],
            heartbeat_interval_ms=options["heartbeat_interval_ms"],
        )

    async def _run_on_loop(self, serving: asyncio.Future[None]) -> None:
        joined = _Joined()
        consumer = self._loop_consumer()
        consumer.subscribe([self.topic_in], listener=joined)
        await consumer.start()
        committer = asyncio.create_task(self._commit_every(consumer))
        try:
            async with asyncio.timeout(60.0):
                await joined.wait()
            serving.set_result(None)
            while True:
                batches = await consumer.getmany(timeout_ms=200)  # EventConsumer's
                for records in batches.values():
                    for rec in records:
                        await self._free.acquire()
                        self.forward(rec.partition, rec.offset, rec.value)
        finally:
            await self._producer.stop()
            await self._settled()
            committer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await committer
            await self._commit(consumer)
            await consumer.stop()

    async def _commit_every(self, consumer: AIOKafkaConsumer) -> None:
        # Wakes every interval even with nothing stored (EventConsumer waits for a finished
        # record): a timer 20 times a second, in the idle figures only.
        while True:
            await asyncio.sleep(self._args.commit_interval_ms / 1000.0)
            await self._commit(consumer)

    async def _commit(self, consumer: AIOKafkaConsumer) -> None:
        offsets: dict[TopicPartition, int] = {}
        while self._stored:
            partition, offset = self._stored.popleft()
            offsets[TopicPartition(self.topic_in, partition)] = offset
        if offsets:
            with contextlib.suppress(AIOKafkaError):  # revoked meanwhile: redelivered
                await consumer.commit(offsets)

    async def run(self, serving: asyncio.Future[None]) -> None:
        await self._producer.start()
        if self._threaded:
            await self._run_librdkafka(serving)
        else:
            await self._run_on_loop(serving)


def _said(task: asyncio.Task[None]) -> None:
    """A relay that fails while serving says so at once (the measuring side sees timeouts)."""
    if not task.cancelled() and task.exception() is not None:
        print(f"relay: failed: {task.exception()!r}", file=sys.stderr, flush=True)


async def relay_main(args: argparse.Namespace, ready: str) -> None:
    """A relay of ``args.client``'s sides until stdin closes."""
    relay = Relay(args)
    serving: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    task = asyncio.create_task(relay.run(serving))
    task.add_done_callback(_said)
    await asyncio.wait([serving, task], return_when=asyncio.FIRST_COMPLETED)
    if task.done():
        task.result()  # it failed before serving: raise that
    print(ready, flush=True)
    try:
        await asyncio.to_thread(sys.stdin.read)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
