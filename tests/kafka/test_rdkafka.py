"""``kafka_client=librdkafka``: which client each consumer and producer gets, librdkafka's
settings (the services' durability, in its words), the security mapping, and what its errors
mean to ``EventProducer``. Clients are built, not started, except where a test takes ``infra``
(the real broker). The consumer's behaviour on the broker (commits, dead letters, redelivery,
rebalances, outages) runs on both clients in tests/common/test_consumer_kafka.py and
test_reliability_kafka.py."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import json
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.errors import (
    ConsumerStoppedError,
    IllegalStateError,
    KafkaConnectionError,
    KafkaError,
    KafkaTimeoutError,
    MessageSizeTooLargeError,
    ProducerClosed,
)
from aiokafka.structs import ConsumerRecord
from confluent_kafka import KafkaError as RdError
from confluent_kafka import KafkaException
from confluent_kafka import TopicPartition as RdPartition
from genwire_stack import down, ensure_up
from genwire_stack.health import free_port
from genwire_stack.kafka_node import Kafka
from opentelemetry import trace
from pydantic import BaseModel, SecretStr, ValidationError

from genwire import kafka_security
from genwire.errors import PermanentError, RetryableError
from genwire.kafka import EventConsumer, EventProducer, ensure_topics, rdkafka, rdkafka_consumer
from genwire.kafka import producer as producer_module
from genwire.kafka.admin import delete_topics, leave_group
from genwire.kafka.producer import FATAL_PRODUCER_ERRORS, MAX_REQUEST_SIZE, publish_error
from genwire.kafka.rdkafka import BROKERLESS_S, RdProducer, _error
from genwire.kafka.rdkafka_consumer import MAX_HANDED, RdConsumer, _commit_key, _record
from genwire.kafka_security import KafkaSecurityError, rdkafka_options
from genwire.service.runtime import ServiceRuntime
from genwire.settings import CommonSettings, ServiceSettings
from genwire.telemetry.propagation import extract
from genwire.topics import TopicSpec
from tests.common.support import fresh_topic


class Rec(BaseModel):
    request_id: str


async def _nothing(event: Rec) -> None:
    return None


def test_an_unknown_client_is_refused() -> None:
    with pytest.raises(ValidationError, match="kafka_client"):
        CommonSettings(kafka_client="kafka-python")  # type: ignore[arg-type]
    assert CommonSettings().kafka_client == "aiokafka"  # the default


async def test_each_consumer_and_producer_gets_the_chosen_client(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A service's own setting decides (its runner calls kafka_security.use), not the shell's
    GENWIRE_KAFKA_CLIENT; a group-less consumer stays on aiokafka."""
    monkeypatch.setenv("GENWIRE_KAFKA_CLIENT", "aiokafka")
    previous = kafka_security._process.get("settings")
    for name, consumer_type, producer_type in (
        ("librdkafka", RdConsumer, RdProducer),
        ("aiokafka", AIOKafkaConsumer, AIOKafkaProducer),
    ):
        settings = ServiceSettings(kafka_client=name, kafka_fetch_max_wait_ms=250)
        kafka_security.use(settings)
        runtime = ServiceRuntime(settings, "test", set_global_tracer=False)
        try:
            grouped = runtime.consumer("genwire.requests", Rec, _nothing)
            groupless = runtime.consumer("genwire.control", Rec, _nothing, group=False)
            assert isinstance(grouped._consumer, consumer_type)
            assert isinstance(groupless._consumer, AIOKafkaConsumer)
            assert isinstance(runtime.producer._producer, producer_type)
            if name == "librdkafka":
                assert grouped._consumer._config["fetch.wait.max.ms"] == 250  # type: ignore[attr-defined]
        finally:
            kafka_security.use(previous)
            runtime.tracer_provider.shutdown()


@pytest.mark.usefixtures("on_librdkafka")
def test_librdkafkas_settings_are_the_services() -> None:
    """The durability docs/stages.md states, in librdkafka's words."""
    producer = EventProducer("k:9092", client_id="me", request_timeout_ms=7000)
    config = producer._producer._config  # type: ignore[attr-defined]
    assert config["acks"] == "all" and config["enable.idempotence"] is True
    assert config["linger.ms"] == 0 and config["request.timeout.ms"] == 7000
    assert config["message.max.bytes"] == MAX_REQUEST_SIZE
    assert config["partitioner"] == "murmur2_random"  # a key's partition, as with aiokafka
    consumer = EventConsumer(
        topic="t",
        group_id="g",
        model=Rec,
        handler=_nothing,
        producer=producer,
        bootstrap_servers="k:9092",
        stage="test",
        fetch_max_wait_ms=123,
        session_timeout_ms=12_000,
    )
    c = consumer._consumer._config  # type: ignore[attr-defined]
    assert c["enable.auto.commit"] is False  # EventConsumer commits, after the outputs' acks
    assert c["group.id"] == "g" and c["auto.offset.reset"] == "earliest"
    assert c["fetch.wait.max.ms"] == 123 and c["fetch.min.bytes"] == 1
    assert c["session.timeout.ms"] == 12_000 and c["heartbeat.interval.ms"] == 3_000


