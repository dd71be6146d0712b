"""``genwire model bench --in-process --rounds N``: the ceiling and Triton alternated, each
ratio's median and range over the rounds, and the hypervisor's steal of each side."""

from __future__ import annotations

import argparse
import asyncio
import json
import math
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from genwire_model import bench, bench_rounds, cli

from genwire.settings import CommonSettings


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
        "rest_in_process": None,
        "rest_triton": None,
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


def test_the_summary_says_where_the_machine_was_not_quiet(
    capsys: pytest.CaptureFixture[str],
) -> None:
    rows = [
        _row(1, 0.9, rest_in_process=2.0, rest_triton=3.0),
        _row(1, 0.9, rest_in_process=4.0, rest_triton=None),  # unread: left out
        _row(8, 0.9, rest_in_process=1.0, rest_triton=6.0),
        _row(8, 0.9, rest_in_process=1.0, rest_triton=8.0),
        _row(32, 0.9),  # never read (/proc/stat, or Triton's processes, not seen): not busy
        _row(64, 0.9, rest_in_process=5.0, rest_triton=5.0),  # at the limit: still quiet
        _row(128, 0.9, rest_in_process=5.4, rest_triton=0.0),  # above it, printed so
    ]
    summary = bench_rounds.summarize_rounds(rows)
    assert [(e["rest_in_process"], e["rest_triton"]) for e in summary] == [
        (3.0, 3.0),
        (1.0, 7.0),
        (None, None),
        (5.0, 5.0),
        (5.4, 0.0),
    ]
    assert bench_rounds.not_quiet(summary) == [8, 128]
    bench_rounds._print_summary(summary)
    out = capsys.readouterr().out
    assert "rest 3.0%/3.0%" in out and "rest 1.0%/7.0%" in out and "rest –/–" in out
    assert "rest 5.4%/0.0%" in out
    assert "the machine was not quiet at concurrency 8, 128:" in out
    bench_rounds._print_summary(summary[:1])
    assert "not quiet" not in capsys.readouterr().out


def test_the_summary_gives_the_decode_threads_factors_and_splits() -> None:
    def split(on: float, waiting: float) -> dict[str, float]:
        return {"on_cpu_pct": on, "waiting_pct": waiting, "asleep_pct": 100 - on - waiting}

    rows = [
        _row(8, 0.80, loop_on_cpu_x=0.88, loop_cpu_x=1.10, loop_triton=split(88, 7)),
        _row(8, 0.90, loop_on_cpu_x=0.90, loop_cpu_x=1.00, loop_triton=split(90, 5)),
        _row(8, 0.86, loop_on_cpu_x=0.92, loop_cpu_x=1.07, loop_triton=None),  # unread
    ]
    for row in rows:
        row["loop_in_process"] = split(100, 0)
    (eight,) = bench_rounds.summarize_rounds(rows)
    assert eight["loop_on_cpu_x"] == {"median": 0.90, "min": 0.88, "max": 0.92}
    assert eight["loop_cpu_x"] == {"median": 1.07, "min": 1.00, "max": 1.10}
    assert eight["loop_triton"] == {"on_cpu_pct": 89.0, "waiting_pct": 6.0, "asleep_pct": 5.0}
    assert eight["loop_in_process"] == split(100, 0)
    # Rounds from before the factors (or Triton elsewhere): none to summarise, printed as "–".
    (old,) = bench_rounds.summarize_rounds([_row(8, 0.9)])
    assert math.isnan(old["loop_on_cpu_x"]["median"]) and old["loop_triton"] is None
    assert bench.times_x(old["loop_cpu_x"]["median"]) == "–" and bench.loop_split(None) == "–"
    assert bench.loop_split(split(88, 7)) == "88/7/5"


