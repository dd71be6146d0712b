"""``python -m genwire_bench.floor``: the one-hop floor, measured with the services' clients."""

from __future__ import annotations

import json
from pathlib import Path

from genwire_bench import floor

from genwire.kafka.consumer import FETCH_MAX_WAIT_MS
from genwire.settings import CommonSettings


def _phase(mode: str, **kw: object) -> floor.Phase:
    base: dict[str, object] = {
        "mode": mode,
        "concurrency": 1,
        "records": 100,
        "seconds": 2.0,
        "p50_ms": 1.5,
        "p95_ms": 3.0,
        "p99_ms": 4.25,
        "mean_ms": 1.7,
        "client_core_ms": 0.8,
        "relay_core_ms": None,
        "broker_core_ms": 0.5,
    }
    base.update(kw)
    return floor.Phase(**base)  # type: ignore[arg-type]


def test_the_table_shows_every_phase_and_marks_what_was_not_measured() -> None:
    text = floor.render(
        [
            _phase("bare"),
            _phase("hop", relay_core_ms=1.25, broker_core_ms=None),
            _phase("idle", records=0, p50_ms=None, relay_core_ms=7.5, seconds=10.0),
        ]
    )
    rows = [r for r in text.splitlines() if r.startswith("| ") and "---" not in r][1:]
    assert rows[0] == "| bare | 1 | 100 | 50 | 1.50 | 3.00 | 4.25 | 0.80 | – | 0.50 |"
    assert rows[1].startswith("| hop | 1 | 100 | 50 | 1.50 |")
    assert rows[1].endswith("| 1.25 | – |")
    assert rows[2].startswith("| idle (10 s) |")
    assert "7.50 per s" in rows[2]


async def test_the_reader_uses_the_services_consumer_settings() -> None:
    args = floor.parser().parse_args([])
    assert args.fetch_max_wait_ms == FETCH_MAX_WAIT_MS
    assert args.modes == ["bare", "hop"] and args.concurrency == [1, 8]
    reader = floor.Reader("k:9092", "t", args.fetch_max_wait_ms)
    client = reader._consumer
    assert client._enable_auto_commit is False
    assert client._fetch_max_wait_ms == FETCH_MAX_WAIT_MS


def test_floor_and_a_hop_through_a_relay_on_the_broker(
    infra: CommonSettings, tmp_path: Path
) -> None:
    """Both phases run against the stack's broker: every record is seen, the relay's CPU is
    measured, and the private topics are gone afterwards."""
    out = tmp_path / "floor.json"
    code = floor.main(
        [
            "--bootstrap-servers",
            infra.kafka_bootstrap_servers,
            "-n",
            "100",  # the relay's CPU is read in 10 ms ticks: enough records for several
            "--warmup",
            "5",
            "-c",
            "2",
            "--no-tracing",
            "--json",
            str(out),
        ]
    )
    assert code == 0
    report = json.loads(out.read_text())
    bare, hop = report["phases"]
    assert (bare["mode"], hop["mode"]) == ("bare", "hop")
    assert bare["records"] == hop["records"] == 100
    assert 0 < bare["p50_ms"] <= bare["p99_ms"]
    assert bare["relay_core_ms"] is None and hop["relay_core_ms"] > 0
    # The relay's groups (its own and its retry replayer's on genwire.retry) are not genwire's:
    # the fault suite's stuck-partition check reads every genwire-… group.
    assert not [g for g in _groups(infra.kafka_bootstrap_servers) if g.startswith("genwire-floor")]


def _groups(bootstrap: str) -> list[str]:
    import asyncio

    from aiokafka.admin import AIOKafkaAdminClient

    async def names() -> list[str]:
        admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
        await admin.start()
        try:
            return [str(g[0]) for g in await admin.list_consumer_groups()]
        finally:
            await admin.close()

    return asyncio.run(names())
