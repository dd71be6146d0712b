"""``genwire model bench --in-process --rounds N``: Triton against the in-process ceiling in
alternated rounds.

On a shared or virtual machine the ceiling and Triton's figure each move by tens of percent
between runs minutes apart (other work; the hypervisor's steal, 0.5–10 % of the CPU time on the
development machine), so one run's share lands either side of a goal. Here each round measures,
per level, the static batch, the in-process closed loop and Triton back to back, in-process
first in odd rounds and Triton first in even ones (a drift of the machine does not always
favour the same side), and the summary gives each ratio's median and range over the rounds,
with the steal each side saw.
"""

from __future__ import annotations

import dataclasses
import json
import math
import statistics
from pathlib import Path
from typing import Any

from genwire_bench import loop_thread
from genwire_bench.steal import cpu_times, stolen_pct

from genwire.service import loop as event_loops
from genwire_model.bench import (
    PROMPTS,
    LevelResult,
    StaticResult,
    _scheduler,
    _streams,
    compare,
    loop_split,
    rest_text,
    run_in_process_level,
    run_level,
    run_static,
    served_version,
    times_x,
)
from genwire_model.repository import load_tokenizer

ATTEMPTS = 3
"""Tries of one round's level when the hypervisor's steal is above ``max_steal``."""

QUIET_REST_PCT = 5.0
"""Above this median share of one core used by the rest of the machine (``rest_pct``) on
either side of a level, the summary says the machine was not quiet: with Triton alone it read
0–3 %, beside the idle native stack 6–10 %, which on two cores cost Triton's decode thread
1–5 points of a CPU and its share 4–11 points (about 5 at concurrency 8; docs/model.md *Round
21*)."""

RATIOS = (
    "share",
    "tpot_step_x",
    "tpot_x",
    "ttft_extra_ms",
    "cpu_x",
    "loop_on_cpu_x",
    "loop_cpu_x",
)
"""The per-round comparisons summarised (``bench.compare``'s keys)."""


def _present(values: list[float]) -> list[float]:
    return [v for v in values if not math.isnan(v)]  # NaN: nothing to divide by


def _median(values: list[float]) -> float:
    present = _present(values)
    return statistics.median(present) if present else float("nan")


def summarize_rounds(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per concurrency level, in the order first seen: the number of rounds (and of those kept
    with a steal above the limit), the failed requests of its pairs, each ratio's median,
    minimum and maximum, and the median steal and rest of the machine's CPU of each side (None
    where unread)."""
    levels: dict[int, list[dict[str, Any]]] = {}
    for row in rows:
        levels.setdefault(row["concurrency"], []).append(row)
    out = []
    for concurrency, group in levels.items():
        entry: dict[str, Any] = {
            "concurrency": concurrency,
            "rounds": len(group),
            "stolen": sum(1 for r in group if r.get("stolen")),
            "errors": sum(r.get("errors", 0) for r in group),
        }
        for key in RATIOS:
            values = [r.get(key, math.nan) for r in group]
            present = _present(values)
            entry[key] = {
                "median": _median(values),
                "min": min(present) if present else float("nan"),
                "max": max(present) if present else float("nan"),
            }
        for side in ("in_process", "triton"):
            steals = [r[f"steal_{side}"] for r in group if r[f"steal_{side}"] is not None]
            entry[f"steal_{side}"] = round(statistics.median(steals), 1) if steals else None
            rests = [r[f"rest_{side}"] for r in group if r[f"rest_{side}"] is not None]
            entry[f"rest_{side}"] = round(statistics.median(rests), 1) if rests else None
            loops = [r[f"loop_{side}"] for r in group if r.get(f"loop_{side}")]
            entry[f"loop_{side}"] = (
                {k: round(statistics.median(t[k] for t in loops), 1) for k in loop_thread.SPLIT}
                if loops
                else None
            )
        out.append(entry)
    return out


def stolen(steals: tuple[float | None, float | None], max_steal: float | None) -> bool:
    """Whether either side's steal (percent; None where unread) is above ``max_steal``."""
    if max_steal is None:
        return False
    return any(value is not None and value > max_steal for value in steals)


def _steal(value: float | None) -> str:
    return "  – " if value is None else f"{value:>4.1f}"


def _rest(value: float | None) -> str:
    # One decimal, as ``not_quiet`` compares: a median of 5.4 is above the limit.
    return "–" if value is None else f"{value:.1f}%"