def test_the_security_settings_in_librdkafkas_words(tmp_path: Path) -> None:
    assert rdkafka_options(CommonSettings()) == {}
    ca = tmp_path / "ca.pem"
    sasl = CommonSettings(
        kafka_security_protocol="SASL_SSL",
        kafka_sasl_username="preprocess",
        kafka_sasl_password=SecretStr("s3cret"),
        kafka_ssl_cafile=ca,
    )
    assert rdkafka_options(sasl) == {
        "security.protocol": "sasl_ssl",
        "sasl.mechanisms": "SCRAM-SHA-512",
        "sasl.username": "preprocess",
        "sasl.password": "s3cret",
        "ssl.endpoint.identification.algorithm": "https",  # the host name is checked
        "ssl.ca.location": str(ca),
    }
    mtls = CommonSettings(
        kafka_security_protocol="SSL",
        kafka_ssl_certfile=tmp_path / "c.pem",
        kafka_ssl_keyfile=tmp_path / "k.pem",
    )
    options = rdkafka_options(mtls)
    assert options["ssl.ca.location"] == "probe"  # no CA file: the system's trust store
    assert options["ssl.certificate.location"] == str(tmp_path / "c.pem")
    assert options["ssl.key.location"] == str(tmp_path / "k.pem")
    assert "sasl.username" not in options
    with pytest.raises(KafkaSecurityError, match="kafka_sasl_username"):
        rdkafka_options(CommonSettings(kafka_security_protocol="SASL_PLAINTEXT"))
    with pytest.raises(KafkaSecurityError, match="go together"):
        rdkafka_options(
            CommonSettings(kafka_security_protocol="SSL", kafka_ssl_certfile=tmp_path / "c.pem")
        )


def test_what_librdkafkas_errors_mean_to_a_publish() -> None:
    fatal = _error(RdError(RdError._FATAL, "idempotence: gap in sequence", fatal=True))
    assert isinstance(fatal, IllegalStateError) and isinstance(fatal, FATAL_PRODUCER_ERRORS)
    too_large = _error(RdError(RdError.MSG_SIZE_TOO_LARGE))
    assert isinstance(too_large, MessageSizeTooLargeError)
    assert isinstance(publish_error(too_large), PermanentError)  # never retried
    down = _error(RdError(RdError._ALL_BROKERS_DOWN))
    assert type(down) is KafkaError and not isinstance(down, FATAL_PRODUCER_ERRORS)
    assert isinstance(publish_error(down), RetryableError)  # waited out


@pytest.mark.usefixtures("on_librdkafka")
async def test_a_fatal_librdkafka_error_replaces_the_producer(infra: CommonSettings) -> None:
    """After librdkafka reports a fatal error (an idempotence gap, say) the client never
    publishes again: the next publish replaces it and goes out on the new one."""
    topic = fresh_topic("rdkafka")
    bootstrap = infra.kafka_bootstrap_servers
    await ensure_topics(bootstrap, [TopicSpec(topic, partitions=1, retention_ms=3_600_000)])
    producer = EventProducer(bootstrap, client_id="test-rdkafka")
    await producer.start()
    try:
        assert await asyncio.wait_for(await producer.send(topic, b"one"), 10) == 0
        old = producer._producer
        old._fatal.append(RdError(RdError._FATAL, "injected", fatal=True))  # type: ignore[attr-defined]
        with pytest.raises(IllegalStateError):  # the old client refuses at once...
            await old.send(topic, b"refused")
        assert await asyncio.wait_for(await producer.send(topic, b"two"), 10) == 1
        assert producer.resets == 1 and producer._producer is not old  # ...and is replaced
    finally:
        await producer.stop()
        await delete_topics(bootstrap, [topic])


def _consumer() -> RdConsumer:
    return RdConsumer(
        bootstrap_servers="k:9092",
        group_id="g",
        auto_offset_reset="earliest",
        max_partition_fetch_bytes=1 << 20,
        fetch_max_wait_ms=500,
        session_timeout_ms=10_000,
        heartbeat_interval_ms=3_000,
    )


