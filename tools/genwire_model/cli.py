"""``genwire model ...``: train the default model, build repository versions, benchmark."""

from __future__ import annotations

import argparse
import contextlib
import logging
import math
import signal
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from genwire.service.loop import EVENT_LOOPS
from genwire_model import DEFAULT_MODEL_NAME

log = logging.getLogger(__name__)


def register(subparsers: Any) -> None:
    """Add ``genwire model`` and its subcommands."""
    model = subparsers.add_parser(
        "model",
        help="train, build and benchmark the model",
        description="Make the models Triton serves: train the small default model, build a "
        "repository version from a Hugging Face checkpoint (ONNX, and a TensorRT engine where a "
        "GPU allows), serve versions and route traffic between them (docs/lifecycle.md), and "
        "measure one straight against Triton.",
    )
    sub = model.add_subparsers(
        dest="model_command",
        required=True,
        metavar="{train,build,ensure,load,unload,list,show,route,promote,rollback,policy,bench}",
    )

    train = sub.add_parser(
        "train",
        help="train (or reuse) the default model checkpoint",
        description="Train the default model's checkpoint on a small text corpus, or reuse the "
        "one already trained; prints its held-out loss against a unigram baseline.",
    )
    train.add_argument("--force", action="store_true", help="retrain even if cached")
    train.add_argument(
        "--corpus", type=Path, nargs="+", help="text files or folders instead of the default"
    )
    train.add_argument("--steps", type=int, help="training steps (default: the built-in)")
    train.set_defaults(func=_train)

    build = sub.add_parser(
        "build",
        help="add a version built from an HF checkpoint",
        description="Add a new version of a model to the Triton model repository, built from a "
        "Hugging Face checkpoint folder, and check its outputs against the checkpoint's.",
    )
    build.add_argument("--checkpoint", type=Path, required=True, help="HF checkpoint folder")
    build.add_argument(
        "--name",
        default=DEFAULT_MODEL_NAME,
        help=f"model name in Triton (default: {DEFAULT_MODEL_NAME})",
    )
    build.add_argument("--repository", type=Path, help="default: the settings' repository")
    build.add_argument(
        "--tensorrt",
        choices=["auto", "on", "off"],
        default="auto",
        help="build a TensorRT engine (auto: when a GPU and tensorrt exist)",
    )
    build.add_argument(
        "--max-batch", type=int, default=32, help="sequences decoded together (default: 32)"
    )
    build.add_argument(
        "--max-context",
        "--context",
        dest="context",
        type=int,
        help="cap the context window (default: the model's); bounds the TensorRT profiles' memory",
    )
    build.add_argument(
        "--stream-interval", type=int, default=1, help="tokens per streamed response (default: 1)"
    )
    build.add_argument(
        "--intra-op-threads",
        type=int,
        help="ONNX Runtime's threads per decode step (default: 1, the fastest on 2 vCPUs "
        "shared with the services; more where the model has cores of its own)",
    )
    build.add_argument(
        "--quantize",
        choices=["off", "int8", "fp8"],
        default="off",
        help="int8: quantize the ONNX model (ONNX Runtime dynamic INT8) and, on a GPU with "
        "TensorRT and nvidia-modelopt, build a TensorRT INT8 engine; fp8: a TensorRT FP8 "
        "engine (GPU of compute capability >= 8.9). Prints size, speed and held-out loss "
        "against the FP32 graph (default: off)",
    )
    build.add_argument(
        "--onnxruntime-graph",
        choices=["fused", "portable"],
        default="fused",
        help="fused: ONNX Runtime serves a copy of the graph with its transformer fusions "
        "(layer norms, GELU, constant reshapes: model.ort.onnx, validated against the "
        "checkpoint like model.onnx); portable: it serves model.onnx, the graph TensorRT "
        "builds from (default: fused)",
    )
    build.add_argument(
        "--load", action="store_true", help="then serve it (as `genwire model load`)"
    )
    build.set_defaults(func=_build)

    ensure = sub.add_parser(
        "ensure",
        help="train and build the default model if needed",
        description="Make sure the default model has a version in the repository: train and "
        "build it when it has none; prints the version.",
    )
    ensure.set_defaults(func=_ensure)

    from genwire_model import lifecycle_cli

    lifecycle_cli.register(sub)  # load, unload, list, show, route, promote, rollback, policy

    bench = sub.add_parser(
        "bench",
        help="requests/s, tokens/s, TTFT, TPOT straight to Triton",
        description="Measure the model straight against Triton, without the pipeline: requests "
        "and tokens per second, time to first token and time per output token at each "
        "concurrency level.",
    )
    bench.add_argument("--url", help="Triton gRPC host:port (default: the settings')")
    bench.add_argument(
        "--name",
        help=f"model name (default: {DEFAULT_MODEL_NAME}; not with --floor, whose echo model "
        "is its own)",
    )
    bench.add_argument("--repository", type=Path, help="default: the settings' repository")
    bench.add_argument(
        "--concurrency",
        type=int,
        nargs="+",
        default=[1, 8, 32],
        help="requests in flight, one level after another (default: 1 8 32)",
    )
    bench.add_argument(
        "--max-tokens", type=int, default=64, help="tokens to generate per request (default: 64)"
    )
    bench.add_argument("--requests", type=int, help="requests per level (default 4 x conc)")
    bench.add_argument("--out", type=Path, help="also write the figures as JSON")
    bench.add_argument(
        "--in-process",
        action="store_true",
        help="first run the same graph, scheduler and sampler in this process (the ceiling: "
        "no Triton, no gRPC) and print Triton's figures as a share of it",
    )
    bench.add_argument(
        "--floor",
        action="store_true",
        help="instead, measure Triton's streaming cost with no model: a throwaway echo model "
        "(the model's response path, one token per response), the same client and levels; "
        "responses/s, TTFT and core-ms per response and per request",
    )
    bench.add_argument(
        "--shared-stream",
        action="store_true",
        help="send every request of a level on one gRPC stream, rotated every second (how "
        "the inference service talks to Triton) instead of one stream per request",
    )
    bench.add_argument(
        "--event-loop",
        choices=EVENT_LOOPS,
        default="auto",
        help="the client's event loop: auto (uvloop when installed, as the services run), "
        "asyncio or uvloop (default: auto)",
    )
    bench.add_argument(
        "--response-gap-ms",
        type=float,
        default=0.0,
        metavar="MS",
        help="every request asks for its streamed responses at least MS apart (request "
        "parameter genwire_min_response_gap_ms, what the inference service sets from its chunk "
        "budget); the table is followed by the responses per request (default: 0, not asked; "
        "not with --in-process, --rounds or --floor)",
    )
    bench.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="with --in-process: measure the ceiling and Triton back to back, level by level, "
        "this many times (the side that goes first alternates: an even number balances it) and "
        "print each ratio's median and range over the rounds, with the hypervisor's steal "
        "(default: 1, one pass each)",
    )
    bench.add_argument(
        "--max-steal",
        type=float,
        metavar="PERCENT",
        help="with --in-process: measure a level's pair again (at most 3 tries) when the "
        "hypervisor took more than this share of the CPU time during either side (steal in "
        "/proc/stat); the pairs measured again are in the JSON, the summary counts the ones "
        "kept above it",
    )
    bench.set_defaults(func=_bench)


