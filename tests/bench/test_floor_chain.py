"""``python -m genwire_bench.floor --modes chain``: N do-nothing stages in a chain (the
pipeline's floor). Names, costs and the report are pure logic; one test runs the chain on the
stack's broker."""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from pathlib import Path
from typing import Any

import pytest
from genwire_bench import floor
from genwire_bench.floor_chain import (
    ChainCost,
    chain_group,
    chain_groups,
    chain_topics,
    hop_rows,
    per_record,
    publish_split,
    render_hops,
)
from genwire_bench.stats import distribution
from genwire_bench.traces import Breakdown, HopStats, Span

from genwire.settings import CommonSettings
from tests.bench.echo import EchoProducer, EchoReplies


def test_the_chain_has_one_topic_more_than_stages_each_relay_reading_the_previous_ones() -> None:
    assert chain_topics("ab12", 3) == [
        "floor-ab12-0",
        "floor-ab12-1",
        "floor-ab12-2",
        "floor-ab12-3",
    ]
    assert chain_topics("r", 1) == ["floor-r-0", "floor-r-1"]
    with pytest.raises(ValueError, match="at least one stage"):
        chain_topics("r", 0)


def test_every_relay_group_and_its_replayers_is_private_to_the_run_and_not_genwires() -> None:
    groups = chain_groups("ab12", 3)
    assert groups == [
        "floor-ab12-stage0",
        "floor-ab12-stage0-retry",
        "floor-ab12-stage1",
        "floor-ab12-stage1-retry",
        "floor-ab12-stage2",
        "floor-ab12-stage2-retry",
    ]
    assert chain_group("ab12", 1) in groups
    assert len(set(groups)) == len(groups)
    assert not [g for g in groups if g.startswith("genwire")]


def test_cpu_per_record_and_the_total_say_when_a_part_was_not_measured() -> None:
    assert per_record(1.0, 1.5, 250) == pytest.approx(2.0)
    assert per_record(None, 1.5, 250) is None and per_record(1.0, 1.5, 0) is None
    cost = ChainCost(client=0.5, relays=[1.0, 1.25, 1.5], broker=2.0)
    assert cost.relays_sum == pytest.approx(3.75)
    assert cost.total == pytest.approx(6.25)
    no_broker = ChainCost(client=0.5, relays=[1.0, 1.0], broker=None)
    assert no_broker.relays_sum == pytest.approx(2.0) and no_broker.total is None
    one_relay_lost = ChainCost(client=0.5, relays=[1.0, None], broker=2.0)
    assert one_relay_lost.relays_sum is None and one_relay_lost.total is None
    assert cost.above_idle is None  # the idle rate was not measured
    with_idle = ChainCost(client=0.5, relays=[1.0, 1.25, 1.5], broker=2.0, idle=1.25)
    assert with_idle.above_idle == pytest.approx(5.0)
    assert ChainCost(client=0.5, relays=[1.0], broker=None, idle=1.0).above_idle is None


def _args(*argv: str) -> argparse.Namespace:
    return floor.parser().parse_args(list(argv))


def test_the_floor_takes_the_benchs_event_loop_flag_and_its_older_spelling() -> None:
    assert _args().loop == "auto"
    assert _args("--event-loop", "asyncio").loop == "asyncio"
    assert _args("--loop", "uvloop").loop == "uvloop"
    with pytest.raises(SystemExit):
        _args("--event-loop", "libuv")


