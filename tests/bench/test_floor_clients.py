"""``floor --client``: the floor on bare aiokafka, on librdkafka, or on both (floor_clients).

The pure parts (offset bookkeeping, the clients' settings, what is refused) run anywhere; the
relays run against the stack's broker."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from genwire_bench import floor, floor_clients
from genwire_bench.floor_chain import CLIENTS, SIDES
from genwire_bench.floor_clients import (
    OffsetTracker,
    RdProducer,
    consumer_config,
    producer_config,
)

from genwire import kafka_security
from genwire.kafka import ensure_topics, rdkafka, rdkafka_consumer
from genwire.kafka.admin import delete_groups, delete_topics
from genwire.settings import CommonSettings
from genwire.topics import TopicSpec

OTHER_CLIENTS = [c for c in CLIENTS if c != "aiokafka"]
"""Every ``--client`` but the default."""


def test_an_offset_is_stored_only_once_it_and_every_earlier_record_are_done() -> None:
    t = OffsetTracker()
    for offset in (10, 11, 12):
        t.started(0, offset)
    t.started(1, 5)
    assert t.finished(0, 12) is None  # 10 and 11 still in flight
    assert t.finished(0, 11) is None
    assert t.finished(1, 5) == 6  # partitions are independent
    assert t.finished(0, 10) == 13  # 10 done: 10, 11, 12 all are, store one past 12
    assert t.in_flight() == 0
    t.started(0, 13)
    t.started(0, 14)
    assert t.finished(0, 13) == 14
    assert t.in_flight() == 1


def test_the_clients_settings_are_the_services_in_librdkafkas_words() -> None:
    p = producer_config("b:1", "me")
    assert p["acks"] == "all" and p["enable.idempotence"] is True and p["linger.ms"] == 0
    assert p["partitioner"] == "murmur2_random"  # aiokafka's and Java's: same key, same partition
    assert p["socket.nagle.disable"] is True
    c = consumer_config("b:1", "g", fetch_max_wait_ms=123, commit_interval_ms=45)
    assert c["group.id"] == "g" and c["fetch.wait.max.ms"] == 123 and c["fetch.min.bytes"] == 1
    # offsets are stored by the relay after the acknowledgement, committed by librdkafka's timer
    assert c["enable.auto.offset.store"] is False and c["auto.commit.interval.ms"] == 45
    assert c["auto.offset.reset"] == "earliest"


class _Publisher:
    """A relay's producer whose publishes fail (``fail``), raise at once (``raise``) or succeed."""

    def __init__(self) -> None:
        self.outcomes: list[str] = []

    def produce(self, *_args: object, **_kwargs: object) -> asyncio.Future[object]:
        outcome = self.outcomes.pop(0)
        if outcome == "raise":
            raise BufferError("local queue full")
        fut: asyncio.Future[object] = asyncio.get_running_loop().create_future()
        if outcome == "fail":
            fut.set_exception(RuntimeError("not acknowledged"))
        else:
            fut.set_result(0)
        return fut


class _LeaderLater:
    """A librdkafka consumer's watermark call on a topic whose leader is not known yet."""

    def __init__(self, first: list[int]) -> None:
        self.errors = list(first)
        self.calls = 0

    def get_watermark_offsets(self, tp: object, timeout: float) -> tuple[int, int]:
        self.calls += 1
        if self.errors:
            raise floor_clients.KafkaException(floor_clients.KafkaError(self.errors.pop(0)))
        return 0, 42


def test_the_readers_start_waits_out_a_new_topics_leader_election() -> None:
    reader = floor_clients.RdReader("127.0.0.1:1", "t", 10, [0])
    err = floor_clients.KafkaError
    reader._consumer = _LeaderLater([err.NOT_LEADER_FOR_PARTITION, err.LEADER_NOT_AVAILABLE])  # type: ignore[assignment]
    assert reader._high(0) == 42  # asked again, not raised (the CI failure of 2026-12-01)
    assert reader._consumer.calls == 3
    reader._consumer = _LeaderLater([err.TOPIC_AUTHORIZATION_FAILED])  # type: ignore[assignment]
    with pytest.raises(floor_clients.KafkaException):  # not a wait-and-see error: raised at once
        reader._high(0)
    reader._consumer = _LeaderLater([err.NOT_LEADER_FOR_PARTITION] * 100)  # type: ignore[assignment]
    with pytest.raises(floor_clients.KafkaException):  # and not forever
        reader._high(0, timeout_s=0.3)


