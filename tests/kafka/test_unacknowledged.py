"""A producer that accepts records and delivers none is seen: ``EventProducer.unacknowledged_s``
(the oldest record still waiting for the broker's answer), the runtime's readiness and its
gauge. Nothing fails in that state (an idempotent producer does not expire a record while it
knows the partition's leader), so before this a gateway whose client had lost its broker
answered ready while it published nothing (docs/reliability.md)."""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from genwire_stack import down, ensure_up
from genwire_stack.kafka_node import Kafka
from genwire_stack.observe import child_pid
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from genwire.kafka import EventProducer, ensure_topics
from genwire.service import ServiceRuntime
from genwire.settings import CommonSettings, ServiceSettings
from genwire.telemetry import semconv as sc
from genwire.topics import TopicSpec
from tests.common.support import eventually


class _Client:
    """Stands in for the Kafka client: each send returns a future the test settles."""

    def __init__(self) -> None:
        self.sent: list[asyncio.Future[object]] = []

    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        return None

    async def send(self, topic: str, value: bytes, **_: Any) -> asyncio.Future[object]:
        fut: asyncio.Future[object] = asyncio.get_running_loop().create_future()
        self.sent.append(fut)
        return fut


def _producer(
    monkeypatch: pytest.MonkeyPatch, clock: Callable[[], float]
) -> tuple[EventProducer, list[_Client]]:
    clients: list[_Client] = []

    def new_client(self: EventProducer) -> _Client:
        clients.append(_Client())
        return clients[-1]

    monkeypatch.setattr(EventProducer, "_new_client", new_client)
    producer = EventProducer("127.0.0.1:1", client_id="t")
    producer._now = clock
    return producer, clients


async def _settle() -> None:
    for _ in range(3):  # done callbacks run on the loop's next passes
        await asyncio.sleep(0)


class _Clock:
    """The producers' clock (``EventProducer._now``), moved by the test."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> _Clock:
    return _Clock()


async def test_the_oldest_waiting_record_is_measured_until_its_answer(
    monkeypatch: pytest.MonkeyPatch, clock: _Clock
) -> None:
    producer, clients = _producer(monkeypatch, clock)
    await producer.start()
    assert producer.unacknowledged_s() == 0.0
    first = await producer.send("t", b"a", traced=False)
    clock.now += 5.0
    await producer.send("t", b"b", traced=False)
    clock.now += 2.0
    assert producer.unacknowledged_s() == 7.0  # the first one's wait, not the second's
    sent = clients[0].sent
    sent[1].set_result(None)  # a later record answered: the first still waits
    await _settle()
    assert producer.unacknowledged_s() == 7.0
    third = await producer.send("t", b"c", traced=False)
    sent[0].set_exception(ConnectionError("no broker"))  # a failure is an answer too
    await _settle()
    clock.now += 1.0
    assert producer.unacknowledged_s() == 1.0  # now the third is the oldest
    sent[2].cancel()  # the client dropped it: settled too
    await _settle()
    assert producer.unacknowledged_s() == 0.0
    assert len(sent) == 3
    with pytest.raises(ConnectionError):
        first.result()  # the caller's future has the client's outcome
    assert third.cancelled()


async def test_a_caller_that_stops_waiting_leaves_the_record_counted(
    monkeypatch: pytest.MonkeyPatch, clock: _Clock
) -> None:
    """A cancelled call (a gRPC deadline, say) cancels its own wait, not the record: the client
    still holds it and may deliver it, so it still counts until the client answers."""
    producer, clients = _producer(monkeypatch, clock)
    await producer.start()
    mine = await producer.send("t", b"a", traced=False)
    waiting = asyncio.create_task(asyncio.wait_for(mine, 60.0))
    await _settle()
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    assert mine.cancelled() and not clients[0].sent[0].done()
    clock.now += 4.0
    assert producer.unacknowledged_s() == 4.0
    clients[0].sent[0].set_result(None)
    await _settle()
    assert producer.unacknowledged_s() == 0.0


async def test_a_replaced_clients_records_are_not_counted_as_waiting(
    monkeypatch: pytest.MonkeyPatch, clock: _Clock
) -> None:
    """A hung broker can leave the old client's records unsettled after its retirement gave
    up: they must not leave the producer looking stuck on the new one. The new client's
    records are counted from the start, and an old record that settles late changes nothing."""
    producer, clients = _producer(monkeypatch, clock)
    await producer.start()
    await producer.send("t", b"a", traced=False)
    clock.now += 1.0
    assert producer.unacknowledged_s() == 1.0
    await producer.reset(producer.resets, "test")
    assert len(clients) == 2 and producer.unacknowledged_s() == 0.0
    await producer.send("t", b"b", traced=False)
    clock.now += 3.0
    clients[0].sent[0].set_result(None)  # the old client's record, settled late
    await _settle()
    assert len(clients[1].sent) == 1 and producer.unacknowledged_s() == 3.0
    clients[1].sent[0].set_result(None)
    await _settle()
    assert producer.unacknowledged_s() == 0.0


async def test_a_record_sent_as_the_client_is_replaced_is_not_counted_on_the_new_one(
    monkeypatch: pytest.MonkeyPatch, clock: _Clock
) -> None:
    """A send still inside the old client's ``send`` when a replacement swaps it out hands back
    the old client's future: it is not counted against the new client."""
    producer, clients = _producer(monkeypatch, clock)
    await producer.start()
    entered, release = asyncio.Event(), asyncio.Event()
    plain_send = clients[0].send

    async def slow_send(topic: str, value: bytes, **kw: Any) -> asyncio.Future[object]:
        entered.set()
        await release.wait()
        return await plain_send(topic, value, **kw)

    monkeypatch.setattr(clients[0], "send", slow_send)
    sending = asyncio.create_task(producer.send("t", b"a", traced=False))
    await entered.wait()
    await producer.reset(producer.resets, "test")
    release.set()
    await sending  # the old client's future, never settled
    clock.now += 100.0
    assert producer.unacknowledged_s() == 0.0


