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
import json
import logging
import threading
import time
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
}
"""After a broker outage. librdkafka's backoff between connection attempts grows to 10 s by
default (aiokafka's stays near 50 ms): capped at 1 s. ``metadata.recovery.strategy`` keeps its
default, ``rebootstrap``. ``none`` (used from 2026-12-01 to 12-05, for a first record 0.5-1.2 s
sooner after an outage) left more clients without a broker for good (:data:`BROKERLESS_S`):
6 shutdowns in 8, against some of twenty producers in some shutdowns on the default
(docs/benchmarks.md, *The adapter leaves its lost member; a client told of no broker*)."""
STATS_INTERVAL_MS = 2_000
"""How often librdkafka reports its statistics (the brokers it knows: :func:`_on_stats`)."""
BROKERLESS_S = 10.0
"""How long a client may know no broker at all before it counts as unusable.

librdkafka 2.16 can forget every broker for good: a single broker that shuts down can answer a
metadata request with no broker in it, and the client drops the one it knew, has nothing left
to connect to and never asks again (on both recovery strategies; upstream issue 5301). A
gateway published nothing for the rest of a fault suite run after its kafka-down. In an outage
the broker stays known (``TRY_CONNECT``), so an empty list is this case only. A producer that
knows none is replaced (``EventProducer``, as after a fatal error); a consumer ends the
service's run, as a fatal error does (its supervisor restarts it)."""
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


def _on_stats(name: str, broken: list[RdError]) -> Callable[[str], None]:
    """librdkafka's statistics callback (served by the client's poll): once the client has known
    no broker at all for ``BROKERLESS_S``, an error is added to ``broken`` (its fatal errors)."""
    none_since: list[float] = []

    def on_stats(stats: str) -> None:
        if broken:  # unusable already: nothing more to learn
            return
        try:
            known = _knows_a_broker(stats)
        except ValueError:  # not JSON: no verdict either way (never raised into a poll)
            return
        if known:
            none_since.clear()
            return
        now = _now()
        if not none_since:
            none_since.append(now)
        elif now - none_since[0] >= BROKERLESS_S:
            why = f"knows no broker for {now - none_since[0]:.0f} s (librdkafka forgot them)"
            broken.append(RdError(RdError._FATAL, why))
            log.error("kafka client %s %s: unusable", name, why)

    return on_stats


_now = time.monotonic  # the watch's clock (a test moves it)


def _knows_a_broker(stats: str) -> bool:
    """Whether librdkafka's statistics list a broker it can connect to: one "learned" from
    metadata or "configured" (the bootstrap servers); not a logical one (a group coordinator's,
    which stands for a broker it must find first). The text is searched first: parsing every
    snapshot only to find a broker listed would cost more."""
    if '"source":"learned"' in stats or '"source":"configured"' in stats:
        return True
    brokers = json.loads(stats).get("brokers") or {}
    return any(b.get("source") in ("learned", "configured") for b in brokers.values())


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
            "statistics.interval.ms": STATS_INTERVAL_MS,
            "stats_cb": _on_stats(client_id, self._fatal),
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
    def failure(self) -> str | None:
        """Why it never publishes again (:attr:`dead`); None: it can."""
        return self._fatal[0].str() if self._fatal else None

    @property
    def dead(self) -> bool:
        """A fatal error was reported, its poller died, or it has known no broker for
        ``BROKERLESS_S``: it never publishes again (why: :attr:`failure`, what
        ``EventProducer`` reads)."""
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