def _settings() -> Any:
    from genwire.settings import CommonSettings

    return CommonSettings()


def _progress(message: str) -> None:
    print(f"model: {message}", flush=True)


def _train(args: argparse.Namespace) -> int:
    from genwire_model.train import TrainConfig, ensure_checkpoint

    config = TrainConfig(steps=args.steps) if args.steps else TrainConfig()
    with _sigterm_exits():
        result = ensure_checkpoint(
            _settings().home, config, args.corpus, force=args.force, progress=_progress
        )
    print(
        f"checkpoint {result.path}\n"
        f"held-out loss {result.heldout_loss:.3f} nats/token, "
        f"unigram baseline {result.unigram_loss:.3f} nats/token"
        + ("" if result.trained else " (cached)")
    )
    return 0


@contextlib.contextmanager
def _sigterm_exits() -> Iterator[None]:
    """SIGTERM raises SystemExit meanwhile, so ``finally`` blocks (a build's staging folder,
    train's temporary one) clean up as on Ctrl-C; Python's default just ends the process."""

    def _exit(signum: int, _frame: Any) -> None:
        raise SystemExit(128 + signum)

    if threading.current_thread() is not threading.main_thread():
        yield  # signal handlers can only be set from the main thread
        return
    previous = signal.signal(signal.SIGTERM, _exit)
    try:
        yield
    finally:  # (None: a handler not set from Python; the default stands in for it)
        signal.signal(signal.SIGTERM, signal.SIG_DFL if previous is None else previous)