async def test_a_publish_that_fails_leaves_its_offset_and_every_later_one_unstored(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """At-least-once: a failed acknowledgement or a publish refused at once is not progress, so
    nothing from that offset on is stored (redelivered after a restart); a record that cannot be
    decoded is passed, as ``EventConsumer`` dead-letters it."""
    publisher = _Publisher()
    monkeypatch.setattr(floor_clients, "new_producer", lambda *_a: publisher)
    args = floor.parser().parse_args(
        ["--client", "librdkafka", "--no-tracing", "--relay", "in", "out", "--group", "g"]
    )
    relay = floor_clients.Relay(args)
    good = json.dumps({"request_id": "r", "body": "x"}).encode()
    publisher.outcomes = ["ok", "fail", "ok"]
    for offset in (10, 11, 12):
        relay._permits.acquire()  # as the consumer's thread does before handing one over
        relay.forward(0, offset, good)
    publisher.outcomes = ["ok", "raise", "ok"]
    for offset in (20, 21, 22):
        relay._permits.acquire()
        relay.forward(1, offset, good)
    relay._permits.acquire()
    relay.forward(2, 30, b"not json")  # undecodable: passed
    await relay._settled()
    assert sorted(relay._stored) == [(0, 11), (1, 21), (2, 31)]
    assert relay._permits._value == 64  # every record gave its room back  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("client", "producer", "reader"),
    [
        ("aiokafka", "EventProducer", "Reader"),
        ("plain-aiokafka", "PlainProducer", "Reader"),
        ("mixed", "RdProducer", "Reader"),
        ("mixed-consumer", "PlainProducer", "RdReader"),
        ("librdkafka", "RdProducer", "RdReader"),
        ("runtime-librdkafka", "RdProducer", "RdReader"),
        ("adapters-librdkafka", "RdProducer", "RdReader"),
    ],
)
def test_each_client_measures_on_its_libraries(
    client: str, producer: str, reader: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The measuring process's producer and reader are the ones ``--client`` names, and its
    relays are told the client (nothing connects: the classes are recorded, not built)."""
    built: list[str] = []

    def recorder(name: str) -> Callable[..., str]:
        def build(*_args: object, **_kwargs: object) -> str:
            built.append(name)
            return name

        return build

    for name in ("EventProducer", "Reader"):
        monkeypatch.setattr(floor, name, recorder(name))
    for name in ("PlainProducer", "RdProducer", "RdReader"):
        monkeypatch.setattr(floor_clients, name, recorder(name))
    args = floor.parser().parse_args(["--client", client, "--bootstrap-servers", "b:1"])
    assert floor.producer_for(args) == producer
    assert floor.reader_for(args, "t") == reader
    assert built == [producer, reader]
    launched: list[list[str]] = []

    def popen(cmd: list[str], **_: object) -> object:
        launched.append(cmd)
        return argparse.Namespace(pid=0)

    monkeypatch.setattr(floor.subprocess, "Popen", popen)
    monkeypatch.setattr(floor.psutil, "Process", lambda pid: pid)
    floor.Relay(args, "in", "out", "g")
    (cmd,) = launched
    assert cmd[cmd.index("--client") + 1] == client


@pytest.mark.parametrize("client", OTHER_CLIENTS)
def test_what_the_other_clients_refuse(client: str, capsys: pytest.CaptureFixture[str]) -> None:
    refused: list[tuple[list[str], str]] = [
        (["--no-tracing", "--modes", "chain", "--front", "grpc"], "no gRPC front")
    ]
    if client != "runtime-librdkafka":  # the runtime's relays export spans on either client
        refused.append(([], "add --no-tracing"))  # tracing is on by default
    for bad, why in refused:
        with pytest.raises(SystemExit) as exit_:
            floor.main(["--client", client, *bad, "--bootstrap-servers", "unused:1"])
        assert exit_.value.code == 2
        assert why in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_:
        floor.main(["--client", "kafka-python", "--no-tracing"])
    assert exit_.value.code == 2 and "invalid choice" in capsys.readouterr().err


def test_librdkafka_is_refused_on_a_secure_broker(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """It is not given the TLS/SASL settings, so it would fail or, worse, measure nothing;
    bare aiokafka is (``client_options``), so ``plain-aiokafka`` goes on to measure."""
    monkeypatch.setenv("GENWIRE_KAFKA_SECURITY_PROTOCOL", "SASL_PLAINTEXT")
    monkeypatch.setenv("GENWIRE_KAFKA_SASL_USERNAME", "u")
    monkeypatch.setenv("GENWIRE_KAFKA_SASL_PASSWORD", "p")
    for client in [c for c in CLIENTS if "librdkafka" in SIDES[c]]:
        with pytest.raises(SystemExit) as exit_:
            floor.main(["--client", client, "--no-tracing", "--bootstrap-servers", "unused:1"])
        assert exit_.value.code == 2 and "PLAINTEXT broker" in capsys.readouterr().err
    measured: list[str] = []

    def run(main: object, _loop: str) -> list[object]:
        measured.append("measured")
        main.close()  # type: ignore[attr-defined]  # the coroutine, never started
        return []

    monkeypatch.setattr(floor.event_loop, "run", run)
    floor.main(["--client", "plain-aiokafka", "--no-tracing", "--bootstrap-servers", "unused:1"])
    assert measured == ["measured"]


@pytest.mark.parametrize("client", OTHER_CLIENTS)
def test_the_floor_and_a_chain_on_each_client(
    client: str, infra: CommonSettings, tmp_path: Path
) -> None:
    out = tmp_path / "floor.json"
    code = floor.main(
        [
            "--bootstrap-servers",
            infra.kafka_bootstrap_servers,
            "--client",
            client,
            "--no-tracing",
            "--modes",
            "bare,hop,chain",
            "-n",
            "20",
            "--warmup",
            "3",
            "-c",
            "1,2",
            "--relay-concurrency",
            "2",
            "--chain-idle-s",
            "1",
            "--json",
            str(out),
        ]
    )
    assert code == 0
    phases = json.loads(out.read_text())["phases"]
    assert [(p["mode"], p["concurrency"], p["records"]) for p in phases] == [
        (mode, c, 20) for mode in ("bare", "hop", "chain") for c in (1, 2)
    ]
    for p in phases:
        assert 0 < p["p50_ms"] <= p["p99_ms"]
        assert p["extra"]["client"] == client
    # every relay process was found and measured (20 records can take less than psutil's tick)
    for p in phases[2:4]:
        assert p["relay_core_ms"] is not None and p["relay_core_ms"] >= 0
    for p in phases[4:]:
        assert len(p["extra"]["relays_core_ms"]) == 3
        assert all(r is not None and r >= 0 for r in p["extra"]["relays_core_ms"])


@pytest.mark.parametrize("client", ["plain-aiokafka", "mixed", "librdkafka", "adapters-librdkafka"])
def test_a_relay_commits_what_it_forwarded_when_it_stops(
    client: str, infra: CommonSettings
) -> None:
    """At-least-once as the services: every forwarded record's offset is committed by the time
    the relay has left its group, so a successor starts after them. The commit interval is an
    hour: only the stop can have committed them."""
    bootstrap = infra.kafka_bootstrap_servers
    run = uuid.uuid4().hex[:8]
    topic_in, topic_out, group = f"floor-{run}-in", f"floor-{run}-out", f"floor-{run}-relay"
    args = floor.parser().parse_args(
        [
            "--bootstrap-servers",
            bootstrap,
            "--client",
            client,
            "--no-tracing",
            "--commit-interval-ms",
            "3600000",
        ]
    )
    asyncio.run(_relay_round_trip(args, topic_in, topic_out, group, records=12))


async def _relay_round_trip(
    args: argparse.Namespace, topic_in: str, topic_out: str, group: str, records: int
) -> None:
    bootstrap = args.bootstrap_servers
    await ensure_topics(bootstrap, [TopicSpec(t, 3, 3_600_000) for t in (topic_in, topic_out)])
    # each cleanup step runs whatever the one before did: nothing is left on the broker
    async with contextlib.AsyncExitStack() as cleanup:
        cleanup.push_async_callback(delete_topics, bootstrap, [topic_in, topic_out])
        cleanup.push_async_callback(delete_groups, bootstrap, [group])
        relay = floor.Relay(args, topic_in, topic_out, group)
        cleanup.callback(relay.stop)
        out = AIOKafkaConsumer(topic_out, bootstrap_servers=bootstrap, auto_offset_reset="earliest")
        producer = RdProducer(bootstrap, "test-floor-clients")
        await relay.ready()
        await out.start()
        cleanup.push_async_callback(out.stop)
        await producer.start()
        cleanup.push_async_callback(producer.stop)
        acks = [
            producer.produce(
                topic_in,
                json.dumps({"request_id": f"r{i}", "body": "x"}).encode(),
                f"r{i}".encode(),
            )
            for i in range(records)
        ]
        await asyncio.gather(*acks)
        seen: set[bytes] = set()
        async with asyncio.timeout(30):
            while len(seen) < records:
                for batch in (await out.getmany(timeout_ms=500)).values():
                    seen |= {r.key or b"" for r in batch}
        assert seen == {f"r{i}".encode() for i in range(records)}
        relay.close()
        assert await asyncio.to_thread(relay.proc.wait, 30) == 0
        admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
        await admin.start()
        try:
            committed = await admin.list_consumer_group_offsets(group)
            ends = await out_ends(bootstrap, topic_in)
        finally:
            await admin.close()
        assert {tp.partition: meta.offset for tp, meta in committed.items()} == {
            p: end for p, end in ends.items() if end > 0
        }


async def out_ends(bootstrap: str, topic: str) -> dict[int, int]:
    """Each partition's end offset."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap)
    await consumer.start()
    try:
        parts = [TopicPartition(topic, p) for p in range(3)]
        return {tp.partition: end for tp, end in (await consumer.end_offsets(parts)).items()}
    finally:
        await consumer.stop()


@pytest.mark.parametrize(
    ("client", "exported", "kind"),
    [("aiokafka", "librdkafka", "aiokafka"), ("runtime-librdkafka", "aiokafka", "librdkafka")],
)
def test_the_runtime_floors_run_on_the_client_named_whatever_the_shell_exports(
    client: str, exported: str, kind: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`GENWIRE_KAFKA_CLIENT=librdkafka` exported for `make up` must not turn the default
    client's figures into librdkafka's, nor the other way round: the tool, and the relays it
    starts, are on the client ``--client`` names."""
    monkeypatch.setenv("GENWIRE_KAFKA_CLIENT", exported)
    seen: list[str] = []

    def run(main: object, _loop: str) -> list[object]:
        seen.append(kafka_security.client_kind())  # what EventProducer and the relays follow
        main.close()  # type: ignore[attr-defined]  # the coroutine, never started
        return []

    monkeypatch.setattr(floor.event_loop, "run", run)
    floor.main(["--client", client, "--no-tracing", "--bootstrap-servers", "unused:1"])
    assert os.environ["GENWIRE_KAFKA_CLIENT"] == kind  # what its relays inherit
    assert seen == [kind]


async def test_the_adapters_relay_reads_and_publishes_with_genwires_librdkafka_adapters() -> None:
    """``adapters-librdkafka``: the bare relay's logic on ``RdConsumer`` (read from the loop, as
    aiokafka's consumer) and ``RdProducer``, as ``EventConsumer`` and ``EventProducer`` make
    them; nothing connects before ``start``."""
    args = floor.parser().parse_args(
        ["--client", "adapters-librdkafka", "--no-tracing", "--relay", "in", "out", "--group", "g"]
    )
    relay = floor_clients.Relay(args)
    assert not relay._threaded
    producer = relay._producer
    assert isinstance(producer, floor_clients.PlainProducer)
    assert isinstance(producer._producer, rdkafka.RdProducer)
    consumer = relay._loop_consumer()
    assert isinstance(consumer, rdkafka_consumer.RdConsumer)
    assert consumer._config["group.id"] == "g"
    assert consumer._config["fetch.wait.max.ms"] == args.fetch_max_wait_ms
