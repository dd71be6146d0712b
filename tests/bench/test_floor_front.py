"""``python -m genwire_bench.floor --modes chain --front none,grpc``: the chain behind a
do-nothing gRPC front. The option's checks, the record's reply partition, the report and the
front's gRPC plumbing (with a stand-in for Kafka) are unit tests; one test runs both phases on
the stack's broker."""

from __future__ import annotations

import argparse
import asyncio
import json
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import pytest
from genwire_bench import floor
from genwire_bench.floor_chain import ChainCost, ChainRow, FloorRecord, render_chain
from genwire_bench.floor_front import (
    Front,
    FrontClient,
    _server,
    front_difference,
    parse_fronts,
)
from opentelemetry.sdk.trace import TracerProvider

from genwire.service.runtime import ServiceRuntime
from genwire.settings import CommonSettings
from tests.bench.echo import EchoProducer, EchoReplies
from tests.bench.test_floor_chain import _on_broker


def test_the_front_is_refused_without_the_chain_and_when_unknown() -> None:
    for bad in (
        ["--front", "grpc"],  # the default modes: bare, hop
        ["--modes", "bare,hop", "--front", "none,grpc"],
        ["--modes", "chain", "--front", "http"],
        ["--modes", "chain", "--front", "grpc,grpc"],
        ["--modes", "chain", "--front", ""],
    ):
        with pytest.raises(SystemExit):
            floor.main([*bad, "--bootstrap-servers", "unused:1"])


def test_the_fronts_are_run_in_the_order_given() -> None:
    assert parse_fronts("none,grpc") == ["none", "grpc"]
    assert parse_fronts(" grpc ") == ["grpc"]
    args = floor.parser().parse_args(["--modes", "chain", "--front", "grpc,none"])
    assert args.front == ["grpc", "none"]
    assert floor.parser().parse_args(["--modes", "chain"]).front is None  # main: ["none"]
    with pytest.raises(argparse.ArgumentTypeError):
        parse_fronts("none,kafka")


def test_only_the_relay_publishing_on_the_reply_topic_names_the_replys_partition() -> None:
    record = FloorRecord(request_id="r1", body="x", reply_to="floor-ab-3:0")
    assert record.partition_on("floor-ab-3") == 0
    assert record.partition_on("floor-ab-1") is None  # an inner hop: the key's partition
    plain = FloorRecord(request_id="r1", body="x")
    assert plain.partition_on("floor-ab-3") is None
    # the plain chain's records are as before: no reply_to in their JSON
    assert plain.model_dump_json(exclude_none=True) == '{"request_id":"r1","body":"x"}'


def _row(c: int, total_parts: tuple[float, float], fronted: bool, p50: float) -> ChainRow:
    client, front = total_parts
    cost = ChainCost(
        client=client,
        relays=[1.0, 1.0, 1.0],
        broker=1.0,
        idle=0.5,
        front=front if fronted else None,
        fronted=fronted,
    )
    return ChainRow(3, c, 100, 0.5, p50, p50 * 2, p50 * 3, cost, True, 200)


def test_the_front_counts_in_the_total_and_gets_a_column_only_when_one_ran() -> None:
    plain, fronted = _row(8, (0.25, 0.0), False, 10.0), _row(8, (0.75, 2.5), True, 12.0)
    assert plain.cost.total == pytest.approx(4.25)
    assert fronted.cost.total == pytest.approx(7.25)  # 0.75 + 2.5 + 3 + 1
    assert fronted.cost.above_idle == pytest.approx(6.75)
    assert ChainCost(0.5, [1.0], 1.0, front=None, fronted=True).total is None  # not measured
    assert "front" not in render_chain([plain]).splitlines()[0]
    lines = render_chain([plain, fronted]).splitlines()
    assert "| client core-ms/rec | front | relays" in lines[0]
    assert lines[1].count("|") == lines[0].count("|")
    assert "| 0.25 | – | 1.00 / 1.00 / 1.00 |" in lines[2]
    assert lines[3].startswith("| 3 stages, 200 B, tracing on, gRPC front | 8 |")
    assert "| 0.75 | 2.50 | 1.00 / 1.00 / 1.00 | 3.00 | 1.00 | 7.25 | 6.75 |" in lines[3]