def not_quiet(summary: list[dict[str, Any]]) -> list[int]:
    """The levels where the rest of the machine used more than ``QUIET_REST_PCT`` of a core
    (median over the rounds) on either side."""
    return [
        e["concurrency"]
        for e in summary
        if any(
            e[f"rest_{side}"] is not None and e[f"rest_{side}"] > QUIET_REST_PCT
            for side in ("in_process", "triton")
        )
    ]


def _print_summary(summary: list[dict[str, Any]]) -> None:
    print(
        "median over the rounds (min–max): share of in-process output tokens/s; TPOT p50 / "
        "the static batch's ms per step; TPOT p50 / in-process TPOT p50; TTFT p50 minus "
        "in-process; core-ms per token / in-process; steal % and the rest of the machine's "
        "CPU, % of a core (in-process, Triton)"
    )
    for e in summary:
        s, st, tp, tt, cx = (e[k] for k in RATIOS[:5])
        print(
            f"{e['concurrency']:>4} x{e['rounds']:<3} share {s['median']:>5.0%} "
            f"({s['min']:.0%}–{s['max']:.0%})  step {st['median']:.2f}x "
            f"({st['min']:.2f}–{st['max']:.2f})  TPOT {tp['median']:.2f}x  "
            f"TTFT {tt['median']:+.1f}ms ({tt['min']:+.1f}–{tt['max']:+.1f})  "
            f"cpu {cx['median']:.2f}x  steal {_steal(e['steal_in_process'])}/"
            f"{_steal(e['steal_triton'])}  rest {_rest(e['rest_in_process'])}/"
            f"{_rest(e['rest_triton'])}"
            + (f"  ({e['stolen']} kept above the steal limit)" if e["stolen"] else "")
            + (f"  errors {e['errors']}" if e["errors"] else ""),
            flush=True,
        )
    print(
        "the share's two factors (median): the decode thread's time on a CPU / in-process, "
        "and its CPU per token / in-process (share = the first / the second); its wall time "
        "on a CPU / waiting for one / asleep, % (in-process; Triton)"
    )
    for e in summary:
        on, lc = e["loop_on_cpu_x"], e["loop_cpu_x"]
        print(
            f"{e['concurrency']:>4} x{e['rounds']:<3} on CPU {times_x(on['median'])} "
            f"({times_x(on['min'])}–{times_x(on['max'])})  CPU/token {times_x(lc['median'])} "
            f"({times_x(lc['min'])}–{times_x(lc['max'])})  loop "
            f"{loop_split(e['loop_in_process'])}; {loop_split(e['loop_triton'])}",
            flush=True,
        )
    busy = not_quiet(summary)
    if busy:
        print(
            f"the machine was not quiet at concurrency {', '.join(map(str, busy))}: other "
            f"processes used more than {QUIET_REST_PCT:g} % of a core (rest); the goals are "
            "for a quiet machine (docs/model.md, Round 21)",
            flush=True,
        )


def _pair_line(row: dict[str, Any], mine: LevelResult, theirs: LevelResult) -> str:
    return (
        f"{row['round']:>5} {row['concurrency']:>4} {row['first']:<10} "
        f"{mine.output_tokens_per_s:>12.1f} {theirs.output_tokens_per_s:>13.1f} "
        f"{row['share']:>6.0%} {row['tpot_step_x']:>9.2f}x "
        f"{row['ttft_extra_ms']:>+7.1f}ms {row['cpu_x']:>6.2f}x  "
        f"{_steal(mine.steal_pct)}/{_steal(theirs.steal_pct)}  "
        f"{rest_text(mine.rest_pct):>4}/{rest_text(theirs.rest_pct):<4} "
        f"{loop_split(mine.loop_thread):>8} {loop_split(theirs.loop_thread):>8}"
        + (f"  errors {row['errors']}" if row["errors"] else "")
        + ("  stolen" if row["stolen"] else "")
    )


def _worst_steal(row: dict[str, Any]) -> float:
    return max(v for v in (row["steal_in_process"], row["steal_triton"], 0.0) if v is not None)


