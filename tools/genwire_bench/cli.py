"""``genwire bench``: flags, the progress bar, and the outputs (table, --json, --plot)."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from pathlib import Path
from typing import Any

from genwire.service import loop as event_loops
from genwire_bench.records import RequestRecord

DEFAULT_TARGETS = "triton,triton-stream,grpc,grpc-stream,kafka,kafka-stream"

EPILOG = """\
examples:
  genwire bench                              every target, 50 requests each, one at a time
  genwire bench --targets grpc,triton -c 1,4,8 --plot curve.png
                                             a concurrency sweep, latency against throughput
  genwire bench --rate 2,5 -n 100            open loop: Poisson arrivals at 2 and 5 requests/s
  genwire bench --json report.json -q        the full report as JSON, no progress bar
  genwire bench --targets kafka,grpc -c 8 --profile prof/
                                             py-spy on every service during each target's load:
                                             flame graphs and where the time goes (per service)
  genwire bench --scaling 1,2,3 -c 4 -n 120  the same load against 1, 2 and 3 instances of
                                             every stage (scales the stack, restores it after)

targets: triton and triton-stream go straight to Triton (the baseline); grpc and grpc-stream
call the gateway over gRPC; kafka and kafka-stream produce to genwire.requests and read the
results; openai-http and openai-http-stream POST /v1/completions (SSE when streamed), what an
OpenAI client sees. Exits 1 when no target could run, 2 when a request failed.

