"""Two versions' in-process decode loops against each other, in alternated rounds.

``python -m genwire_model.bench_versions --name genwire-gpt 3 4``: the before and after of a
change to a version's graph or its build options, without Triton (``genwire model bench
--in-process`` gives one version's ceiling and Triton's share of it). Both versions run on
*this checkout's* runtime (``genwire_model.runtime``), not the copy each carries for Triton, so
a change to the runtime alone shows here only as the checkout before and after it; the report
says when the versions were built with other runtime code than this one. Each version gets the
scheduler settings it would get in Triton (its ``config.pbtxt``) and the bench's prompts and
sampling; per round and level each runs a static batch (every request to ``--max-tokens``; its
time per token includes the prefill) and the closed loop, one version first in odd rounds and
the other in even ones, because a virtual machine's speed drifts between minutes by more than
most changes (docs/model.md, *Round 8*). The table gives each version's median and range over
the rounds and the steal each saw.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path
from typing import Any

from genwire_model.bench import PROMPTS, _scheduler, run_in_process_level, run_static
from genwire_model.repository import ModelRepository, ModelVersion, load_tokenizer

FIGURES = (
    ("tok/s", "output_tokens_per_s", 0),
    ("TPOT p50", "tpot_ms_p50", 3),
    ("TTFT p50", "ttft_ms_p50", 2),
    ("static ms/step", "static_ms_per_step", 3),
    ("pass ms/step", "pass_ms", 3),
    ("sampling ms/step", "sampling_ms", 3),
)
"""(column, figure, decimals) of the table."""


def measure(
    versions: dict[str, ModelVersion],
    levels: list[int],
    rounds: int,
    requests: int,
    max_tokens: int,
) -> dict[str, dict[int, list[dict[str, Any]]]]:
    """Per version label and level, one dict of figures per round (the first version's
    tokenizer encodes the prompts for both: the same token ids in)."""
    tokenizer = load_tokenizer(next(iter(versions.values())))
    prompts = [tokenizer.encode(p).ids for p in PROMPTS]
    loops: dict[str, Any] = {}
    statics: dict[str, Any] = {}
    try:
        for label, version in versions.items():
            loops[label] = _scheduler(version.path)
            loops[label].start()
            statics[label] = _scheduler(version.path, stop_at_eos=False)
            statics[label].start()
            run_static(statics[label], prompts, 1, 4)  # warm-up, both loops
            run_in_process_level(loops[label], prompts, 1, 2, 4)
        out: dict[str, dict[int, list[dict[str, Any]]]] = {
            label: {level: [] for level in levels} for label in versions
        }
        labels = list(versions)
        for number in range(rounds):
            order = labels if number % 2 == 0 else labels[::-1]
            for level in levels:
                for label in order:
                    static = run_static(statics[label], prompts, level, max_tokens)
                    loop = run_in_process_level(
                        loops[label], prompts, level, max(requests, 4 * level), max_tokens
                    )
                    times = loop.loop or {}
                    out[label][level].append(
                        {
                            "output_tokens_per_s": loop.output_tokens_per_s,
                            "tpot_ms_p50": loop.tpot_ms_p50,
                            "ttft_ms_p50": loop.ttft_ms_p50,
                            "static_ms_per_step": static.ms_per_step,
                            "pass_ms": times.get("pass_ms", float("nan")),
                            "sampling_ms": times.get("sampling_ms", float("nan")),
                            "steal_pct": loop.steal_pct,
                            "errors": loop.errors,
                        }
                    )
        return out
    finally:
        for scheduler in (*loops.values(), *statics.values()):
            scheduler.stop()


def runtime_notes(versions: dict[str, ModelVersion]) -> dict[str, str]:
    """Per version whose manifest's runtime digest is not this checkout's: which it has (the
    comparison then runs this checkout's runtime over that version's graph, not its own)."""
    from genwire_model.build import runtime_digest

    here = runtime_digest()
    notes = {}
    for label, version in versions.items():
        built = str(version.manifest.get("build", {}).get("runtime_sha256", ""))
        if built != here:
            notes[label] = f"runtime_sha256 {built[:12] or 'unrecorded'}, here {here[:12]}"
    return notes


def table(results: dict[str, dict[int, list[dict[str, Any]]]]) -> list[str]:
    """One line per level and version: each figure's median [min–max] over the rounds."""
    lines = []
    head = " ".join(f"{name:>22}" for name, _, _ in FIGURES)
    lines.append(f"{'conc':>4} {'version':>8} {head} {'steal %':>8} {'err':>4}")
    levels = next(iter(results.values()))
    for level in levels:
        for label, per_level in results.items():
            rows = per_level[level]
            cells = []
            for _, key, places in FIGURES:
                values = [r[key] for r in rows]
                low, mid, high = min(values), statistics.median(values), max(values)
                cells.append(f"{mid:.{places}f} [{low:.{places}f}–{high:.{places}f}]".rjust(22))
            steal = max((r["steal_pct"] or 0.0) for r in rows)
            errors = sum(r["errors"] for r in rows)
            lines.append(f"{level:>4} {label:>8} {' '.join(cells)} {steal:>8.1f} {errors:>4}")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m genwire_model.bench_versions", description=(__doc__ or "").split("\n\n")[0]
    )
    parser.add_argument("versions", nargs=2, type=int, help="the two versions (before, after)")
    parser.add_argument("--name", default="genwire-gpt", help="model name (default: genwire-gpt)")
    parser.add_argument("--repository", type=Path, default=None, help="default: the settings'")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--rounds", type=int, default=4, help="alternated rounds (default 4)")
    parser.add_argument("--requests", type=int, default=64, help="per level (at least 4 x conc)")
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--out", type=Path, default=None, help="also write the figures as JSON")
    args = parser.parse_args(argv)
    if min(args.rounds, args.requests, args.max_tokens, *args.concurrency) < 1:
        parser.error("--rounds, --requests, --max-tokens and --concurrency must be at least 1")
    if args.versions[0] == args.versions[1]:
        parser.error("name two different versions")
    repository = args.repository
    if repository is None:
        from genwire.settings import CommonSettings

        repository = CommonSettings().repository
    repo = ModelRepository(repository)
    versions = {f"v{v}": repo.get(args.name, v) for v in args.versions}
    for label, note in runtime_notes(versions).items():
        print(f"note: {label} was built with other runtime code than this checkout's ({note})")
    results = measure(versions, args.concurrency, args.rounds, args.requests, args.max_tokens)
    print(
        f"{args.name} versions {args.versions[0]} and {args.versions[1]} in process, "
        f"{args.rounds} alternated rounds, {args.max_tokens} tokens, T 0.8, top-p 0.95 "
        "(median [min–max]; ms except tok/s):"
    )
    print("\n".join(table(results)))
    if args.out is not None:
        args.out.write_text(json.dumps(results, indent=2), encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
