"""librdkafka (confluent-kafka) under ``EventConsumer`` and ``EventProducer``: ``kafka_client``.

With ``GENWIRE_<SERVICE>_KAFKA_CLIENT=librdkafka`` a grouped ``EventConsumer`` and every
``EventProducer`` get adapters instead of aiokafka's clients: ``RdProducer`` here and
``RdConsumer`` (genwire.kafka.rdkafka_consumer). They offer the part of aiokafka's API those two
classes use, so every rule of theirs (offsets committed after the outputs' acknowledgements,
drains on a rebalance, failure paths, spans) stays theirs, on both clients. Measured: 2.2–2.4
core-ms less per request in the three stages at c=8 on the spike, 0.8 and 2.6 in two short pairs
on these adapters (docs/benchmarks.md, *The pipeline on librdkafka*).

Here: what both share (settings after an outage, what librdkafka's errors mean to a publish),
and the producer, whose delivery reports a poller thread serves, settling futures on the loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import Callable, Sequence
from typing import Any

from aiokafka.errors import (
    IllegalStateError,
    KafkaConnectionError,
    KafkaError,
    KafkaTimeoutError,
    MessageSizeTooLargeError,
    ProducerClosed,
)
from confluent_kafka import KafkaError as RdError
from confluent_kafka import KafkaException, Message, Producer

from genwire.kafka_security import rdkafka_options

log = logging.getLogger(__name__)

RECONNECT = {
    "reconnect.backoff.ms": 50,
    "reconnect.backoff.max.ms": 1000,
    "metadata.recovery.strategy": "none",
}
"""After a broker outage. librdkafka's backoff between connection attempts grows to 10 s by
default (aiokafka's stays near 50 ms): capped at 1 s. Its default recovery strategy,
``rebootstrap``, cycles back to ``bootstrap.servers`` while no broker answers and, after the
return, asked for metadata a second late; ``none`` keeps the brokers it knows (genwire's are
fixed: the relay's first acknowledged record after an outage came 0.48 s after the return
instead of 1.16–1.72 s, with static membership; docs/benchmarks.md). The cost: a client whose
every known broker changed address never finds the new ones; restart it."""
QUEUE_FULL_WAIT_S = 5.0
"""How long a publish waits for room in librdkafka's local queue before it fails (retryable)."""


def _error(err: RdError) -> KafkaError:
    """librdkafka's error as the aiokafka error ``EventProducer`` acts on: fatal ones make it
    replace the client (``FATAL_PRODUCER_ERRORS``), a record too large is permanent."""
    if err.fatal() or err.code() == RdError._FATAL:
        return IllegalStateError(f"librdkafka fatal error: {err.str()}")
    if err.code() in (RdError.MSG_SIZE_TOO_LARGE, RdError.RECORD_LIST_TOO_LARGE):
        return MessageSizeTooLargeError(err.str())
    return KafkaError(f"librdkafka: {err.str()}")


DENIED = frozenset(
    {
        RdError.TOPIC_AUTHORIZATION_FAILED,
        RdError.GROUP_AUTHORIZATION_FAILED,
        RdError.CLUSTER_AUTHORIZATION_FAILED,
        RdError.SASL_AUTHENTICATION_FAILED,
        RdError._AUTHENTICATION,
    }
)
"""Errors a consumer never gets past by retrying: aiokafka raises them from ``getmany``."""


def _on_error(
    name: str, broken: list[RdError], also: frozenset[int] = frozenset()
) -> Callable[[RdError], None]:
    """librdkafka's error callback: a fatal error (or one of ``also``) is kept, the client is
    unusable from then on; the others are logged (a broker down, a connection refused:
    librdkafka retries them)."""

    def on_error(err: RdError) -> None:
        if err.fatal() or err.code() in also:
            broken.append(err)
            log.error("kafka client %s: librdkafka error it cannot recover from: %s", name, err)
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

    def __init__(self, owner: RdProducer) -> None:
        self._owner = owner
        self.cluster = _Cluster()

    async def force_metadata_update(self) -> None:
        """Raises ``KafkaConnectionError`` (aiokafka's) when no broker answers in 10 s, or the
        client is closed."""
        producer = self._owner._client()
        try:
            meta = await asyncio.to_thread(producer.list_topics, None, 10.0)
        except (KafkaException, RuntimeError) as exc:  # RuntimeError: closed by stop()
            raise KafkaConnectionError(f"librdkafka: no metadata: {exc}") from exc
        self.cluster.topics = {
            name: frozenset(t.partitions) for name, t in meta.topics.items() if t.error is None
        }


class RdProducer:
    """``AIOKafkaProducer``'s face on librdkafka: idempotent, ``acks=all``, the same linger,
    request size and timeout as ``EventProducer`` gives aiokafka's, murmur2 partitioning (a key
    lands on the same partition as with aiokafka or the Java client). Like aiokafka's, it opens
    no connection before ``start``."""

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
        self._name = client_id
        self._producer: Producer | None = None
        self.client = _Client(self)
        self._stopping = threading.Event()
        self._stopped = False
        self._thread = threading.Thread(target=self._poll, name=f"{client_id}-poll", daemon=True)
        self._loop: asyncio.AbstractEventLoop | None = None

    def _client(self) -> Producer:
        if self._producer is None:
            self._producer = Producer(self._config)
        return self._producer

    @property
    def dead(self) -> bool:
        """A fatal error was reported, or its poller died: it never publishes again."""
        return bool(self._fatal)

    async def start(self) -> None:
        """Connect: raises ``KafkaConnectionError`` (as aiokafka's start does) while no broker
        answers."""
        self._loop = asyncio.get_running_loop()
        await self.client.force_metadata_update()
        self._thread.start()

    def _poll(self) -> None:  # the poller's thread: delivery reports and error callbacks
        producer = self._client()
        while not self._stopping.is_set():
            try:
                producer.poll(0.1)
            except Exception as exc:  # a callback raised: no more reports, so replace it
                self._fatal.append(RdError(RdError._FATAL, f"delivery reports stopped: {exc}"))
                log.error("kafka producer %s: its poller failed: %s", self._name, exc)
                return

    async def stop(self) -> None:
        """Wait (up to 5 s) for what is queued, then stop; what is left fails its futures, as
        aiokafka's stop does. Bounded below ``EventProducer``'s 10 s for a retired client; a
        second call does nothing."""
        if self._stopped:
            return
        self._stopped = True
        producer = self._producer
        if producer is not None and self._thread.ident is not None:
            await _quietly(producer.flush, 5.0)
        self._stopping.set()
        if self._thread.ident is not None:
            await asyncio.to_thread(self._thread.join, 5.0)
        if producer is not None:
            # Records still queued or in flight fail now (their futures hear of it)...
            await _quietly(producer.purge)
            await _quietly(producer.poll, 0)
            # ...and the handle's threads and connections go with it, not at GC.
            await _quietly(producer.close)

    async def send(
        self,
        topic: str,
        value: bytes | None = None,
        key: bytes | None = None,
        partition: int | None = None,
        headers: Sequence[tuple[str, bytes]] | None = None,
    ) -> asyncio.Future[object]:
        """Queue one record; the returned future settles with its acknowledgement.

        Raises at once: ``ProducerClosed`` after ``stop``, ``IllegalStateError`` (fatal: replace
        the client) after a fatal error, ``KafkaTimeoutError`` (retryable) while librdkafka's
        local queue stays full for ``QUEUE_FULL_WAIT_S``, as aiokafka's send waits for room."""
        loop = self._loop
        if self._stopped:
            raise ProducerClosed()
        if loop is None or self._producer is None:
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
        deadline = loop.time() + QUEUE_FULL_WAIT_S
        while True:
            try:
                self._producer.produce(topic, value, **kwargs)
                return fut
            except BufferError as exc:  # the local queue is full: the poller drains it
                if loop.time() >= deadline:
                    raise KafkaTimeoutError(f"librdkafka's local queue is full: {exc}") from exc
                await asyncio.sleep(0.05)
                if self._stopped:  # retired meanwhile (replaced, or the service stops)
                    raise ProducerClosed() from exc
                if self._fatal:
                    raise _error(self._fatal[0]) from exc
            except KafkaException as exc:
                raise _error(exc.args[0]) from exc
            except RuntimeError as exc:  # "Producer has been closed": stopped under us
                raise ProducerClosed() from exc

    async def partitions_for(self, topic: str) -> frozenset[int]:
        await self.client.force_metadata_update()
        return self.client.cluster.topics.get(topic, frozenset())


async def _quietly(call: Callable[..., Any], *args: Any) -> None:
    """One step of a stop, in a thread; its failure (a closed handle, say) is logged and the
    next step still runs."""
    try:
        await asyncio.to_thread(call, *args)
    except Exception as exc:
        log.warning("kafka producer: %s failed at stop: %s", getattr(call, "__name__", call), exc)


def _settle(fut: asyncio.Future[object], err: RdError | None, msg: Message) -> None:
    if fut.done():
        return
    if err is not None:
        fut.set_exception(_error(err))
    else:
        fut.set_result(msg.offset())