async def test_a_chain_phase_sums_the_relays_and_keeps_each_one() -> None:
    args = _args("--modes", "chain", "--stages", "2", "--no-tracing", "--size", "1000")
    lat = [float(x) for x in range(1, 101)]  # 1..100 ms
    phase = floor._chain_phase(
        args, 8, lat, 2.0, (10.0, 10.05), (100.0, 100.2), [1.0, 2.0], [1.1, 2.15], 20.0
    )
    assert (phase.mode, phase.concurrency, phase.records) == ("chain", 8, 100)
    assert phase.p50_ms == pytest.approx(50.5)
    assert phase.client_core_ms == pytest.approx(0.5)
    assert phase.extra["relays_core_ms"] == pytest.approx([1.0, 1.5])
    assert phase.relay_core_ms == pytest.approx(2.5)
    assert phase.broker_core_ms == pytest.approx(2.0)
    assert phase.extra["total_core_ms"] == pytest.approx(5.0)
    # 20 core-ms per second idle, over the phase's 2 s, is 0.4 core-ms for each of 100 records
    assert phase.extra["total_above_idle_core_ms"] == pytest.approx(4.6)
    assert floor.chain_row(phase).cost.above_idle == pytest.approx(4.6)
    assert phase.extra["stages"] == 2 and phase.extra["size"] == 1000
    assert phase.extra["tracing"] is False


def _chain_phase(concurrency: int, relays: list[float | None]) -> floor.Phase:
    return floor.Phase(
        mode="chain",
        concurrency=concurrency,
        records=100,
        seconds=0.5,
        p50_ms=8.0,
        p95_ms=12.0,
        p99_ms=20.5,
        mean_ms=9.0,
        client_core_ms=0.75,
        relay_core_ms=None,
        broker_core_ms=None if concurrency == 8 else 1.5,
        extra={
            "stages": len(relays),
            "relays_core_ms": relays,
            "tracing": True,
            "size": 200,
            "idle_core_ms_per_s": 100.0,  # 0.5 ms per record over 0.5 s and 100 records
        },
    )


def test_the_chain_table_shows_each_relay_the_sum_the_total_and_the_p50_per_hop() -> None:
    text = floor.render([_chain_phase(1, [1.0, 1.25, 1.5]), _chain_phase(8, [0.5, 0.5, 0.5])])
    assert "| mode |" not in text  # only chain phases: no empty one-hop table
    rows = [r for r in text.splitlines() if r.startswith("| ") and "---" not in r]
    assert rows[0].startswith("| chain | c |")
    # 4 hops for 3 stages: 8 ms end to end is 2 ms per hop; 0.75 + 3.75 + 1.5 core-ms
    assert rows[1] == (
        "| 3 stages, 200 B, tracing on | 1 | 100 | 200 | 8.00 | 12.00 | 20.50 | 2.00 | 0.75 "
        "| 1.00 / 1.25 / 1.50 | 3.75 | 1.50 | 6.00 | 5.50 |"
    )
    assert rows[2].endswith("| 0.50 / 0.50 / 0.50 | 1.50 | – | – | – |")


def test_other_modes_keep_their_table_and_the_chain_follows_it() -> None:
    bare = floor.Phase("bare", 1, 100, 2.0, 1.5, 3.0, 4.25, 1.7, 0.8, None, 0.5)
    text = floor.render([bare, _chain_phase(1, [1.0, 1.0, 1.0])])
    tables = text.split("\n\n")
    assert len(tables) == 3  # the one-hop table, the chain's, and what it adds beyond the floor
    assert tables[0].splitlines()[0].startswith("| mode |") and "| bare | 1 |" in tables[0]
    assert tables[1].splitlines()[0].startswith("| chain |") and "chain" not in tables[0]
    # 8 ms end to end less four bare hops of 1.5 ms: 2 ms for three stages
    assert tables[2] == (
        "c=1: chain p50 8.00 ms − 4 × bare p50 1.50 ms = 2.00 ms, 0.67 ms per stage beyond "
        "the one-hop floor"
    )


def test_the_clients_acknowledgement_times_close_the_report_when_measured() -> None:
    bare = floor.Phase("bare", 1, 100, 2.0, 1.5, 3.0, 4.25, 1.7, 0.8, None, 0.5)
    assert "acknowledgement" not in floor.render([bare])
    bare.extra = {"client_ack_p50_ms": 0.5, "client_ack_p95_ms": 1.25}
    chain = _chain_phase(8, [1.0, 1.0, 1.0])
    chain.extra |= {"client_ack_p50_ms": 2.0, "client_ack_p95_ms": 4.0}
    last = floor.render([bare, chain]).split("\n\n")[-1]
    assert last == (
        "The client's publish → acknowledgement (acks=all), p50 / p95 ms: "
        "bare c=1 0.50 / 1.25, chain c=8 2.00 / 4.00"
    )


