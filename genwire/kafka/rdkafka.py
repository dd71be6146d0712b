"""librdkafka (confluent-kafka) under ``EventConsumer`` and ``EventProducer``: ``kafka_client``.

With ``GENWIRE_<SERVICE>_KAFKA_CLIENT=librdkafka`` a grouped ``EventConsumer`` and every
``EventProducer`` get these adapters instead of aiokafka's clients. They offer the part of
aiokafka's API those two classes use, so every rule of theirs (offsets committed after the
outputs' acknowledgements, drains on a rebalance, failure paths, spans) stays theirs and is the
same on both clients. Measured: 2.2–2.4 core-ms less per request in the three stages at c=8
(docs/benchmarks.md, *The pipeline on librdkafka*).

Threads, because confluent-kafka's calls block: one per consumer makes every call on it
(confluent-kafka serialises a Consumer's calls behind a poll in progress, so a commit from the
loop would wait for the poll): it serves the event loop's commands between polls of
``POLL_S``, hands batches of records to the loop, and runs the rebalance listener on the loop
while serving that listener's commits. A producer's delivery reports are served by a poller
thread and settle futures on the loop.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import threading
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

from aiokafka import ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import (
    ConsumerStoppedError,
    IllegalStateError,
    KafkaConnectionError,
    KafkaError,
    MessageSizeTooLargeError,
)
from aiokafka.structs import ConsumerRecord
from confluent_kafka import Consumer, KafkaException, Message, Producer
from confluent_kafka import KafkaError as RdError
from confluent_kafka import TopicPartition as RdPartition

from genwire.kafka_security import rdkafka_options

log = logging.getLogger(__name__)

POLL_S = 0.05
"""How long a consumer's thread blocks in one poll with nothing fetched: the longest a command
from the loop (a commit, a pause) waits for it, and how soon a stop is seen."""
BATCH = 500
"""Records taken from librdkafka's queue at once after a poll returns one."""
RECONNECT = {
    "reconnect.backoff.ms": 50,
    "reconnect.backoff.max.ms": 1000,
    "metadata.recovery.strategy": "none",
}
"""After a broker outage. librdkafka's backoff between connection attempts grows to 10 s by
default (aiokafka's stays near 50 ms): capped at 1 s. Its default recovery strategy,
``rebootstrap``, cycles back to ``bootstrap.servers`` while no broker answers and, after the
return, asked for metadata a second late; ``none`` keeps the brokers it knows (genwire's are
fixed: the first record relayed after an outage came 0.5 s after the return instead of 1.2–1.7 s,
docs/benchmarks.md). The cost: a client whose every known broker changed address never finds the
new ones; restart it."""
COMMIT_TIMEOUT_S = 10.0
"""How long a commit waits for the coordinator's answer before it counts as failed (its offsets
are committed again later): during an outage there is none, and the commit loop must say so."""
STOP_TIMEOUT_S = 30.0
"""How long a stop waits for the consumer's thread to leave the group."""


def _error(err: RdError) -> KafkaError:
    """librdkafka's error as the aiokafka error ``EventProducer`` acts on: fatal ones make it
    replace the client (``FATAL_PRODUCER_ERRORS``), a record too large is permanent."""
    if err.fatal() or err.code() == RdError._FATAL:
        return IllegalStateError(f"librdkafka fatal error: {err.str()}")
    if err.code() in (RdError.MSG_SIZE_TOO_LARGE, RdError.RECORD_LIST_TOO_LARGE):
        return MessageSizeTooLargeError(err.str())
    return KafkaError(f"librdkafka: {err.str()}")


def _on_error(name: str, fatal: list[RdError]) -> Callable[[RdError], None]:
    """librdkafka's error callback: a fatal error is kept (the client is unusable from then on),
    the others are logged (a broker down, a connection refused: librdkafka retries them)."""

    def on_error(err: RdError) -> None:
        if err.fatal():
            fatal.append(err)
            log.error("kafka client %s: fatal librdkafka error: %s", name, err.str())
        else:
            log.info("kafka client %s: %s", name, err.str())

    return on_error


class _Cluster:
    def __init__(self) -> None:
        self.topics: dict[str, frozenset[int]] = {}

    def partitions_for_topic(self, topic: str) -> frozenset[int] | None:
        return self.topics.get(topic)