def test_an_asynchronous_commits_answer_settles_that_commit_only() -> None:
    """Commits are sent asynchronously (the thread polls on through an outage) and each answer
    settles the commit with the same offsets, never another one."""
    consumer = _consumer()
    first, second = concurrent.futures.Future[None](), concurrent.futures.Future[None]()
    a = [RdPartition("t", 0, 10), RdPartition("t", 1, 4)]
    b = [RdPartition("t", 0, 12)]
    consumer._commits.extend([(_commit_key(a), first), (_commit_key(b), second)])
    consumer._on_commit(None, [RdPartition("t", 0, 12)])
    assert second.result(0) is None and not first.done()  # matched by offsets, not by order
    consumer._on_commit(None, [RdPartition("t", 9, 9)])  # no such commit: nothing settled
    assert not first.done()
    # one partition refused (librdkafka sets .error, read-only from Python: a stand-in)
    failed = SimpleNamespace(
        topic="t", partition=1, offset=4, error=RdError(RdError.ILLEGAL_GENERATION)
    )
    consumer._on_commit(None, [RdPartition("t", 0, 10), failed])  # type: ignore[list-item]
    with pytest.raises(KafkaError, match="commit failed"):
        first.result(0)
    assert not consumer._commits
    late = concurrent.futures.Future[None]()
    late.cancel()  # the loop gave up waiting (COMMIT_TIMEOUT_S): the answer is dropped quietly
    consumer._commits.append((_commit_key(b), late))
    consumer._on_commit(RdError(RdError._TRANSPORT), b)
    assert not consumer._commits


async def test_a_commit_in_a_lost_partitions_drain_fails_at_once() -> None:
    """Partitions lost with the session may be someone else's: their drain commits nothing
    (and waits for no coordinator), where a revoke's drain commits synchronously."""
    consumer = _consumer()
    consumer._loop = asyncio.get_running_loop()
    consumer._assignment = frozenset({TopicPartition("t", 0)})
    calls: list[bool] = []

    class Client:
        def commit(self, offsets: list[RdPartition], asynchronous: bool) -> None:
            calls.append(asynchronous)

    async def commit_while(state: str | None) -> None:
        consumer._rebalance = state
        pending = asyncio.ensure_future(consumer.commit({TopicPartition("t", 0): 5}))
        await asyncio.sleep(0.01)
        consumer._serve(Client())  # type: ignore[arg-type]  # the consumer's thread's turn
        if state is None:  # asynchronous: answered by the next poll's callback
            consumer._on_commit(None, [RdPartition("t", 0, 5)])
        await asyncio.wait_for(pending, 5)

    with pytest.raises(KafkaError, match="lost"):
        await commit_while("lost")
    await commit_while("revoke")
    await commit_while(None)
    assert calls == [False, True]  # synchronous in the revoke, asynchronous otherwise


async def test_a_commit_the_loop_gave_up_on_is_skipped_not_fatal() -> None:
    """A commit cancelled while queued (the committer cancelled at stop) is not sent, and the
    thread goes on serving (a settled future used to kill it); one for a partition no longer
    assigned is refused, not sent (another member's offset could move back)."""
    consumer = _consumer()
    consumer._loop = asyncio.get_running_loop()
    consumer._assignment = frozenset({TopicPartition("t", 0)})
    sent: list[list[RdPartition]] = []

    class Client:
        def commit(self, offsets: list[RdPartition], asynchronous: bool) -> None:
            sent.append(offsets)

    cancelled = asyncio.ensure_future(consumer.commit({TopicPartition("t", 0): 1}))
    await asyncio.sleep(0.01)
    cancelled.cancel()
    other = asyncio.ensure_future(consumer.commit({TopicPartition("t", 1): 7}))
    await asyncio.sleep(0.01)
    consumer._serve(Client())  # type: ignore[arg-type]  # must not raise
    with pytest.raises(KafkaError, match="not assigned"):
        await other
    assert sent == []


async def test_leaving_a_member_the_group_never_had_says_so(infra: CommonSettings) -> None:
    """The coordinator's UNKNOWN_MEMBER_ID is an answer, not an error to retry until the end."""
    said = await leave_group(infra.kafka_bootstrap_servers, f"g-{uuid.uuid4().hex[:8]}", "m-1", 20)
    assert said == "unknown member"


async def test_a_leave_with_no_broker_gives_up_in_its_time_and_says_why() -> None:
    said = await leave_group(f"127.0.0.1:{free_port()}", "g", "m-1", 0.5)
    assert said.startswith("gave up: no answer in 0.5 s") and "KafkaConnectionError" in said


class _Member:
    """librdkafka's member id, as the thread reads it after each poll."""

    def __init__(self) -> None:
        self.id = ""

    def memberid(self) -> str | None:
        return self.id or None

    def resume(self, parts: list[RdPartition]) -> None:
        pass