def test_without_a_bare_phase_at_its_concurrency_the_chain_says_nothing_beyond_the_floor() -> None:
    bare_c8 = floor.Phase("bare", 8, 100, 2.0, 1.5, 3.0, 4.25, 1.7, 0.8, None, 0.5)
    text = floor.render([bare_c8, _chain_phase(1, [1.0, 1.0, 1.0])])
    assert "beyond the one-hop floor" not in text
    assert text.split("\n\n")[1].splitlines()[-1].startswith("| 3 stages")


async def test_a_paced_worker_waits_between_one_record_seen_and_its_next_send() -> None:
    replies = EchoReplies()
    producer: Any = EchoProducer(replies)
    pace_s = 0.2
    begun = time.perf_counter()
    lat = await floor._drive(
        producer, replies, "t", count=4, concurrency=2, size=100, tag="p", pace_ms=pace_s * 1000
    )
    assert len(lat) == 4 and sorted(k for *_, k in producer.sent) == [
        b"p-0",
        b"p-1",
        b"p-2",
        b"p-3",
    ]
    # two workers, two records each: neither paused before its first send, each paused before
    # its second; the pause is between records, so no latency holds it
    times = sorted(producer.sent_at)
    assert times[1] - begun < pace_s and times[2] - times[0] >= pace_s
    assert max(lat) < pace_s * 1000


async def test_paced_phases_say_so_in_both_tables_and_the_pace_is_checked() -> None:
    bare = floor.Phase("bare", 1, 100, 2.0, 1.5, 3.0, 4.25, 1.7, 0.8, None, 0.5)
    bare.extra = {"pace_ms": 40.0}
    chain = _chain_phase(1, [1.0, 1.0, 1.0])
    chain.extra["pace_ms"] = 40.0
    text = floor.render([bare, chain])
    assert "| bare, 40 ms apart | 1 | 100 |" in text
    assert "| 3 stages, 200 B, tracing on, 40 ms apart | 1 | 100 |" in text
    assert floor.chain_row(_chain_phase(1, [1.0])).pace_ms == 0.0  # a run from before the option
    assert "apart" not in floor.render([_chain_phase(1, [1.0, 1.0, 1.0])])
    assert _args("--pace-ms", "40").pace_ms == 40.0 and _args().pace_ms == 0.0
    args = _args("--modes", "chain", "--stages", "2", "--pace-ms", "12.5")
    phase = floor._chain_phase(args, 1, [1.0, 2.0], 1.0, (0.0, 0.0), (None, None), [0, 0], [0, 0])
    assert phase.extra["pace_ms"] == 12.5 and floor.chain_row(phase).pace_ms == 12.5


def test_the_traced_records_are_spread_over_the_phase() -> None:
    picked = [i for i in range(500) if floor._traced(i, 500, 60)]
    assert len(picked) == 60 and picked[:3] == [0, 8, 16] and picked[-1] == 472
    assert [i for i in range(20) if floor._traced(i, 20, 4)] == [0, 5, 10, 15]
    assert [i for i in range(3) if floor._traced(i, 3, 10)] == [0, 1, 2]  # more wanted than sent
    assert not [i for i in range(10) if floor._traced(i, 10, 0)]


def test_the_per_hop_table_names_hops_without_the_runs_prefix() -> None:
    def stats(hop: str, at: float, values: list[float]) -> HopStats:
        dist = distribution(values)
        assert dist is not None
        return HopStats(hop, 1.0, at, dist)

    result = Breakdown(
        traces_found=2,
        traces_wanted=3,
        trace_span=None,
        hops=[
            stats("floor-ab12-0 wait (attr)", 0.0, [1.0, 3.0]),
            stats("floor: process floor-ab12-0", 0.0, [1.25, 1.25]),
            stats("last publish → client", 3.5, [1.5, 2.5]),
        ],
    )
    rows = hop_rows(result, "ab12")
    assert [r["hop"] for r in rows] == [
        "floor-…-0 wait (attr)",
        "floor: process floor-…-0",
        "last publish → client",
    ]
    text = render_hops(1, {"found": 2, "wanted": 3, "hops": rows})
    lines = text.splitlines()
    assert lines[0] == "Per hop, c=1 (2/3 traces):"
    assert lines[4] == "| floor-…-0 wait (attr) | 1.0 | 0.00 | 2.00 | 2.90 |"
    assert lines[-1] == "| last publish → client | 1.0 | 3.50 | 2.00 | 2.45 |"