def _build(args: argparse.Namespace) -> int:
    from genwire_model.build import BuildError, BuildOptions, build_version
    from genwire_model.checkpoint import CheckpointError
    from genwire_model.export import ExportError

    repository = args.repository or _settings().repository
    threads = args.intra_op_threads
    if threads is None:
        threads = BuildOptions.intra_op_threads
    if threads < 1:
        print("genwire model build: --intra-op-threads must be at least 1", file=sys.stderr)
        return 2
    options = BuildOptions(
        max_batch=args.max_batch,
        context=args.context,
        tensorrt=args.tensorrt,
        intra_op_threads=threads,
        stream_interval=args.stream_interval,
        quantize=args.quantize,
        onnxruntime_graph=args.onnxruntime_graph,
    )
    try:
        with _sigterm_exits():
            version = build_version(args.checkpoint, args.name, repository, options, _progress)
    except (CheckpointError, BuildError, ExportError) as exc:
        print(f"genwire model build: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # a full disk, a read-only repository, an unreadable checkpoint,
        # a connection: one line naming what failed, not a traceback
        where = f" ({exc.filename})" if exc.filename is not None else ""
        print(f"genwire model build: {exc.strerror or exc}{where}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # the build's staging folder is already removed
        print("genwire model build: interrupted; nothing was added", file=sys.stderr)
        return 130
    print(f"{args.name} version {version.version} at {version.path}")
    if args.load:
        from genwire_model.lifecycle_cli import load_built

        return load_built(args, args.name, str(version.version))
    return 0


def _ensure(args: argparse.Namespace) -> int:
    from genwire_model.default import ensure_default_model

    with _sigterm_exits():
        version = ensure_default_model(_settings(), _progress)
    print(f"{DEFAULT_MODEL_NAME} version {version}")
    return 0


def _bench(args: argparse.Namespace) -> int:
    from genwire.service import loop as event_loops
    from genwire_model.bench import run, run_floor

    if args.rounds < 1:
        raise SystemExit("genwire model bench: --rounds must be at least 1")
    rounds = args.rounds > 1 or args.max_steal is not None
    if rounds and (args.floor or not args.in_process):
        raise SystemExit(
            "genwire model bench: --rounds and --max-steal compare the in-process ceiling "
            "with Triton: they need --in-process and do not apply to --floor"
        )
    if args.max_steal is not None and not 0 <= args.max_steal <= 100:
        raise SystemExit("genwire model bench: --max-steal is a percentage, 0 to 100")
    if args.floor and (args.in_process or args.name is not None):
        raise SystemExit(
            "genwire model bench: --floor measures a throwaway echo model alone: --in-process "
            "and --name do not apply to it"
        )
    if args.response_gap_ms != 0 and (args.in_process or rounds or args.floor):
        raise SystemExit(
            "genwire model bench: --response-gap-ms measures the served model's responses: "
            "--in-process, --rounds, --max-steal and --floor do not apply to it"
        )
    if not math.isfinite(args.response_gap_ms) or args.response_gap_ms < 0:
        raise SystemExit("genwire model bench: --response-gap-ms must be a finite number >= 0")
    if min(args.concurrency) < 1 or (args.requests is not None and args.requests < 1):
        raise SystemExit("genwire model bench: --concurrency and --requests must be at least 1")
    if args.max_tokens < 1:  # per-token figures divide by it
        raise SystemExit("genwire model bench: --max-tokens must be at least 1")
    try:
        event_loops.label(args.event_loop)  # uvloop asked for and not installed
    except RuntimeError as exc:
        raise SystemExit(f"genwire model bench: --event-loop: {exc}") from exc
    name = args.name or DEFAULT_MODEL_NAME
    settings = _settings()
    # What the model bench and its rounds both take: where, which model, levels and output.
    target = (
        args.url or settings.triton_grpc_url,
        name,
        args.repository or settings.repository,
        args.concurrency,
        args.max_tokens,
        args.requests,
        args.out,
    )
    if rounds:
        from genwire_model.bench_rounds import run_rounds

        run_rounds(
            *target,
            args.rounds,
            shared_stream=args.shared_stream,
            max_steal=args.max_steal,
            event_loop=args.event_loop,
        )
        return 0
    if args.floor:
        from genwire import triton_admin

        run_floor(
            args.url or settings.triton_grpc_url,
            settings.triton_http_url,
            args.repository or settings.repository,
            args.concurrency,
            args.max_tokens,
            args.requests,
            args.out,
            headers=triton_admin.headers(settings),
            shared_stream=args.shared_stream,
            event_loop=args.event_loop,
        )
        return 0
    run(
        *target,
        in_process=args.in_process,
        shared_stream=args.shared_stream,
        min_gap_ms=args.response_gap_ms,
        event_loop=args.event_loop,
    )
    return 0