def test_what_the_front_adds_is_said_per_concurrency_with_a_plain_phase_beside_it() -> None:
    rows = [
        _row(1, (1.0, 0.0), False, 8.0),
        _row(1, (1.5, 3.0), True, 9.5),
        _row(8, (0.75, 2.0), True, 12.0),  # no plain phase at c=8: nothing to compare
    ]
    assert front_difference(rows) == [
        "c=1: front − kafka client: 3.50 core-ms per request (total 8.50 against 5.00; "
        "above idle 3.50; without the client 3.00), p50 +1.50 ms"
    ]
    assert front_difference(rows[:1]) == []


def test_a_report_with_both_ends_with_the_difference_and_not_beyond_the_floor() -> None:
    def phase(front: str, total: float) -> floor.Phase:
        extra = {
            "stages": 3,
            "relays_core_ms": [1.0, 1.0, 1.0],
            "tracing": False,
            "size": 200,
            "idle_core_ms_per_s": None,
            "front": front,
            "front_core_ms": 2.0 if front == "grpc" else None,
        }
        return floor.Phase("chain", 1, 100, 1.0, total, total, total, total, 0.5, 3.0, 1.0, extra)

    bare = floor.Phase("bare", 1, 100, 2.0, 1.0, 2.0, 3.0, 1.2, 0.8, None, 0.5)
    text = floor.render([bare, phase("none", 6.0), phase("grpc", 7.0)])
    assert text.count("beyond the one-hop floor") == 1  # the plain phase's only
    assert (
        "c=1: front − kafka client: 2.00 core-ms per request (total 6.50 against 4.50; "
        "without the client 2.00)" in text
    )


@dataclass
class _Runtime:
    producer: EchoProducer
    tracer = TracerProvider().get_tracer("test")


async def test_a_call_to_the_front_publishes_the_record_naming_the_reply_and_is_answered() -> None:
    """Over a real gRPC channel: the front names its reply partition in the record it
    publishes, keyed by the request id, and answers once the reply is seen."""
    replies = EchoReplies()
    producer = EchoProducer(replies)
    runtime = cast(ServiceRuntime, _Runtime(producer))
    server, port = _server(Front(runtime, replies, "floor-ab-0", "floor-ab-3:0"))
    await server.start()
    client = FrontClient(port)
    try:
        await client.ready()
        values = [FloorRecord(request_id=r, body="xy").model_dump_json().encode() for r in "78"]
        ms = await asyncio.gather(*(client.call(v) for v in values))
    finally:
        await client.close()
        await server.stop(None)
    assert all(m > 0 for m in ms)
    assert sorted((t, k) for t, _, k in producer.sent) == [
        ("floor-ab-0", b"7"),
        ("floor-ab-0", b"8"),
    ]
    published = FloorRecord.model_validate_json(producer.sent[0][1])
    assert published.reply_to == "floor-ab-3:0" and published.body == "xy"
    assert not replies.waiting


def test_the_chain_behind_the_grpc_front_on_the_broker(
    infra: CommonSettings, tmp_path: Path
) -> None:
    """The chain with and without the front at c=2: the front answered every call, its CPU is
    measured and in the total, what it adds is reported, and the run's topics and groups are
    gone afterwards."""
    out = tmp_path / "front.json"
    code = floor.main(
        [
            "--bootstrap-servers",
            infra.kafka_bootstrap_servers,
            "--modes",
            "chain",
            "--front",
            "none,grpc",
            "-n",
            "20",
            "--warmup",
            "3",
            "-c",
            "2",
            "--chain-idle-s",
            "1",
            "--json",
            str(out),
        ]
    )
    assert code == 0
    phases = json.loads(out.read_text())["phases"]
    assert [(p["extra"]["front"], p["concurrency"], p["records"]) for p in phases] == [
        ("none", 2, 20),
        ("grpc", 2, 20),
    ]
    plain, fronted = phases
    assert "front_core_ms" not in plain["extra"]
    assert fronted["extra"]["front_core_ms"] > 0
    # Read (psutil counts 10 ms ticks: a one-second idle window of a quiet front may hold none).
    assert fronted["extra"]["front_idle_core_ms_per_s"] is not None
    row = floor.chain_row(floor.Phase(**fronted))
    assert row.cost.fronted and row.cost.total == pytest.approx(fronted["extra"]["total_core_ms"])
    assert (
        fronted["extra"]["total_core_ms"]
        > fronted["client_core_ms"] + fronted["extra"]["front_core_ms"]
    )
    topics, groups = plain["extra"]["topics"], plain["extra"]["groups"]
    left_topics, left_groups = asyncio.run(_on_broker(infra.kafka_bootstrap_servers))
    assert not set(topics) & left_topics
    assert not set(groups) & left_groups