def _span(sid: str, parent: str | None, name: str, start_us: int, dur_us: int) -> Span:
    return Span(sid, parent, name, "floor-ab12-stage0", start_us, dur_us, {})


def test_a_relays_process_span_is_cut_at_its_publish() -> None:
    """Before the publish: the relay's own path; after it: the acknowledgement's wait."""
    traces = [
        [
            _span("p0", None, "floor-ab12-0 process", 1_000, 3_000),
            _span("u0", "p0", "floor-ab12-1 publish", 2_000, 20),  # 1 ms in, 2 ms to the end
            _span("p1", "u0", "floor-ab12-1 process", 5_000, 1_000),  # no publish: not cut
        ],
        [
            _span("p0", None, "floor-ab12-0 process", 0, 2_000),
            _span("u0", "p0", "floor-ab12-1 publish", 500, 20),  # 0.5 ms in, 1.5 to the end
            _span("x", "p0", "decode", 100, 50),  # not a publish
        ],
        [],  # a trace Jaeger did not have
    ]
    rows = {r["hop"]: r for r in publish_split(traces, "ab12")}
    assert set(rows) == {
        "floor-…-0 process: before its publish",
        "floor-…-0 process: publish → end (acknowledgement)",
    }
    before = rows["floor-…-0 process: before its publish"]
    after = rows["floor-…-0 process: publish → end (acknowledgement)"]
    assert before["p50_ms"] == pytest.approx(0.75) and after["p50_ms"] == pytest.approx(1.75)
    assert before["per_trace"] == after["per_trace"] == 1.0
    assert before["at_ms"] == pytest.approx(0.0) and after["at_ms"] == pytest.approx(0.75)


def test_the_chain_options_and_what_is_refused() -> None:
    args = _args("--modes", "chain", "--stages", "5", "--relay-concurrency", "4")
    assert args.modes == ["chain"] and args.stages == 5 and args.relay_concurrency == 4
    defaults = _args()  # the chain's own options are unset unless given (main resolves them)
    assert defaults.stages is None and defaults.relay_concurrency is None and defaults.tracing
    for bad in (
        ["--modes", "chian"],
        ["--modes", "chain", "--stages", "0"],
        ["--relay-concurrency", "0"],
        ["--modes", "chain", "--hop-traces", "5", "--no-tracing"],  # no spans to read back
        *(["--modes", "bare,hop", flag, "2"] for flag in ("--stages", "--hop-traces")),
        ["--chain-idle-s", "1"],  # not silently ignored without a chain
        ["--pace-ms", "-1"],
        ["--modes", "idle", "--pace-ms", "40"],  # idle sends nothing to pace
    ):
        with pytest.raises(SystemExit):
            floor.main([*bad, "--bootstrap-servers", "unused:1"])