class _Client:
    """``AIOKafkaProducer.client``'s face: the metadata ``EventProducer.partitions`` reads."""

    def __init__(self, producer: Producer) -> None:
        self._producer = producer
        self.cluster = _Cluster()

    async def force_metadata_update(self) -> None:
        meta = await asyncio.to_thread(self._producer.list_topics, None, 10.0)
        self.cluster.topics = {
            name: frozenset(t.partitions) for name, t in meta.topics.items() if t.error is None
        }


class RdProducer:
    """``AIOKafkaProducer``'s face on librdkafka: idempotent, ``acks=all``, the same linger,
    request size and timeout as ``EventProducer`` gives aiokafka's, murmur2 partitioning (a key
    lands on the same partition as with aiokafka or the Java client)."""

    def __init__(
        self,
        *,
        bootstrap_servers: str,
        client_id: str,
        linger_ms: int,
        max_request_size: int,
        request_timeout_ms: int,
    ) -> None:
        self._fatal: list[RdError] = []
        self._config = {
            "bootstrap.servers": bootstrap_servers,
            **rdkafka_options(),
            "client.id": client_id,
            "acks": "all",
            "enable.idempotence": True,
            "linger.ms": linger_ms,
            "message.max.bytes": max_request_size,
            "request.timeout.ms": request_timeout_ms,
            "partitioner": "murmur2_random",
            "socket.nagle.disable": True,
            "error_cb": _on_error(client_id, self._fatal),
            "logger": log,
            **RECONNECT,
        }
        self._producer = Producer(self._config)
        self.client = _Client(self._producer)
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._poll, name=f"{client_id}-poll", daemon=True)
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def dead(self) -> bool:
        """A fatal error was reported: this client never publishes again (replace it)."""
        return bool(self._fatal)

    async def start(self) -> None:
        """Connect: raises (as aiokafka's start does) while no broker answers."""
        self._loop = asyncio.get_running_loop()
        try:
            await self.client.force_metadata_update()
        except KafkaException as exc:
            raise KafkaConnectionError(f"librdkafka: no broker answers: {exc}") from exc
        self._thread.start()

    def _poll(self) -> None:  # the poller's thread: delivery reports and error callbacks
        while not self._stopping.is_set():
            self._producer.poll(0.1)

    async def stop(self) -> None:
        """Wait (bounded) for what is queued, then stop serving delivery reports; what is left
        fails its futures, as aiokafka's stop does."""
        await asyncio.to_thread(self._producer.flush, 10.0)
        self._stopping.set()
        if self._thread.ident is not None:
            await asyncio.to_thread(self._thread.join)
        if self._loop is not None:  # reports still queued: the futures hear of it, not silence
            await asyncio.to_thread(self._producer.purge)
            await asyncio.to_thread(self._producer.poll, 0)

    async def send(
        self,
        topic: str,
        value: bytes | None = None,
        key: bytes | None = None,
        partition: int | None = None,
        headers: Sequence[tuple[str, bytes]] | None = None,
    ) -> asyncio.Future[object]:
        """Queue one record; the returned future settles with its acknowledgement."""
        loop = self._loop
        if loop is None:
            raise IllegalStateError("the producer is not started")
        if self._fatal:
            raise _error(self._fatal[0])
        fut: asyncio.Future[object] = loop.create_future()

        def delivered(err: RdError | None, msg: Message) -> None:  # the poller's thread
            with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits
                loop.call_soon_threadsafe(_settle, fut, err, msg)

        kwargs: dict[str, Any] = {"key": key, "on_delivery": delivered}
        if headers:
            kwargs["headers"] = list(headers)
        if partition is not None:
            kwargs["partition"] = partition
        try:
            try:
                self._producer.produce(topic, value, **kwargs)
            except BufferError:  # the local queue is full: let the poller drain it, once more
                await asyncio.sleep(0.1)
                self._producer.produce(topic, value, **kwargs)
        except KafkaException as exc:
            raise _error(exc.args[0]) from exc
        return fut

    async def partitions_for(self, topic: str) -> frozenset[int]:
        await self.client.force_metadata_update()
        return self.client.cluster.topics.get(topic, frozenset())


def _settle(fut: asyncio.Future[object], err: RdError | None, msg: Message) -> None:
    if fut.done():
        return
    if err is not None:
        fut.set_exception(_error(err))
    else:
        fut.set_result(msg.offset())