def test_the_factors_are_missing_where_a_side_has_no_decode_thread() -> None:
    static = bench.StaticResult(8, 256, 1.0, 256.0, 4.0)
    triton, local = bench.summarize(8, [], 1.0, 0), bench.summarize(8, [], 1.0, 0)
    local.loop_thread = {"on_cpu_pct": 99.0, "core_ms_per_token": 0.5}
    row = bench.compare(triton, local, static)  # Triton on another machine: nothing read
    assert math.isnan(row["loop_on_cpu_x"]) and math.isnan(row["loop_cpu_x"])
    triton.loop_thread = {"on_cpu_pct": 89.1, "core_ms_per_token": 0.55}
    row = bench.compare(triton, local, static)
    assert row["loop_on_cpu_x"] == pytest.approx(0.9) and row["loop_cpu_x"] == pytest.approx(1.1)


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--rounds", "3"], "need --in-process"),
        (["--rounds", "3", "--in-process", "--floor"], "do not apply to --floor"),
        (["--rounds", "0", "--in-process"], "at least 1"),
        (["--max-steal", "5"], "need --in-process"),
        (["--max-steal", "5", "--floor"], "need --in-process"),
        (["--max-steal", "100.5", "--in-process"], "a percentage"),
        (["--floor", "--in-process"], "do not apply to it"),
        (["--floor", "--name", "genwire-gpt"], "do not apply to it"),
        (["--concurrency", "8", "0"], "at least 1"),
        (["--requests", "0"], "at least 1"),
        (["--response-gap-ms", "80", "--in-process"], "do not apply to it"),
        (["--response-gap-ms", "80", "--floor"], "do not apply to it"),
        (["--response-gap-ms", "-1"], "a finite number >= 0"),
        (["--response-gap-ms", "nan"], "a finite number >= 0"),
    ],
)
def test_rounds_are_refused_where_they_cannot_apply(flags: list[str], message: str) -> None:
    parser = argparse.ArgumentParser()
    cli.register(parser.add_subparsers())
    args = parser.parse_args(["model", "bench", *flags])
    with pytest.raises(SystemExit, match=message):
        args.func(args)


def test_a_side_is_stolen_when_its_steal_is_above_the_limit() -> None:
    assert not bench_rounds.stolen((50.0, 50.0), None)  # no limit: every pair kept
    assert not bench_rounds.stolen((5.0, None), 5.0)
    assert bench_rounds.stolen((5.1, 0.0), 5.0)
    assert bench_rounds.stolen((None, 9.0), 5.0)


def _level(concurrency: int, steal: float | None, tokens_per_s: float) -> bench.LevelResult:
    result = bench.summarize(concurrency, [], 1.0, 0)
    result.output_tokens_per_s = tokens_per_s
    result.steal_pct = steal
    result.rest_pct = 20.0 if tokens_per_s < 100 else 1.0  # Triton's side beside a busy stack
    return result