def run_rounds(
    url: str,
    model: str,
    repository: Path,
    levels: list[int],
    max_tokens: int,
    requests_per_level: int | None,
    out: Path | None,
    rounds: int,
    shared_stream: bool = False,
    max_steal: float | None = None,
    event_loop: str = "auto",
) -> list[dict[str, Any]]:
    """``rounds`` alternated rounds of every level (see the module's docstring); prints each
    pair's comparison and the summary, writes both to ``out`` as JSON (also when the run stops
    part-way: ``complete`` false); returns the summary. With ``max_steal``, a pair whose either
    side lost more than that percentage of the CPU time to the hypervisor is measured again (at
    most ``ATTEMPTS`` tries); if every try is over, the one whose larger steal is the lowest is
    kept, marked ``stolen``; the others are in the JSON's ``discarded``."""
    if rounds < 1:
        raise ValueError("rounds must be at least 1")
    client_loop = event_loops.label(event_loop)  # Triton's client (``bench.run``)
    version = served_version(url, model, repository)  # the version Triton's requests reach
    tokenizer = load_tokenizer(version)
    prompts = [tokenizer.encode(p).ids for p in PROMPTS]
    print(
        f"{model} version {version.version}: in-process (this process) against Triton at "
        f"{url} ({_streams(shared_stream)}, client on {client_loop}), {rounds} rounds, "
        f"max_tokens {max_tokens}, "
        "temperature 0.8, top_p 0.95, streaming"
    )
    print(
        "round conc first     in-proc tok/s  Triton tok/s  share  TPOT/step  TTFT+     cpu x  "
        "steal %    rest %    decode thread on CPU/waiting/asleep % (in-proc, Triton)"
    )
    static = _scheduler(version.path, stop_at_eos=False)
    loop = _scheduler(version.path)
    static.start()
    loop.start()
    rows: list[dict[str, Any]] = []
    pairs: list[dict[str, Any]] = []
    discarded: list[dict[str, Any]] = []
    complete = False
    try:
        run_static(static, prompts, 1, 4)  # warm-up
        for number in range(1, rounds + 1):
            local_first = number % 2 == 1
            for level in levels:
                n = requests_per_level or max(16, 4 * level)

                def local(level: int = level, n: int = n) -> tuple[StaticResult, LevelResult]:
                    machine = cpu_times()  # the static batch's steal counts too
                    st = run_static(static, prompts, level, max_tokens)
                    mine = run_in_process_level(loop, prompts, level, n, max_tokens)
                    mine.steal_pct = stolen_pct(machine, cpu_times())
                    return st, mine

                def remote(level: int = level, n: int = n) -> LevelResult:
                    return event_loops.run(
                        run_level(
                            url, model, prompts, level, n, max_tokens, None, shared=shared_stream
                        ),
                        event_loop,
                    )

                tries: list[tuple[dict[str, Any], dict[str, Any]]] = []
                for _ in range(ATTEMPTS):
                    if local_first:
                        st, mine = local()
                        theirs = remote()
                    else:
                        theirs = remote()
                        st, mine = local()
                    row = compare(theirs, mine, st)
                    row.update(
                        round=number,
                        first="in-process" if local_first else "triton",
                        steal_in_process=mine.steal_pct,
                        steal_triton=theirs.steal_pct,
                        rest_in_process=mine.rest_pct,
                        rest_triton=theirs.rest_pct,
                        loop_in_process=mine.loop_thread,
                        loop_triton=theirs.loop_thread,
                        errors=theirs.errors + mine.errors,
                        stolen=stolen((mine.steal_pct, theirs.steal_pct), max_steal),
                    )
                    record = {
                        **row,
                        "in_process": dataclasses.asdict(mine),
                        "static": dataclasses.asdict(st),
                        "triton": dataclasses.asdict(theirs),
                    }
                    print(_pair_line(row, mine, theirs), flush=True)
                    tries.append((row, record))
                    if not row["stolen"]:
                        break
                kept = min(
                    range(len(tries)),
                    key=lambda i: (tries[i][0]["stolen"], _worst_steal(tries[i][0])),
                )
                if len(tries) > 1:
                    print(f"{'':>5} {level:>4} kept try {kept + 1} of {len(tries)}", flush=True)
                for i, (row, record) in enumerate(tries):
                    if i == kept:
                        rows.append(row)
                        pairs.append(record)
                    else:
                        discarded.append(record)
        complete = True
    finally:
        static.stop()
        loop.stop()
        summary = summarize_rounds(rows)
        if out is not None:
            payload = {
                "model": model,
                "version": version.version,
                "url": url,
                "max_tokens": max_tokens,
                "levels": levels,
                "requests_per_level": requests_per_level,
                "shared_stream": shared_stream,
                "event_loop": client_loop,
                "rounds": rounds,
                "max_steal": max_steal,
                "attempts": ATTEMPTS,
                "complete": complete,
                "pairs": pairs,
                "discarded": discarded,
                "summary": summary,
            }
            out.write_text(json.dumps(payload, indent=2), encoding="utf-8")
    _print_summary(summary)
    return summary