async def _gauges(runtime: ServiceRuntime) -> tuple[float | None, float | None]:
    """The producer's two gauges after one pass of the runtime's watch: (wait, stuck)."""
    watch = asyncio.create_task(runtime._watch_progress(interval_s=60.0))
    await asyncio.sleep(0.01)
    watch.cancel()
    with pytest.raises(asyncio.CancelledError):
        await watch
    labels = {"stage": "test"}
    return (
        runtime.registry.get_sample_value(sc.METRIC_PRODUCER_UNACKED, labels),
        runtime.registry.get_sample_value(sc.METRIC_PRODUCER_STUCK, labels),
    )


async def test_readiness_names_a_record_waiting_the_stall_timeout(
    monkeypatch: pytest.MonkeyPatch, clock: _Clock
) -> None:
    producer, _ = _producer(monkeypatch, clock)
    settings = ServiceSettings(kafka_bootstrap_servers="127.0.0.1:1", stall_timeout_s=30.0)
    runtime = ServiceRuntime(
        settings, "test", span_exporter=InMemorySpanExporter(), set_global_tracer=False
    )
    try:
        runtime.producer = producer
        runtime.started = True  # as after ``start``: no other reason
        await producer.start()
        await producer.send("t", b"a", traced=False)
        clock.now += 29.0
        assert runtime.undelivered() == [] and runtime.reasons() == [] and runtime.ready
        assert await _gauges(runtime) == (29.0, 0.0)
        clock.now += 2.0
        reason = "a record has waited 31 s for Kafka's acknowledgement"
        assert runtime.undelivered() == [reason]
        assert runtime.reasons() == [reason] and not runtime.ready
        assert await _gauges(runtime) == (31.0, 1.0)  # the alert's input: this service's timeout
    finally:
        runtime.tracer_provider.shutdown()


def _thread_states(pid: int) -> dict[str, int]:
    """How many of ``pid``'s threads are in each scheduler state (``T``: stopped)."""
    states: dict[str, int] = {}
    for stat in Path(f"/proc/{pid}/task").glob("*/stat"):
        try:
            # The state follows the command name, which is in parentheses and may hold spaces.
            state = stat.read_text().rpartition(")")[2].split()[0]
        except (OSError, IndexError):
            continue  # a thread that ended meanwhile
        states[state] = states.get(state, 0) + 1
    return states


@pytest.mark.slow
async def test_a_hung_broker_makes_the_runtime_unready_and_its_answer_ready_again(
    infra: CommonSettings, kafka_client: str, tmp_path: Path
) -> None:
    """A real broker stopped with SIGSTOP (alive, answering nothing): the record waits, nothing
    fails, and the runtime's readiness says so; once the broker runs again the record is
    acknowledged and the reason clears. On both clients of the data path."""
    kafka = Kafka.beside(infra, CommonSettings(home=tmp_path))
    catalog = {"kafka": kafka}
    await asyncio.to_thread(ensure_up, ["kafka"], settings=kafka.settings, catalog=catalog)
    settings = ServiceSettings(kafka_bootstrap_servers=kafka.bootstrap, stall_timeout_s=2.0)
    runtime = ServiceRuntime(
        settings, "test", span_exporter=InMemorySpanExporter(), set_global_tracer=False
    )
    pid = None
    try:
        await ensure_topics(kafka.bootstrap, [TopicSpec("t", 1, 3_600_000)])
        await runtime.producer.start()
        await asyncio.wait_for(await runtime.producer.send("t", b"a", traced=False), 30.0)
        assert runtime.producer.unacknowledged_s() == 0.0 and runtime.undelivered() == []
        pid = child_pid("kafka", kafka.settings)
        assert pid is not None
        os.kill(pid, signal.SIGSTOP)
        # A group stop reaches each of the JVM's threads in turn: send once none can answer.
        assert _thread_states(pid), "the broker's threads cannot be read"
        await eventually(lambda: not set(_thread_states(pid)) - {"T", "t", "Z"}, 10.0)
        ack = await runtime.producer.send("t", b"b", traced=False)
        await asyncio.sleep(3.0)
        # Nothing failed: only the wait says it (else: how it ended, and the broker's threads).
        assert not ack.done(), (ack, _thread_states(pid))
        reasons = runtime.undelivered()
        assert len(reasons) == 1 and "for Kafka's acknowledgement" in reasons[0], reasons
        assert reasons[0] in runtime.reasons()
        os.kill(pid, signal.SIGCONT)
        pid = None
        await asyncio.wait_for(ack, 60.0)
        await asyncio.sleep(0)
        assert runtime.producer.unacknowledged_s() == 0.0 and runtime.undelivered() == []
    finally:
        try:
            if pid is not None:
                os.kill(pid, signal.SIGCONT)
            await runtime.producer.stop()
            runtime.tracer_provider.shutdown()
        finally:
            await asyncio.to_thread(down, ["kafka"], settings=kafka.settings, catalog=catalog)