@pytest.fixture
def fake_sides(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """``run_rounds`` with both sides faked: ``triton_steals`` (an iterator) gives each Triton
    level's steal, ``in_process_errors`` each in-process level's failed requests, ``calls`` the
    order of the sides. The machine's steal reader reads nothing (the in-process side: None)."""
    version = SimpleNamespace(version=7, path=tmp_path)
    tokenizer = SimpleNamespace(encode=lambda prompt: SimpleNamespace(ids=[1]))
    scheduler = SimpleNamespace(start=lambda: None, stop=lambda: None)
    state: dict[str, Any] = {"triton_steals": iter(()), "in_process_errors": 0, "calls": []}

    async def remote(*args: object, **kw: object) -> bench.LevelResult:
        state["calls"].append("triton")
        return _level(8, next(state["triton_steals"]), 80.0)

    def local_level(*args: object) -> bench.LevelResult:
        state["calls"].append("in-process")
        result = _level(8, 0.5, 100.0)
        result.errors = state["in_process_errors"]
        return result

    monkeypatch.setattr(bench_rounds, "served_version", lambda *a: version)
    monkeypatch.setattr(bench_rounds, "load_tokenizer", lambda _: tokenizer)
    monkeypatch.setattr(bench_rounds, "_scheduler", lambda *a, **k: scheduler)
    monkeypatch.setattr(bench_rounds, "cpu_times", lambda: None)
    monkeypatch.setattr(
        bench_rounds, "run_static", lambda *a: bench.StaticResult(8, 8, 1.0, 8.0, 2.0)
    )
    monkeypatch.setattr(bench_rounds, "run_in_process_level", local_level)
    monkeypatch.setattr(bench_rounds, "run_level", remote)
    return state


def test_a_stolen_pair_is_measured_again_and_the_least_stolen_try_is_kept(
    tmp_path: Path, fake_sides: dict[str, Any]
) -> None:
    """Round 1's pair is stolen once (measured again, the retry kept); round 2's every time
    (the try that lost least kept, marked and counted); the others are in the JSON."""
    fake_sides["triton_steals"] = iter([20.0, 1.0, 30.0, 25.0, 40.0])
    out = tmp_path / "rounds.json"
    summary = bench_rounds.run_rounds("url", "m", tmp_path, [8], 4, 4, out, 2, max_steal=10.0)
    assert fake_sides["calls"] == ["in-process", "triton"] * 2 + ["triton", "in-process"] * 3
    payload = json.loads(out.read_text())
    kept = payload["pairs"]
    assert [(r["round"], r["steal_triton"], r["stolen"]) for r in kept] == [
        (1, 1.0, False),
        (2, 25.0, True),
    ]
    assert [(r["round"], r["steal_triton"]) for r in payload["discarded"]] == [
        (1, 20.0),
        (2, 30.0),
        (2, 40.0),
    ]
    assert payload["complete"] is True and payload["rounds"] == 2 and payload["attempts"] == 3
    assert summary[0]["rounds"] == 2 and summary[0]["stolen"] == 1 and summary[0]["errors"] == 0
    assert summary[0]["share"]["median"] == pytest.approx(0.8)
    assert [(r["rest_in_process"], r["rest_triton"]) for r in kept] == [(1.0, 20.0)] * 2
    assert (summary[0]["rest_in_process"], summary[0]["rest_triton"]) == (1.0, 20.0)


def test_failed_requests_are_counted_and_a_run_that_stops_keeps_its_pairs(
    tmp_path: Path, fake_sides: dict[str, Any]
) -> None:
    fake_sides["triton_steals"] = iter([1.0])  # the second round's Triton side then fails
    fake_sides["in_process_errors"] = 2
    out = tmp_path / "rounds.json"
    with pytest.raises(RuntimeError):
        bench_rounds.run_rounds("url", "m", tmp_path, [8], 4, 4, out, 2)
    payload = json.loads(out.read_text())
    assert payload["complete"] is False
    assert [(r["round"], r["errors"]) for r in payload["pairs"]] == [(1, 2)]
    assert payload["summary"][0]["errors"] == 2


@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        (["--in-process", "--max-steal", "5"], ("rounds", 1, 5.0, "auto")),
        (
            ["--in-process", "--rounds", "4", "--event-loop", "asyncio"],
            ("rounds", 4, None, "asyncio"),
        ),
        (["--in-process"], ("run", True, "auto")),
        (["--event-loop", "uvloop"], ("run", False, "uvloop")),
    ],
)
def test_the_bench_goes_to_the_rounds_only_when_asked(
    flags: list[str], expected: tuple[object, ...], monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[tuple[object, ...]] = []
    monkeypatch.setattr(
        bench_rounds,
        "run_rounds",
        lambda *a, **kw: seen.append(("rounds", a[7], kw["max_steal"], kw["event_loop"])),
    )
    monkeypatch.setattr(
        bench, "run", lambda *a, **kw: seen.append(("run", kw["in_process"], kw["event_loop"]))
    )
    parser = argparse.ArgumentParser()
    cli.register(parser.add_subparsers())
    args = parser.parse_args(["model", "bench", *flags])
    assert args.func(args) == 0
    assert seen == [expected]


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
        event_loop="uvloop",
    )
    assert [(e["concurrency"], e["rounds"]) for e in summary] == [(1, 2), (2, 2)]
    payload = json.loads(out.read_text())
    assert payload["shared_stream"] is True and payload["summary"] == summary
    assert payload["event_loop"] == "uvloop"
    rounds = payload["pairs"]
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
        assert r["triton"]["event_loop"] == "uvloop"  # what the client ran on
        assert r["in_process"]["event_loop"] == ""


def test_the_bench_offers_the_services_event_loops(capsys: pytest.CaptureFixture[str]) -> None:
    parser = argparse.ArgumentParser()
    cli.register(parser.add_subparsers())
    with pytest.raises(SystemExit):
        parser.parse_args(["model", "bench", "--event-loop", "libuv"])
    assert "invalid choice: 'libuv'" in capsys.readouterr().err


def test_the_loop_times_print_static_beside_closed_per_level(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from genwire_model.runtime.scheduler import LoopTimes

    closed = LoopTimes(iterations=4, total_s=0.040, admit_s=0.008, prefill_pass_s=0.006)
    closed.steps, closed.pass_s, closed.sampling_s, closed.reform_s = 4, 0.020, 0.010, 0.001
    closed.rows, closed.live_rows, closed.columns = 120, 116, 144
    static = bench.StaticResult(8, 256, 1.0, 256.0, 3.9, loop={**closed.per_step(), "rows": 8.0})
    level = bench.summarize(8, [], 1.0, 0)
    level.loop = closed.per_step()
    bench.print_loop_times([static], [level])
    lines = capsys.readouterr().out.splitlines()
    # One line per side; the closed loop's: 10 ms a step, 5 of them the pass, 0.25 "other".
    assert lines[-2].split()[:3] == ["8", "static", "10.000"]
    assert lines[-1].split() == (
        [
            "8",
            "closed",
            "10.000",
            "5.000",
            "2.500",
            "2.000",
            "1.500",
            "0.250",
            "0.250",
            "30.0",
            "29.0",
            "36.0",
        ]
    )
