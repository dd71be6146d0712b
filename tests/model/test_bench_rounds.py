"""``genwire model bench --in-process --rounds N``: the ceiling and Triton alternated, each
ratio's median and range over the rounds, and the hypervisor's steal of each side."""

from __future__ import annotations

import argparse
import asyncio
import json
import math
from pathlib import Path

import pytest
from genwire_model import bench, bench_rounds, cli

from genwire.settings import CommonSettings


def _stat(tmp_path: Path, steal: int, total_rest: int) -> Path:
    path = tmp_path / "stat"
    # user nice system idle iowait irq softirq steal guest guest_nice
    path.write_text(
        f"cpu  {total_rest} 0 0 0 0 0 0 {steal} 7 7\ncpu0 1 2 3 4 5 6 7 8 0 0\n", encoding="ascii"
    )
    return path


def test_steal_is_the_stolen_share_of_the_cpu_time_between_two_readings(tmp_path: Path) -> None:
    before = bench.cpu_times(_stat(tmp_path, 100, 900))
    after = bench.cpu_times(_stat(tmp_path, 150, 1350))
    assert before == (100, 1000)  # guest time is inside user already: not added twice
    assert after == (150, 1500)
    assert bench.stolen_pct(before, after) == 10.0
    assert bench.stolen_pct(after, after) is None  # no time passed
    assert bench.stolen_pct(None, after) is None
    assert bench.cpu_times(tmp_path / "missing") is None
    (tmp_path / "odd").write_text("intr 1 2 3\n", encoding="ascii")
    assert bench.cpu_times(tmp_path / "odd") is None


def _row(concurrency: int, share: float, **kw: object) -> dict[str, object]:
    row: dict[str, object] = {
        "concurrency": concurrency,
        "share": share,
        "tpot_step_x": 1.0,
        "tpot_x": 1.0,
        "ttft_extra_ms": 2.0,
        "cpu_x": 1.5,
        "steal_in_process": 1.0,
        "steal_triton": 3.0,
    }
    row.update(kw)
    return row


def test_the_summary_gives_each_ratios_median_and_range_per_level() -> None:
    rows = [
        _row(8, 0.80, ttft_extra_ms=5.0),
        _row(32, 0.70),
        _row(8, 0.90, steal_triton=None),
        _row(32, 0.75, tpot_step_x=float("nan")),  # nothing to divide by: left out
        _row(8, 0.86, ttft_extra_ms=1.0, steal_triton=5.0),
    ]
    eight, thirty_two = bench_rounds.summarize_rounds(rows)
    assert eight["concurrency"] == 8 and eight["rounds"] == 3
    assert eight["share"] == {"median": 0.86, "min": 0.80, "max": 0.90}
    assert eight["ttft_extra_ms"] == {"median": 2.0, "min": 1.0, "max": 5.0}
    assert eight["steal_in_process"] == 1.0
    assert eight["steal_triton"] == 4.0  # the round that could not read it left out
    assert thirty_two["rounds"] == 2
    assert thirty_two["share"]["median"] == pytest.approx(0.725)
    assert thirty_two["tpot_step_x"] == {"median": 1.0, "min": 1.0, "max": 1.0}
    nothing = bench_rounds.summarize_rounds([_row(1, 0.9, cpu_x=float("nan"), steal_triton=None)])
    assert math.isnan(nothing[0]["cpu_x"]["median"]) and nothing[0]["steal_triton"] is None


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--rounds", "3"], "needs --in-process"),
        (["--rounds", "3", "--in-process", "--floor"], "does not apply to --floor"),
        (["--rounds", "0", "--in-process"], "at least 1"),
    ],
)
def test_rounds_are_refused_where_they_cannot_apply(flags: list[str], message: str) -> None:
    parser = argparse.ArgumentParser()
    cli.register(parser.add_subparsers())
    args = parser.parse_args(["model", "bench", *flags])
    with pytest.raises(SystemExit, match=message):
        args.func(args)


async def test_rounds_alternate_the_ceiling_and_triton_against_the_real_triton(
    served_model: tuple[str, str], infra: CommonSettings, tmp_path: Path
) -> None:
    url, name = served_model
    out = tmp_path / "rounds.json"
    summary = await asyncio.to_thread(
        bench_rounds.run_rounds,
        url,
        name,
        infra.repository,
        [1, 2],
        4,
        4,
        out,
        2,
        shared_stream=True,
    )
    assert [(e["concurrency"], e["rounds"]) for e in summary] == [(1, 2), (2, 2)]
    payload = json.loads(out.read_text())
    assert payload["shared_stream"] is True and payload["summary"] == summary
    rounds = payload["rounds"]
    assert [(r["round"], r["concurrency"], r["first"]) for r in rounds] == [
        (1, 1, "in-process"),
        (1, 2, "in-process"),
        (2, 1, "triton"),
        (2, 2, "triton"),
    ]
    for r in rounds:
        assert r["errors"] == 0
        assert r["triton"]["requests"] == r["in_process"]["requests"] == 4
        assert r["static"]["batch"] == r["concurrency"]
        assert r["share"] == pytest.approx(
            r["triton"]["output_tokens_per_s"] / r["in_process"]["output_tokens_per_s"]
        )
        assert r["steal_triton"] == r["triton"]["steal_pct"]