--scaling: for each count, `genwire up --scale` gateway, preprocess, inference and postprocess to
that many instances (Triton stays shared), wait for the consumer groups to rebalance, run the
load with a client on every gateway, and print throughput, p50/p99 and CPU per request of each
service summed over its instances, the gateway's on its own line; the layout that ran before is
restored afterwards. Targets: grpc (default), grpc-stream, kafka, kafka-stream."""


def _ints(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected integers like 1,4,8, got {text!r}") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError("concurrency values must be ≥ 1")
    return values


def _floats(text: str) -> list[float]:
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected numbers like 2,5.5, got {text!r}") from None
    if not values or min(values) <= 0:
        raise argparse.ArgumentTypeError("rates must be > 0")
    return values


def register(subparsers: Any) -> None:
    """Add ``genwire bench``."""
    p = subparsers.add_parser(
        "bench",
        help="benchmark the running pipeline against direct Triton, with per-hop latency",
        description="Send the same fixed prompt set (same token ids, sampling and seeds) through "
        "each entry point of the running stack and straight to Triton, then report throughput, "
        "latency percentiles, the pipeline's overhead, per-hop times from Jaeger and resources.",
        epilog=EPILOG,
    )
    p.add_argument(
        "--targets",
        default=None,
        help=f"comma-separated targets (default: {DEFAULT_TARGETS}; with --scaling: grpc)",
    )
    p.add_argument(
        "--scaling",
        type=_ints,
        default=None,
        metavar="N,...",
        help="scaling run: the same load against N instances of every stage, for each N "
        "(e.g. 1,2,3); scales the running stack itself and restores its layout afterwards",
    )
    p.add_argument(
        "--idle",
        type=float,
        default=5.0,
        metavar="S",
        help="with --scaling: seconds each step measures the services with no requests, the "
        "baseline of the CPU per request above idle (default 5)",
    )
    p.add_argument(
        "--concurrency",
        "-c",
        type=_ints,
        default=[1],
        metavar="N,...",
        help="closed loop: in-flight requests; a list sweeps (e.g. 1,2,4,8; default 1)",
    )
    p.add_argument(
        "--rate",
        type=_floats,
        default=[],
        metavar="R,...",
        help="open loop: Poisson arrival rate(s) in requests/s (replaces -c)",
    )
    p.add_argument(
        "--requests",
        "-n",
        type=int,
        default=50,
        help="measured requests per target and load (default 50)",
    )
    p.add_argument(
        "--warmup", type=int, default=5, help="unmeasured requests per target first (default 5)"
    )
    p.add_argument(
        "--rounds",
        type=int,
        default=2,
        help="split the requests into rounds, rotating the target order (default 2)",
    )
    p.add_argument("--max-tokens", type=int, default=32, help="tokens to generate (default 32)")
    p.add_argument(
        "--temperature",
        type=float,
        default=0.0,
        help="0 = greedy (default), so every target generates the same tokens",
    )
    p.add_argument(
        "--top-p", type=float, default=1.0, help="nucleus sampling mass (default 1.0: off)"
    )
    p.add_argument("--top-k", type=int, default=0, help="top-k sampling (default 0: off)")
    p.add_argument(
        "--seed", type=int, default=1234, help="base seed; request i uses seed+i (default 1234)"
    )
    p.add_argument("--model", default=None, help="model name (default: genwire-gpt)")
    p.add_argument(
        "--timeout", type=float, default=60.0, help="per-request timeout in seconds (default 60)"
    )
    p.add_argument("--no-traces", action="store_true", help="skip the per-hop breakdown")
    p.add_argument(
        "--unsampled",
        action="store_true",
        help="send every request with an unsampled trace context: the services honour the "
        "parent's decision and record no spans, so the run measures the pipeline without "
        "tracing's cost (implies --no-traces)",
    )
    p.add_argument(
        "--trace-sample",
        type=int,
        default=30,
        help="traces fetched per pipeline target and load (default 30)",
    )
    p.add_argument("--no-resources", action="store_true", help="skip CPU/RSS sampling")
    p.add_argument(
        "--profile",
        type=Path,
        default=None,
        metavar="DIR",
        help="attach py-spy to every genwire service (and the model's Triton stub) during each "
        "target's load; write a flame graph (SVG), speedscope file and collapsed stacks per "
        "service and target under DIR and print where the time goes (needs ptrace rights)",
    )
    p.add_argument(
        "--profile-rate",
        type=int,
        default=100,
        metavar="HZ",
        help="with --profile: samples per second (default 100)",
    )
    p.add_argument(
        "--json", type=Path, default=None, metavar="PATH", help="write the full report as JSON"
    )
    p.add_argument(
        "--plot",
        type=Path,
        default=None,
        metavar="PATH",
        help="write a PNG of latency against throughput (sweep -c for a curve)",
    )
    p.add_argument(
        "--event-loop",
        choices=event_loops.EVENT_LOOPS,
        default="auto",
        help="the client's event loop: auto (uvloop when installed, as the services run), "
        "asyncio or uvloop (default: auto); the report's header names the one it ran on",
    )
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bar")
    p.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    """Run the benchmark; exit 1 when no target could run, 2 when some request failed."""
    from tqdm import tqdm

    from genwire.errors import PermanentError
    from genwire.settings import CommonSettings
    from genwire_bench.records import SamplingSpec
    from genwire_bench.report import render, write_json, write_plot
    from genwire_bench.runner import TARGETS, BenchConfig, Runner
    from genwire_bench.scaling import SCALING_TARGETS
    from genwire_bench.served import measured_version
    from genwire_bench.tokenizer import load_model_inputs

    default = "grpc" if args.scaling else DEFAULT_TARGETS
    targets = [t.strip() for t in (args.targets or default).split(",") if t.strip()]
    allowed = SCALING_TARGETS if args.scaling else TARGETS
    unknown = [t for t in targets if t not in allowed]
    if unknown:
        print(
            f"unknown target(s) {', '.join(unknown)}; choose from {', '.join(allowed)}"
            + (" (a scaling run goes through the stages)" if args.scaling else ""),
            file=sys.stderr,
        )
        return 1
    if args.profile is not None:
        from genwire_bench.profile import py_spy

        # py-spy is started from the client's loop while its gRPC calls run; uvloop spawns
        # with fork(), so gRPC's fork handlers logged a line per py-spy ("Other threads are
        # currently calling into gRPC, skipping fork() handlers"). The child execs at once:
        # gRPC's advice for fork-then-exec is to turn the handlers off. Read at gRPC's start.
        os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")

        if args.scaling:
            print("--profile works with a normal run, not --scaling", file=sys.stderr)
            return 1
        if py_spy() is None:
            print("--profile needs py-spy (pip install py-spy)", file=sys.stderr)
            return 1
        if args.profile_rate < 1:
            print("--profile-rate must be ≥ 1", file=sys.stderr)
            return 1
        args.profile.mkdir(parents=True, exist_ok=True)
    try:
        event_loops.label(args.event_loop)  # uvloop asked for and not installed
    except RuntimeError as exc:
        print(f"--event-loop: {exc}", file=sys.stderr)
        return 1
    settings = CommonSettings()
    model = args.model or "genwire-gpt"
    # The version the pipeline serves now (its policy, else Triton's newest), not the
    # repository's newest: after a rollback the two differ, and direct Triton must match.
    measured = measured_version(
        model=model,
        targets=targets,
        triton_url=settings.triton_grpc_url,
        bootstrap_servers=settings.kafka_bootstrap_servers,
    )
    if measured.note:
        print(f"note: {measured.note}", file=sys.stderr)
    try:
        inputs = load_model_inputs(settings.repository, model, measured.version or None)
    except PermanentError as exc:
        hint = (
            f"the pipeline serves version {measured.version}: is {settings.repository} "
            "Triton's model repository? (GENWIRE_MODEL_REPOSITORY)"
            if measured.version
            else "is the model built? `make up`"
        )
        print(f"cannot tokenize the prompts: {exc.message} ({hint})", file=sys.stderr)
        return 1
    cfg = BenchConfig(
        targets=targets,
        concurrency=args.concurrency,
        rates=args.rate,
        requests=args.requests,
        warmup=args.warmup,
        rounds=args.rounds,
        sampling=SamplingSpec(
            max_tokens=args.max_tokens,
            temperature=args.temperature,
            top_p=args.top_p,
            top_k=args.top_k,
            seed=args.seed,
        ),
        model=model,
        model_version=inputs.version,
        stop_token_ids=inputs.stop_token_ids,
        triton_url=settings.triton_grpc_url,
        gateway_address=_gateway_address(),
        gateway_http_url=os.environ.get("GENWIRE_BENCH_GATEWAY_HTTP", "http://127.0.0.1:8080"),
        kafka_bootstrap=settings.kafka_bootstrap_servers,
        jaeger_url=settings.jaeger_ui_url,
        run_dir=settings.home.expanduser() / "run",
        timeout_s=args.timeout,
        traces=not args.no_traces and not args.scaling and not args.unsampled,
        trace_sample=args.trace_sample,
        sampled=not args.unsampled,
        resources=not args.no_resources,
        progress=not args.quiet,
        profile_dir=args.profile,
        profile_rate=args.profile_rate,
        event_loop=args.event_loop,
    )

    bar: Any = None
    runner: Runner

    def progress(label: str, record: RequestRecord | None) -> None:
        nonlocal bar
        if args.quiet:
            return
        if bar is None:
            bar = tqdm(
                total=runner.total_requests(runner.active),
                unit="req",
                file=sys.stderr,
                dynamic_ncols=True,
                disable=None,  # no bar when stderr is not a terminal (CI logs, pipes)
            )
        bar.set_description(label)
        if record is not None:
            bar.update(1)

    if args.scaling:
        return _scaling(args, cfg, inputs.tokenize)

    runner = Runner(cfg, inputs.tokenize, progress)
    try:
        report = event_loops.run(runner.run(), args.event_loop)
    finally:
        if bar is not None:
            bar.close()
    print(render(report))
    if report.profiles:
        from genwire_bench.profile import render_profiles

        print(
            render_profiles(
                report.profiles["phases"], report.profiles["missing"], report.profiles["root"]
            )
        )
    if args.json is not None:
        write_json(report, args.json)
        print(f"\nJSON report: {args.json}")
    if args.plot is not None:
        write_plot(report, args.plot)
        print(f"plot: {args.plot}")
    if not report.summaries:
        return 1
    return 2 if any(x.errors for x in report.summaries) else 0


def _scaling(args: argparse.Namespace, cfg: Any, tokenize: Any) -> int:
    """``--scaling``: one run per instance count (progress as lines, no bar); exit codes as a
    normal run's."""
    import json

    from genwire.settings import CommonSettings
    from genwire_bench.scaling import (
        current_instances,
        measure_idle,
        render_scaling,
        run_scaling,
        scaling_json,
        settle_groups,
        stack_scaler,
    )

    def say(line: str) -> None:
        print(f"genwire bench: {line}", file=sys.stderr, flush=True)

    bootstrap = CommonSettings().kafka_bootstrap_servers
    try:
        report = run_scaling(
            cfg,
            args.scaling,
            tokenize,
            scale=stack_scaler(say),
            settle=lambda n: asyncio.run(settle_groups(bootstrap, n)),
            restore=current_instances(),
            out=say,
            idle=lambda: asyncio.run(measure_idle(cfg.run_dir, args.idle)),
        )
    except Exception as exc:  # StackError, a group that never settled: one line, not a trace
        print(f"genwire bench --scaling: error: {exc}", file=sys.stderr)
        return 1
    print(render_scaling(report))
    if args.json is not None:
        args.json.write_text(json.dumps(scaling_json(report), indent=2) + "\n", encoding="utf-8")
        print(f"\nJSON report: {args.json}")
    summaries = [x for step in report.steps for x in step.summaries]
    if not summaries:
        return 1
    return 2 if any(x.errors for x in summaries) else 0


def _gateway_address() -> str:
    """The gateway's gRPC address (its settings when the gateway package is installed)."""
    import os

    return os.environ.get("GENWIRE_BENCH_GATEWAY_GRPC", "127.0.0.1:50051")