async def test_the_member_lost_with_the_session_is_asked_to_leave_once_a_new_one_is_joined(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """After an outage librdkafka joins again under a new member id, and a restarted coordinator
    holds that join for the old one for a whole session: the old id is asked to leave, once, as
    soon as the new one shows the coordinator answers; never while librdkafka still has it (a
    leave would evict this very member), nor after it was assigned again."""
    consumer = _consumer()
    consumer._loop = asyncio.get_running_loop()
    asked: list[tuple[str, str, float]] = []

    async def leave(bootstrap: str, group: str, member: str, timeout_s: float) -> str:
        asked.append((group, member, timeout_s))
        return "left"

    monkeypatch.setattr(rdkafka_consumer, "leave_group", leave)
    client = _Member()

    async def poll(member: str) -> None:  # the thread's turn after a poll, then the loop's
        client.id = member
        consumer._watch_member(client)  # type: ignore[arg-type]
        for _ in range(3):
            await asyncio.sleep(0)

    p0 = [RdPartition("t", 0)]
    await poll("m-1")
    consumer._on_assign(client, p0)  # type: ignore[arg-type]
    consumer._on_lost(client, p0)  # type: ignore[arg-type]  # the session expired
    await poll("")  # reset with it; the broker is still away
    assert asked == []
    await poll("m-2")  # the coordinator answered the new join
    await poll("m-2")
    assert asked == [("g", "m-1", 10.0)]
    assert [(m.member, m.answer) for m in consumer.left_members] == [("m-1", "left")]
    # lost again, but the id is kept (a rejoin under the same id): nothing to leave
    consumer._on_lost(client, p0)  # type: ignore[arg-type]
    await poll("m-2")
    consumer._on_assign(client, p0)  # type: ignore[arg-type]  # joined again under m-2
    await poll("m-3")  # a later new id is not taken for the sign of a lost session
    assert len(asked) == 1


async def test_a_leave_that_fails_is_told_and_the_consumer_goes_on(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A LeaveGroup that cannot be sent (a TLS failure, say) costs the wait it would have saved,
    nothing more: it is logged and recorded, never raised into the loop."""
    consumer = _consumer()
    consumer._loop = asyncio.get_running_loop()

    async def leave(bootstrap: str, group: str, member: str, timeout_s: float) -> str:
        raise OSError("certificate verify failed")

    monkeypatch.setattr(rdkafka_consumer, "leave_group", leave)
    consumer._leave("m-1")
    await asyncio.sleep(0.01)
    (left,) = consumer.left_members
    assert left.member == "m-1" and left.answer.startswith("gave up: OSError")
    assert "gave up" in caplog.text and not consumer._leaving


class _Pauses:
    def __init__(self) -> None:
        self.paused: set[tuple[str, int]] = set()

    def pause(self, parts: list[RdPartition]) -> None:
        self.paused |= {(p.topic, p.partition) for p in parts}

    def resume(self, parts: list[RdPartition]) -> None:
        self.paused -= {(p.topic, p.partition) for p in parts}


def test_a_pause_never_outlives_a_rebalance() -> None:
    """librdkafka keeps a pause across unassign and reassign: the thread's pause (the loop
    too far behind) is cleared with a revoke, so what comes back is fetched; the loop's own
    pauses (a full pool) stay in getmany and never reach librdkafka (a pause there discards
    its prefetch)."""
    consumer = _consumer()
    client = _Pauses()
    p0, p1 = TopicPartition("t", 0), TopicPartition("t", 1)
    consumer._assignment = frozenset({p0, p1})
    consumer.pause(p0, p1)  # the pool is full
    consumer._apply_pauses(client)  # type: ignore[arg-type]
    assert client.paused == set() and consumer.paused() == {p0, p1}
    consumer._handed = MAX_HANDED  # and the loop is behind
    consumer._apply_pauses(client)  # type: ignore[arg-type]
    assert client.paused == {("t", 0), ("t", 1)}
    consumer._revoked(client, [RdPartition("t", 0), RdPartition("t", 1)], "revoke")  # type: ignore[arg-type]
    assert client.paused == set()  # cleared with the revoke, in librdkafka too
    consumer._drop({p0, p1})  # the loop's turn: it forgets them and their records
    consumer._taken = MAX_HANDED
    consumer._on_assign(client, [RdPartition("t", 0)])  # type: ignore[arg-type]
    consumer._apply_pauses(client)  # type: ignore[arg-type]
    assert client.paused == set() and consumer.paused() == set()  # back, and fetched


def test_the_thread_pauses_everything_while_the_loop_is_behind_until_it_is_down_to_half() -> None:
    consumer = _consumer()
    client = _Pauses()
    consumer._assignment = frozenset({TopicPartition("t", 0), TopicPartition("t", 1)})
    consumer._handed = MAX_HANDED
    consumer._apply_pauses(client)  # type: ignore[arg-type]
    assert client.paused == {("t", 0), ("t", 1)}
    consumer._taken = 1  # below the mark, not yet down to half: no resume-pause churn
    consumer._apply_pauses(client)  # type: ignore[arg-type]
    assert client.paused == {("t", 0), ("t", 1)}
    consumer._taken = MAX_HANDED // 2
    consumer._apply_pauses(client)  # type: ignore[arg-type]
    assert client.paused == set()


def _records(partition: int, n: int) -> list[ConsumerRecord[bytes, bytes]]:
    return [ConsumerRecord("t", partition, i, 0, 0, None, b"v", None, -1, 1, []) for i in range(n)]


async def test_partitions_take_turns() -> None:
    """One partition's backlog does not starve the others when the pool takes one at a time."""
    consumer = _consumer()
    consumer._assignment = frozenset({TopicPartition("t", 0), TopicPartition("t", 1)})
    consumer._add(_records(0, 100) + _records(1, 3))
    seen = []
    for _ in range(4):
        batch = await consumer.getmany(max_records=1)
        seen += [tp.partition for tp in batch]
    assert seen == [0, 1, 0, 1]
    assert consumer._taken == 4


def test_a_refused_fetch_or_authentication_ends_the_consumer() -> None:
    """aiokafka raises these from getmany (the service exits, its supervisor restarts it):
    never a member that is ready with nothing it may read."""
    consumer = _consumer()
    on_error = consumer._config["error_cb"]
    on_error(RdError(RdError._TRANSPORT))  # a broker down: librdkafka retries it
    assert consumer._broken == []
    on_error(RdError(RdError.SASL_AUTHENTICATION_FAILED))
    on_error(RdError(RdError.TOPIC_AUTHORIZATION_FAILED))
    assert [e.code() for e in consumer._broken] == [
        RdError.SASL_AUTHENTICATION_FAILED,
        RdError.TOPIC_AUTHORIZATION_FAILED,
    ]


@pytest.mark.usefixtures("on_librdkafka")
async def test_a_full_local_queue_is_a_retryable_failure_and_a_stopped_producer_refuses() -> None:
    producer = RdProducer(
        bootstrap_servers="k:9092",
        client_id="t",
        linger_ms=0,
        max_request_size=1 << 20,
        request_timeout_ms=1000,
    )

    class Full:
        def produce(self, *args: object, **kwargs: object) -> None:
            raise BufferError("Local: Queue full")

    producer._loop = asyncio.get_running_loop()
    producer._producer = Full()  # type: ignore[assignment]
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr("genwire.kafka.rdkafka.QUEUE_FULL_WAIT_S", 0.2)
        with pytest.raises(KafkaTimeoutError):  # aiokafka's: a retry, not a dead letter
            await producer.send("t", b"v")
    assert isinstance(publish_error(KafkaTimeoutError()), RetryableError)
    producer._producer = None
    await producer.stop()
    with pytest.raises(ProducerClosed):
        await producer.send("t", b"v")


class _Message:
    def __init__(self, err: RdError | None = None, headers: list[Any] | None = None) -> None:
        self._err, self._headers = err, headers

    def error(self) -> RdError | None:
        return self._err

    def key(self) -> bytes:
        return b"k"

    def value(self) -> bytes:
        return b"v"

    def timestamp(self) -> tuple[int, int]:
        return 1, 1000

    def headers(self) -> list[Any] | None:
        return self._headers

    def topic(self) -> str:
        return "t"

    def partition(self) -> int:
        return 0

    def offset(self) -> int:
        return 7


class _FakeConsumer:
    """confluent_kafka.Consumer as RdConsumer's thread uses it, without a broker."""

    def __init__(self, messages: list[_Message], close_raises: bool) -> None:
        self.messages, self.close_raises = messages, close_raises

    def subscribe(self, topics: list[str], **callbacks: Any) -> None:
        pass

    def poll(self, timeout: float) -> _Message | None:
        time.sleep(0.005)
        return self.messages.pop(0) if self.messages else None

    def consume(self, n: int, timeout: float) -> list[_Message]:
        return []

    def memberid(self) -> str:
        return "m-1"

    def close(self) -> None:
        if self.close_raises:
            raise RuntimeError("close failed")


def _running_consumer(
    monkeypatch: pytest.MonkeyPatch, messages: tuple[_Message, ...] = (), close_raises: bool = False
) -> RdConsumer:
    fake = _FakeConsumer(list(messages), close_raises)
    monkeypatch.setattr("genwire.kafka.rdkafka_consumer.Consumer", lambda config: fake)
    consumer = _consumer()
    consumer.subscribe(["t"], listener=None)  # type: ignore[arg-type]
    return consumer


async def test_a_consumer_refused_by_the_broker_fails_its_next_fetch(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Refused authentication (an error event) or a topic it may not read (a fetch error) ends
    the consumer's run at once, as aiokafka's getmany raises them: never ready and idle."""
    for broken in ("event", "fetch"):
        denied = RdError(RdError.TOPIC_AUTHORIZATION_FAILED)
        consumer = _running_consumer(monkeypatch, (_Message(denied),) if broken == "fetch" else ())
        await consumer.start()
        if broken == "event":
            consumer._config["error_cb"](RdError(RdError.SASL_AUTHENTICATION_FAILED))
        with pytest.raises(KafkaError, match="librdkafka consumer"):
            await consumer.getmany(timeout_ms=5000)
        await consumer.stop()


async def test_a_close_that_fails_still_shuts_the_command_queue(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    consumer = _running_consumer(monkeypatch, close_raises=True)
    await consumer.start()
    await consumer.stop()
    assert isinstance(consumer._failure, RuntimeError)  # told, not swallowed
    with pytest.raises(ConsumerStoppedError):  # and nothing waits on a dead thread
        await consumer.commit({TopicPartition("t", 0): 1})


def test_a_header_without_a_value_is_kept_and_carries_no_trace() -> None:
    parent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    record = _record(_Message(headers=[("h", None), ("traceparent", parent.encode())]))  # type: ignore[arg-type]
    assert record.headers == [("h", None), ("traceparent", parent.encode())]  # as aiokafka's
    context = extract(record.headers)  # type: ignore[arg-type]
    assert format(trace.get_current_span(context).get_span_context().trace_id, "032x") == (
        "0af7651916cd43dd8448eb211c80319c"
    )


async def test_a_revokes_commit_reports_refused_partitions_and_a_stops_revoke_commits_none() -> (
    None
):
    consumer = _consumer()
    consumer._loop = asyncio.get_running_loop()
    consumer._assignment = frozenset({TopicPartition("t", 0)})

    class Client:
        def commit(self, offsets: list[RdPartition], asynchronous: bool) -> list[Any]:
            return [SimpleNamespace(topic="t", partition=0, offset=5, error=RdError(25))]

    async def commit_in_revoke() -> None:
        consumer._rebalance = "revoke"
        pending = asyncio.ensure_future(consumer.commit({TopicPartition("t", 0): 5}))
        await asyncio.sleep(0.01)
        consumer._serve(Client())  # type: ignore[arg-type]
        await asyncio.wait_for(pending, 5)

    with pytest.raises(KafkaError, match="commit failed"):  # not marked committed
        await commit_in_revoke()
    consumer._stopping.set()
    with pytest.raises(KafkaError, match="leaving"):  # no wait for a broker that is down
        await commit_in_revoke()


async def test_a_seek_in_the_assign_listener_starts_the_partition_there() -> None:
    """``EventConsumer`` resumes a partition given back after a failed commit from its assign
    listener: it reads the group's commit, commits its own position and seeks there. The thread
    serves those calls while the listener runs and then assigns the partitions itself, the
    sought one at its offset and the others at the group's commit (offset unset). A seek
    anywhere else is refused, not applied to records already fetched."""
    consumer = _consumer()
    consumer._loop = asyncio.get_running_loop()
    p0, p1 = TopicPartition("t", 0), TopicPartition("t", 1)
    seen: list[int | None] = []

    class Listener:
        async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
            seen.append(await consumer.committed(p0))
            await consumer.commit({p0: 7})
            consumer.seek(p0, 7)

    class Client:
        def __init__(self) -> None:
            self.assigned: list[tuple[int, int]] = []
            self.committed_: list[tuple[int, int]] = []

        def committed(self, parts: list[RdPartition], timeout: float) -> list[Any]:
            return [SimpleNamespace(offset=3, error=None)]

        def commit(self, offsets: list[RdPartition], asynchronous: bool) -> list[RdPartition]:
            assert not asynchronous  # inside a rebalance: no poll would serve an answer
            self.committed_ += [(p.partition, p.offset) for p in offsets]
            return offsets

        def assign(self, parts: list[RdPartition]) -> None:
            self.assigned = [(p.partition, p.offset) for p in parts]

    client = Client()
    consumer.subscribe(["t"], Listener())  # type: ignore[arg-type]
    parts = [RdPartition("t", 0), RdPartition("t", 1)]
    await asyncio.to_thread(consumer._on_assign, client, parts)  # type: ignore[arg-type]
    assert seen == [3] and client.committed_ == [(0, 7)]
    assert client.assigned == [(0, 7), (1, RdPartition("t", 1).offset)]
    with pytest.raises(IllegalStateError, match="only inside"):
        consumer.seek(p1, 2)  # no assignment in progress
    # librdkafka refuses the sought assignment: assigned at the group's commit instead
    refused = iter([True])

    def assign(parts: list[RdPartition]) -> None:
        if next(refused, False):
            raise KafkaException(RdError(RdError._STATE))
        client.assigned = [(p.partition, p.offset) for p in parts]

    client.assign = assign  # type: ignore[method-assign]
    await asyncio.to_thread(consumer._on_assign, client, parts)  # type: ignore[arg-type]
    assert client.assigned == [(0, RdPartition("t", 0).offset), (1, RdPartition("t", 1).offset)]
    client.assigned = []
    consumer.subscribe(["t"], SimpleNamespace(on_partitions_assigned=_assigned_quietly))  # type: ignore[arg-type]
    await asyncio.to_thread(consumer._on_assign, client, parts)  # type: ignore[arg-type]
    assert client.assigned == []  # no seek: librdkafka assigns them itself, at the commit


async def _assigned_quietly(assigned: set[TopicPartition]) -> None:
    return None


def _producer() -> RdProducer:
    return RdProducer(
        bootstrap_servers="k:9092",
        client_id="t",
        linger_ms=0,
        max_request_size=1 << 20,
        request_timeout_ms=1000,
    )


async def test_the_producer_opens_nothing_before_start_and_stops_once() -> None:
    producer = _producer()
    assert producer._producer is None  # as aiokafka's: no connection before start
    calls: list[str] = []

    class Handle:
        def __getattr__(self, name: str) -> Callable[..., None]:
            return lambda *args: calls.append(name)

    producer._producer = Handle()  # type: ignore[assignment]
    await producer.stop()
    await producer.stop()  # a second stop does nothing (the handle is closed)
    assert calls == ["purge", "poll", "close"]  # the poller never started: nothing to flush


async def test_no_metadata_and_a_dead_poller_are_told_as_aiokafkas() -> None:
    producer = _producer()

    class NoBroker:
        def list_topics(self, *args: object) -> None:
            raise KafkaException(RdError(RdError._TRANSPORT))

        def poll(self, timeout: float) -> None:
            raise ValueError("a callback failed")

    producer._producer = NoBroker()  # type: ignore[assignment]
    with pytest.raises(KafkaConnectionError):  # what EventProducer.refresh_partitions expects
        await producer.client.force_metadata_update()
    producer._poll()  # returns: no more delivery reports from this client...
    assert producer.dead  # ...so EventProducer replaces it


async def test_a_publish_waiting_for_room_hears_of_a_stop() -> None:
    producer = _producer()

    class Full:
        def produce(self, *args: object, **kwargs: object) -> None:
            raise BufferError("Local: Queue full")

    producer._loop = asyncio.get_running_loop()
    producer._producer = Full()  # type: ignore[assignment]
    waiting = asyncio.ensure_future(producer.send("t", b"v"))
    await asyncio.sleep(0.1)
    producer._stopped = True  # retired by EventProducer.reset meanwhile
    with pytest.raises(ProducerClosed):  # in FATAL_PRODUCER_ERRORS: published again, not lost
        await asyncio.wait_for(waiting, 2)
    assert isinstance(ProducerClosed(), FATAL_PRODUCER_ERRORS)


async def test_a_replacement_that_failed_is_not_tried_again_by_every_waiting_sender(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A producer found unusable while the broker is still down (one left without a broker,
    say): the senders queued behind a replacement that failed fail at once, rather than each
    waiting for a start of its own; after ``RESET_RETRY_S`` the next one tries again."""
    monkeypatch.setattr(producer_module, "RESET_RETRY_S", 0.2)
    starts: list[float] = []

    class Down:
        async def start(self) -> None:
            starts.append(time.monotonic())
            await asyncio.sleep(0.1)
            raise KafkaConnectionError("no broker")

        async def stop(self) -> None:
            pass

    producer = EventProducer("127.0.0.1:1")
    monkeypatch.setattr(producer, "_new_client", Down)
    got = await asyncio.gather(
        *(producer.reset(0, "test") for _ in range(5)), return_exceptions=True
    )
    assert len(starts) == 1 and all(isinstance(e, KafkaConnectionError) for e in got)
    assert "replacing the producer failed" in str(got[-1])
    await asyncio.sleep(0.25)
    with pytest.raises(KafkaConnectionError, match="no broker"):
        await producer.reset(0, "test")
    assert len(starts) == 2 and producer.resets == 0


def _stats(*brokers: tuple[str, str]) -> str:
    """librdkafka's statistics JSON, its brokers only: (source, state) each."""
    return json.dumps(
        {
            "brokers": {
                f"b{n}": {"source": source, "state": state, "nodeid": n}
                for n, (source, state) in enumerate(brokers)
            }
        },
        separators=(",", ":"),  # librdkafka's is compact
    )


def test_a_client_that_knows_no_broker_for_a_while_is_unusable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """librdkafka 2.16 can forget its only broker for good (one shutting down told it of none):
    after ``BROKERLESS_S`` with no broker listed, a producer is dead (``EventProducer`` replaces
    it) and a consumer broken (its next fetch raises). A broker listed but down (an outage)
    counts as known; a group coordinator alone (a logical broker) does not; a snapshot that is
    not JSON says nothing either way."""
    clock = [100.0]
    monkeypatch.setattr(rdkafka, "_now", lambda: clock[0])
    producer = _producer()
    on_stats = producer._config["stats_cb"]
    on_stats(_stats(("learned", "TRY_CONNECT")))  # an outage: the broker is still known
    clock[0] += 60
    on_stats(_stats(("learned", "TRY_CONNECT")))
    on_stats("{not json")
    assert not producer.dead
    spaced = ' {"brokers": {"b": {"source": "learned"}}}'  # not in the text search's spacing
    assert rdkafka._knows_a_broker(spaced)  # found by parsing
    assert not rdkafka._knows_a_broker(' {"brokers": {"b": {"source": "logical"}}}')
    on_stats(_stats(("logical", "INIT")))  # none it can connect to, from now on
    clock[0] += BROKERLESS_S - 1
    on_stats(_stats())
    assert not producer.dead
    on_stats(_stats(("configured", "CONNECT")))  # re-bootstrapped: the clock starts again
    on_stats(_stats())
    clock[0] += BROKERLESS_S
    assert not producer.dead
    on_stats(_stats())
    assert producer.dead and "knows no broker for 10 s" in (producer.failure or "")
    assert isinstance(_error(producer._fatal[0]), IllegalStateError)  # fatal: replaced
    on_stats(_stats())
    assert len(producer._fatal) == 1  # said once
    consumer = _consumer()
    on_stats = consumer._config["stats_cb"]
    on_stats(_stats(("logical", "UP")))
    clock[0] += BROKERLESS_S
    on_stats(_stats(("logical", "UP")))
    assert [e.code() for e in consumer._broken] == [RdError._FATAL]


@pytest.mark.slow
@pytest.mark.usefixtures("on_librdkafka")
async def test_producers_told_of_no_broker_as_it_shuts_down_are_replaced_and_publish(
    infra: CommonSettings,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A single broker shutting down can answer a metadata request with no broker at all, and a
    librdkafka 2.16 client told so never connects again: a gateway published nothing after the
    fault suite's kafka-down. ``EventProducer`` replaces such a client once it has known no
    broker for ``BROKERLESS_S`` (2 s here) and publishes on the new one. Twenty producers ask
    for metadata every 5 ms, on ``metadata.recovery.strategy=none`` (where a client told of no
    broker stays so every time), so that some are asked in the shutdown's window; the test
    fails if none was replaced (it would have proved nothing)."""
    monkeypatch.setattr(rdkafka, "BROKERLESS_S", 2.0)
    monkeypatch.setattr(rdkafka, "STATS_INTERVAL_MS", 500)
    monkeypatch.setitem(rdkafka.RECONNECT, "metadata.recovery.strategy", "none")
    monkeypatch.setitem(rdkafka.RECONNECT, "topic.metadata.refresh.interval.ms", 5)
    kafka = Kafka.beside(infra, CommonSettings(home=tmp_path))
    catalog = {"kafka": kafka}
    await asyncio.to_thread(ensure_up, ["kafka"], settings=kafka.settings, catalog=catalog)
    producers: list[EventProducer] = []
    try:
        await ensure_topics(kafka.bootstrap, [TopicSpec("t", 4, 3_600_000)])
        producers = [EventProducer(kafka.bootstrap, client_id=f"p{n}") for n in range(20)]
        for producer in producers:
            await producer.start()

        async def publish(producer: EventProducer) -> None:
            """As a stage publishes: a failed or unanswered record is sent again."""
            async with asyncio.timeout(60.0):
                while True:
                    with contextlib.suppress(KafkaError, TimeoutError):
                        ack = await producer.send("t", b"x", traced=False)
                        await asyncio.wait_for(ack, 3.0)
                        return
                    await asyncio.sleep(0.2)

        for _ in range(3):
            await asyncio.to_thread(down, ["kafka"], settings=kafka.settings, catalog=catalog)
            await asyncio.sleep(1.0)
            await asyncio.to_thread(ensure_up, ["kafka"], settings=kafka.settings, catalog=catalog)
            await asyncio.gather(*(publish(p) for p in producers))  # every one publishes again
        replaced = [r for r in caplog.records if "knows no broker" in r.getMessage()]
        assert replaced, "no producer was replaced for knowing no broker: it proved nothing"
    finally:
        for producer in producers:
            await producer.stop()
        await asyncio.to_thread(down, ["kafka"], settings=kafka.settings, catalog=catalog)