class RdConsumer:
    """``AIOKafkaConsumer``'s face on librdkafka, for a consumer group (``EventConsumer``)."""

    def __init__(
        self,
        *,
        bootstrap_servers: str,
        group_id: str,
        auto_offset_reset: str,
        max_partition_fetch_bytes: int,
        fetch_max_wait_ms: int,
        session_timeout_ms: int,
        heartbeat_interval_ms: int,
    ) -> None:
        self._fatal: list[RdError] = []
        self._config = {
            "bootstrap.servers": bootstrap_servers,
            **rdkafka_options(),
            "group.id": group_id,
            "client.id": group_id,
            "enable.auto.commit": False,  # EventConsumer commits, after the outputs' acks
            "auto.offset.reset": auto_offset_reset,
            "max.partition.fetch.bytes": max_partition_fetch_bytes,
            "fetch.wait.max.ms": fetch_max_wait_ms,
            "fetch.min.bytes": 1,
            "session.timeout.ms": session_timeout_ms,
            "heartbeat.interval.ms": heartbeat_interval_ms,
            "socket.nagle.disable": True,
            "error_cb": _on_error(group_id, self._fatal),
            "on_commit": self._on_commit,
            "logger": log,
            **RECONNECT,
        }
        self._commits: deque[tuple[_CommitKey, concurrent.futures.Future[None]]] = deque()
        self._rebalance: str | None = None  # in a rebalance callback: revoke, lost or assign
        self._topics: list[str] = []
        self._listener: ConsumerRebalanceListener | None = None
        self._commands: deque[tuple[Callable[[Consumer], Any], concurrent.futures.Future[Any]]]
        self._commands = deque()
        self._records: dict[TopicPartition, deque[ConsumerRecord[bytes, bytes]]] = {}
        self._arrived = asyncio.Event()
        self._assignment: frozenset[TopicPartition] = frozenset()
        self._paused: set[TopicPartition] = set()
        self._stopping = threading.Event()
        self._stopped = False
        self._failure: BaseException | None = None
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def subscribe(self, topics: list[str], listener: ConsumerRebalanceListener) -> None:
        self._topics, self._listener = list(topics), listener

    async def start(self) -> None:
        """Start the consumer's thread; the group is joined in the background, as aiokafka's."""
        self._loop = asyncio.get_running_loop()
        started: concurrent.futures.Future[None] = concurrent.futures.Future()
        self._thread = threading.Thread(
            target=self._run, args=(started,), name=f"{self._config['group.id']}-consumer"
        )
        self._thread.daemon = True
        self._thread.start()
        await asyncio.wrap_future(started)

    # --- on the consumer's thread ---

    def _run(self, started: concurrent.futures.Future[None]) -> None:
        try:
            consumer = Consumer(self._config)
            consumer.subscribe(
                self._topics,
                on_assign=self._on_assign,
                on_revoke=self._on_revoke,
                on_lost=self._on_lost,
            )
        except BaseException as exc:
            started.set_exception(exc)
            return
        started.set_result(None)
        try:
            while not self._stopping.is_set():
                self._serve(consumer)
                if self._fatal:
                    raise KafkaException(self._fatal[0])
                first = consumer.poll(POLL_S)
                if first is None:
                    continue
                records = []
                for msg in (first, *consumer.consume(BATCH, 0)):
                    err = msg.error()
                    if err is None:
                        records.append(_record(msg))
                    elif err.fatal():
                        raise KafkaException(err)
                    else:  # a partition's fetch failed: librdkafka retries it
                        log.info("kafka consumer %s: %s", self._config["group.id"], err.str())
                if records:
                    self._call_soon(self._add, records)
            self._serve(consumer)
        except BaseException as exc:  # fatal: the loop's next getmany raises it
            self._failure = exc  # before _stopped (below), so getmany reports the cause
            self._call_soon(self._arrived.set)
        finally:
            consumer.close()  # leaves the group (its revoke runs the listener: drained first)
            self._fail_commands()

    def _serve(self, consumer: Consumer) -> None:
        while self._commands:
            command, done = self._commands.popleft()
            try:
                done.set_result(command(consumer))
            except BaseException as exc:
                done.set_exception(exc)

    def _fail_commands(self) -> None:
        self._stopped = True  # from now on a command fails at once (see _command)
        while self._commands:
            _, done = self._commands.popleft()
            done.set_exception(ConsumerStoppedError())
        while self._commits:
            _, answer = self._commits.popleft()
            _answer(answer, ConsumerStoppedError())

    def _on_commit(self, err: RdError | None, parts: list[RdPartition]) -> None:
        """An asynchronous commit's answer (served by a poll): settles the commit it answers,
        found by its offsets (the same offsets twice: the older first, as they were sent)."""
        key = _commit_key(parts)
        entry = next((e for e in self._commits if e[0] == key), None)
        if entry is None:  # not one of ours: never guessed, a wrong match could lie
            log.debug("kafka consumer: an answer to no pending commit: %s", parts)
            return
        self._commits.remove(entry)
        failed = err or next((p.error for p in parts if p.error is not None), None)
        _answer(entry[1], None if failed is None else KafkaError(f"commit failed: {failed}"))

    def _call_soon(self, fn: Callable[..., Any], *args: Any) -> None:
        assert self._loop is not None
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody is left to tell
            self._loop.call_soon_threadsafe(fn, *args)

    def _on_assign(self, consumer: Consumer, parts: list[RdPartition]) -> None:
        tps = {TopicPartition(p.topic, p.partition) for p in parts}
        self._assignment = frozenset(tps)
        self._listen(consumer, "on_partitions_assigned", tps)

    def _on_revoke(self, consumer: Consumer, parts: list[RdPartition]) -> None:
        self._revoked(consumer, parts, "revoke")

    def _on_lost(self, consumer: Consumer, parts: list[RdPartition]) -> None:
        # The session expired (a broker outage, say): the partitions may be someone else's
        # already. Drained like a revoke, but nothing of theirs can be committed any more.
        self._revoked(consumer, parts, "lost")

    def _revoked(self, consumer: Consumer, parts: list[RdPartition], why: str) -> None:
        tps = {TopicPartition(p.topic, p.partition) for p in parts}
        self._listen(consumer, "on_partitions_revoked", tps, why)
        self._assignment = frozenset(self._assignment - tps)
        self._call_soon(self._drop, tps)

    def _listen(
        self, consumer: Consumer, what: str, tps: set[TopicPartition], why: str = "assign"
    ) -> None:
        """Run the listener on the loop, serving its commands (its drain's commit) meanwhile;
        librdkafka completes the rebalance only when this returns, as aiokafka does."""
        if self._listener is None or self._loop is None or self._loop.is_closed():
            return
        call = getattr(self._listener, what)(tps)
        done = asyncio.run_coroutine_threadsafe(call, self._loop)
        self._rebalance = why
        try:
            while True:
                try:
                    done.result(timeout=0.01)
                    return
                except concurrent.futures.TimeoutError:
                    self._serve(consumer)
                except Exception as exc:  # the listener's own failure: logged, the group goes on
                    log.warning("rebalance listener %s failed: %s", what, exc)
                    return
        finally:
            self._rebalance = None

    # --- on the loop ---

    def _add(self, records: list[ConsumerRecord[bytes, bytes]]) -> None:
        for record in records:
            tp = TopicPartition(record.topic, record.partition)
            if tp in self._assignment:
                self._records.setdefault(tp, deque()).append(record)
        self._arrived.set()

    def _drop(self, tps: set[TopicPartition]) -> None:
        for tp in tps:
            self._records.pop(tp, None)
            self._paused.discard(tp)

    def _command(self, command: Callable[[Consumer], Any]) -> asyncio.Future[Any]:
        done: concurrent.futures.Future[Any] = concurrent.futures.Future()
        if self._stopped:
            done.set_exception(ConsumerStoppedError())
        else:
            self._commands.append((command, done))
        return asyncio.wrap_future(done)

    async def getmany(
        self, *partitions: TopicPartition, timeout_ms: int = 0, max_records: int | None = None
    ) -> dict[TopicPartition, list[ConsumerRecord[bytes, bytes]]]:
        """Records fetched for unpaused partitions, waiting up to ``timeout_ms`` for some."""
        if not self._ready():
            self._arrived.clear()
            if timeout_ms > 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._arrived.wait(), timeout_ms / 1000.0)
        if self._failure is not None:
            raise KafkaError(f"librdkafka consumer: {self._failure}") from self._failure
        if self._stopped:
            raise ConsumerStoppedError()
        room = max_records if max_records is not None else 1 << 30
        out: dict[TopicPartition, list[ConsumerRecord[bytes, bytes]]] = {}
        for tp, queue in self._records.items():
            if tp in self._paused or not queue or room <= 0:
                continue
            take = [queue.popleft() for _ in range(min(room, len(queue)))]
            room -= len(take)
            out[tp] = take
        return out

    def _ready(self) -> bool:
        return (
            self._stopped
            or self._failure is not None
            or any(queue and tp not in self._paused for tp, queue in self._records.items())
        )

    def assignment(self) -> frozenset[TopicPartition]:
        return self._assignment

    def paused(self) -> set[TopicPartition]:
        return set(self._paused)

    def pause(self, *tps: TopicPartition) -> None:
        # Records already handed over stay queued here (getmany skips them until resumed)
        fresh = set(tps) - self._paused
        if fresh:
            self._paused |= fresh
            parts = [RdPartition(tp.topic, tp.partition) for tp in fresh]
            self._command(lambda c: c.pause(parts))

    def resume(self, *tps: TopicPartition) -> None:
        back = set(tps) & self._paused
        if back:
            self._paused -= back
            parts = [RdPartition(tp.topic, tp.partition) for tp in back]
            self._command(lambda c: c.resume(parts))
            self._arrived.set()

    async def commit(self, offsets: dict[TopicPartition, int]) -> None:
        """Commit ``offsets``; returns once the coordinator accepted them, raises otherwise.

        Sent by the consumer's thread at its next poll (≤ ``POLL_S``). Asynchronously, so the
        thread goes on polling while the answer is awaited: a synchronous commit held it for a
        whole broker outage. Inside a rebalance callback (a drain's commit) no poll can serve
        an answer, so it is synchronous there, as librdkafka's own examples commit on revoke;
        partitions lost with the session are not committed at all.
        """
        parts = [RdPartition(tp.topic, tp.partition, offset) for tp, offset in offsets.items()]
        answer: concurrent.futures.Future[None] = concurrent.futures.Future()

        def send(consumer: Consumer) -> None:
            if self._rebalance == "lost":
                raise KafkaError("the partitions were lost with the group session")
            if self._rebalance is not None:
                consumer.commit(offsets=parts, asynchronous=False)
                _answer(answer, None)
                return
            consumer.commit(offsets=parts, asynchronous=True)
            self._commits.append((_commit_key(parts), answer))

        try:
            await self._command(send)
            await asyncio.wait_for(asyncio.wrap_future(answer), COMMIT_TIMEOUT_S)
        except (ConsumerStoppedError, KafkaError):
            raise
        except TimeoutError as exc:
            raise KafkaError(f"commit: no answer within {COMMIT_TIMEOUT_S:.0f} s") from exc
        except Exception as exc:
            raise KafkaError(f"librdkafka commit: {exc}") from exc

    async def stop(self) -> None:
        """Leave the group (the revoke's listener runs first) and stop the thread; bounded,
        because leaving needs a coordinator (what is uncommitted is redelivered)."""
        self._stopping.set()
        if self._thread is not None:
            await asyncio.to_thread(self._thread.join, STOP_TIMEOUT_S)
            if self._thread.is_alive():
                log.warning(
                    "kafka consumer %s: not closed after %.0f s",
                    self._config["group.id"],
                    STOP_TIMEOUT_S,
                )
        self._stopped = True
        self._arrived.set()


_CommitKey = frozenset[tuple[str, int, int]]


def _commit_key(parts: Sequence[RdPartition]) -> _CommitKey:
    return frozenset((p.topic, p.partition, p.offset) for p in parts)


def _answer(answer: concurrent.futures.Future[None], exc: BaseException | None) -> None:
    """Settle a commit's answer from the consumer's thread, unless the loop gave up on it."""
    with contextlib.suppress(concurrent.futures.InvalidStateError):  # cancelled: timed out
        if exc is None:
            answer.set_result(None)
        else:
            answer.set_exception(exc)


def _record(m: Message) -> ConsumerRecord[bytes, bytes]:
    key, value = m.key(), m.value()
    _, ts = m.timestamp()
    raw_headers: list[Any] = list(m.headers() or [])  # (str, bytes | None) pairs
    return ConsumerRecord(
        topic=m.topic() or "",
        partition=m.partition() or 0,
        offset=m.offset() or 0,
        timestamp=ts,
        timestamp_type=0,
        key=key,
        value=value,
        checksum=None,
        serialized_key_size=len(key) if key is not None else -1,
        serialized_value_size=len(value) if value is not None else -1,
        headers=[(str(k), bytes(v or b"")) for k, v in raw_headers],
    )