def test_three_stages_in_a_chain_on_the_broker(infra: CommonSettings, tmp_path: Path) -> None:
    """A handful of records through three relays at c=1 and c=2: every record arrives, each
    relay's CPU is measured, the traced records' traces pass all three relays, and the run's
    topics and groups are gone afterwards."""
    out = tmp_path / "chain.json"
    code = floor.main(
        [
            "--bootstrap-servers",
            infra.kafka_bootstrap_servers,
            "--modes",
            "chain",
            "-n",
            "20",
            "--warmup",
            "3",
            "-c",
            "1,2",
            "--relay-concurrency",
            "4",
            "--chain-idle-s",
            "1",
            "--hop-traces",
            "4",
            "--json",
            str(out),
        ]
    )
    assert code == 0
    phases = json.loads(out.read_text())["phases"]
    assert [(p["mode"], p["concurrency"], p["records"]) for p in phases] == [
        ("chain", 1, 20),
        ("chain", 2, 20),
    ]
    for p in phases:
        assert 0 < p["p50_ms"] <= p["p99_ms"]
        assert len(p["extra"]["relays_core_ms"]) == 3
        assert all(r >= 0 for r in p["extra"]["relays_core_ms"])
        assert p["extra"]["relay_concurrency"] == 4 and p["extra"]["tracing"] is True
        assert p["extra"]["idle_core_ms_per_s"] > 0
        assert 0 < p["extra"]["client_ack_p50_ms"] <= p["extra"]["client_ack_p95_ms"]
    # A process's CPU time is read in 10 ms clock ticks: one phase's 20 records at ~0.5 core-ms
    # each may round to zero for a relay (CI saw it); both phases together use well over a tick.
    for i in range(3):
        assert sum(p["extra"]["relays_core_ms"][i] for p in phases) > 0, f"relay {i}"
    # the traced records' spans came back from Jaeger: one trace through all three relays
    hops = phases[0]["extra"]["hops"]
    assert hops["found"] == hops["wanted"] == 4
    names = {h["hop"] for h in hops["hops"]}
    assert {f"floor: process floor-…-{i}" for i in range(3)} <= names
    assert {"client → first span", "last publish → client"} <= names
    assert {f"floor-…-{i} process: before its publish" for i in range(3)} <= names
    topics, groups = phases[0]["extra"]["topics"], phases[0]["extra"]["groups"]
    assert len(topics) == 4 and len(groups) == 6
    left_topics, left_groups = asyncio.run(_on_broker(infra.kafka_bootstrap_servers))
    assert not set(topics) & left_topics
    assert not set(groups) & left_groups


def test_a_paced_bare_hop_on_the_broker(
    infra: CommonSettings, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``--pace-ms`` on a real hop: every record arrives, the phase lasts at least its pauses
    (five between six records), and the report and the JSON say it was paced."""
    out = tmp_path / "paced.json"
    argv = ["--bootstrap-servers", infra.kafka_bootstrap_servers, "--modes", "bare"]
    argv += ["-n", "6", "--warmup", "1", "-c", "1", "--pace-ms", "25", "--json", str(out)]
    assert floor.main(argv) == 0
    (phase,) = json.loads(out.read_text())["phases"]
    assert (phase["mode"], phase["records"], phase["extra"]["pace_ms"]) == ("bare", 6, 25.0)
    assert phase["seconds"] >= 5 * 0.025 and phase["p50_ms"] > 0
    assert "| bare, 25 ms apart | 1 | 6 |" in capsys.readouterr().out


async def _on_broker(bootstrap: str) -> tuple[set[str], set[str]]:
    from aiokafka.admin import AIOKafkaAdminClient

    from genwire.kafka_security import client_options

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, **client_options())
    await admin.start()
    try:
        topics = set(await admin.list_topics())
        groups = {str(g[0]) for g in await admin.list_consumer_groups()}
        return topics, groups
    finally:
        await admin.close()


def test_the_floor_warns_of_a_broker_still_compiling_its_hot_code() -> None:
    """Over 30 % of the broker's CPU in its compiler threads during the run: a warning with the
    share; a thread first seen at the end counts from zero; too little CPU says nothing."""
    before = {11: 5.0, 12: 1.0}
    assert floor.broker_jit_warning(before, {11: 5.5, 12: 1.0}, cpu_s=2.0) == ""  # 25 %
    warning = floor.broker_jit_warning(before, {11: 5.5, 13: 0.4}, cpu_s=2.0)  # 0.9 of 2.0
    assert warning.startswith("warning: the Kafka broker spent 45% of its CPU in this run")
    assert floor.broker_jit_warning({}, {11: 0.4}, cpu_s=0.45) == ""  # under JIT_MIN_CPU_S
    assert floor.broker_jit_warning(before, {11: 9.0}, cpu_s=None) == ""  # no broker here
