"""``genwire bench --profile DIR``: py-spy attached to every genwire service while each target's
load runs, and where the samples go.

While a phase (one target under one load, one round) runs, one ``py-spy record --format raw``
samples each process of the stack's genwire services (the pids its supervisors record: gateway,
preprocess, inference, postprocess, monitor, and scaled instances ``gateway-2``…) and the Triton
Python-backend stub that serves the benchmarked model (``triton-model``: the model's own Python).
py-spy runs in its default blocking mode (it pauses the process for each sample: exact stacks;
``--nonblocking`` reads them while the process runs and mixes frames of different moments) with
``--idle``: every thread is sampled ``rate`` times a second, and the samples whose leaf is a
known wait (:data:`WAITS`: the event loop's ``epoll``, ``Condition.wait``, an idle executor
worker…) are counted apart as *waiting*; the rest are a thread busy running Python (or in a
syscall or C call made from it, or waiting for the GIL or a core), so busy samples ÷ rate ≈ the
service's CPU seconds. Why not py-spy's own filters: on this machine its idle detection counted
~45 % of the samples of a process that only waits as active, and ``--gil`` counted 151 samples
(1.5 s) in 5 s of an idle service that used 0.17 CPU-s — while ``--idle`` with the leaf filter
counted 13 busy samples against 13 ticks (0.13 s) of CPU. A C call that blocks without a Python
frame of its own (``time.sleep``, ``SimpleQueue.get`` outside :data:`WAITS`) shows as its caller
busy.
It needs ptrace rights over the services (root, or ``CAP_SYS_PTRACE``, or
``kernel.yama.ptrace_scope`` 0 and the same user).

Per phase and service the folder gets ``<service>.collapsed.txt`` (py-spy's raw output, the
rounds merged: one ``frame;frame;… count`` line per stack, root first), ``<service>.svg`` (a flame
graph, coloured by bucket) and ``<service>.speedscope.json`` (open it in https://speedscope.app).

Buckets
-------
Each sample is charged to one *bucket* that answers "where do a request's core-milliseconds go"
(:data:`BUCKETS`, matched on a frame's module path: the file path from its package on, e.g.
``aiokafka/consumer/fetcher.py``):

1. A *claiming* bucket (tracing, metrics, logging, the model) takes the whole sample when any of
   its frames is on the stack: everything tracing calls (protobuf encoding, the exporter's own
   Kafka producer) is the cost of tracing.
2. Otherwise the stack is walked from the leaf towards the root, within the running task or
   callback (the walk stops at the event loop's dispatch frames and a thread's bootstrap): the
   first frame of a *specific* bucket (Kafka client, encode/decode, gRPC, HTTP, Redis, Triton
   client, tokenizer, the service's handlers, genwire's Kafka wrappers, the rest of genwire)
   takes it. Generic frames (asyncio, threading, sockets, contextlib, typing…) are skipped: an
   ``asyncio.Future`` made inside aiokafka is aiokafka's cost.
3. A sample with no specific frame in its task goes to its leaf's generic bucket: the asyncio
   event loop itself (scheduling, selector polling), threads and locks, sockets, other stdlib.
"""

from __future__ import annotations

import asyncio
import contextlib
import html
import json
import re
import shutil
import signal
import sys
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Protocol

Stack = tuple[str, ...]
"""One sampled stack, root first; each frame as py-spy writes it: ``func (path:line)``."""


@dataclass(frozen=True)
class Bucket:
    """A group of modules a sample can be charged to."""

    name: str
    prefixes: tuple[str, ...]
    """Module-path prefixes (``aiokafka/``, ``json/``, ``selectors.py``)."""
    kind: str = "specific"
    """``claim`` (takes the sample from anywhere on the stack), ``specific`` (nearest the leaf
    wins) or ``generic`` (only when nothing specific is in the task: the leaf's)."""
    colour: str = "#c8c8c8"


BUCKETS: tuple[Bucket, ...] = (
    # Claiming buckets: the cost of everything they call.
    Bucket(
        "tracing (OpenTelemetry, span export)",
        ("opentelemetry/", "genwire/telemetry/"),
        "claim",
        "#b388eb",
    ),
    Bucket(
        "metrics (prometheus_client)",
        ("prometheus_client/", "genwire/metrics.py"),
        "claim",
        "#f7aef8",
    ),
    Bucket("logging", ("logging/",), "claim", "#d4a373"),
    Bucket(
        "model (Triton Python backend: runtime, ONNX Runtime)",
        ("model/", "onnxruntime/", "triton_python_backend_utils"),
        "claim",
        "#e63946",
    ),
    # Specific buckets: the nearest to the leaf wins.
    Bucket("Kafka client (aiokafka)", ("aiokafka/", "kafka/"), "specific", "#2a9d8f"),
    Bucket("genwire Kafka wrappers (genwire.kafka)", ("genwire/kafka/",), "specific", "#8ecae6"),
    Bucket(
        "encode/decode (JSON, pydantic, protobuf)",
        (
            "json/",
            "orjson/",
            "msgspec/",
            "pydantic/",
            "pydantic_core/",
            "google/protobuf/",
            "genwire/proto/",
        ),
        "specific",
        "#ffb703",
    ),
    Bucket(
        "gRPC (grpcio server and client)",
        ("grpc/", "grpc_health/", "grpc_reflection/"),
        "specific",
        "#219ebc",
    ),
    Bucket(
        "HTTP (uvicorn, starlette, FastAPI, aiohttp)",
        (
            "uvicorn/",
            "starlette/",
            "fastapi/",
            "aiohttp/",
            "h11/",
            "httptools/",
            "anyio/",
            "httpx/",
            "httpcore/",
        ),
        "specific",
        "#90be6d",
    ),
    Bucket("Redis (redis-py)", ("redis/", "genwire/redisconn.py"), "specific", "#d62828"),
    Bucket(
        "Triton client (tritonclient, genwire.triton_io)",
        ("tritonclient/", "genwire/triton_io.py"),
        "specific",
        "#f77f00",
    ),
    Bucket(
        "tokenizer (tokenizers, transformers)",
        ("tokenizers/", "transformers/", "genwire/tokenization.py"),
        "specific",
        "#6a994e",
    ),
    Bucket(
        "service handlers (genwire_<service>)",
        (
            "genwire_gateway/",
            "genwire_preprocess/",
            "genwire_inference/",
            "genwire_postprocess/",
            "genwire_monitor/",
        ),
        "specific",
        "#fb8500",
    ),
    Bucket("genwire runtime (other genwire/)", ("genwire/",), "specific", "#023047"),
    # Generic buckets: charged only when the task has nothing specific; also skipped in the walk.
    Bucket(
        "asyncio event loop (scheduling, polling)",
        ("asyncio/", "selectors.py", "uvloop/"),
        "generic",
        "#adb5bd",
    ),
    Bucket(
        "threads, locks, queues", ("threading.py", "queue.py", "concurrent/"), "generic", "#ced4da"
    ),
    Bucket("sockets, TLS", ("socket.py", "ssl.py"), "generic", "#dee2e6"),
    Bucket(
        "other Python (stdlib helpers)",
        (
            "contextlib.py",
            "functools.py",
            "typing.py",
            "abc.py",
            "enum.py",
            "dataclasses.py",
            "copy.py",
            "collections/",
            "weakref.py",
            "_weakrefset.py",
            "<frozen",
            "uuid.py",
            "random.py",
            "inspect.py",
            "base64.py",
            "struct.py",
            "time.py",
            "traceback.py",
            "linecache.py",
            "re/",
            "string.py",
        ),
        "generic",
        "#e9ecef",
    ),
)
"""The mapping from module paths to buckets, in precedence order (docs/benchmarks.md lists it)."""

OTHER = "other (unmatched modules)"
"""A sample whose leaf matches no bucket and whose task has no specific frame."""

_BOUNDARY = (
    "asyncio/base_events.py",
    "asyncio/events.py",
    "asyncio/runners.py",
    "threading.py",
    "<frozen runpy>",
)
"""Where a task or thread's own frames end (the walk from the leaf stops there)."""

WAITS: frozenset[str] = frozenset(
    {
        "EpollSelector.select (selectors.py)",
        "PollSelector.select (selectors.py)",
        "SelectSelector.select (selectors.py)",
        "DevpollSelector.select (selectors.py)",
        "Condition.wait (threading.py)",
        "Event.wait (threading.py)",
        "Semaphore.acquire (threading.py)",
        "Thread.join (threading.py)",
        "Thread._wait_for_tstate_lock (threading.py)",
        "_worker (concurrent/futures/thread.py)",
        "Queue.get (queue.py)",
        # A thread whose target is a C function (grpc's completion-queue poller) shows as
        # Thread.run alone; it blocks in C (py-spy dump marks it idle).
        "Thread.run (threading.py)",
        # The model's outbox thread blocks on a queue in C at one line of its loop.
        "_Outbox._run (model/model.py)",
        # uvloop (the services' loop) runs in C below asyncio.Runner.run: with no Python frame
        # above it, the thread is in uvloop's epoll_pwait, or, rarely, its own C scheduling
        # (py-spy --native on preprocess under load: 899 of 907 such samples were epoll_pwait).
        # On asyncio's own loop Runner.run is never the leaf: its loop is Python.
        "Runner.run (asyncio/runners.py)",
    }
)
"""Leaf frames of a thread that waits (a blocking call in C below them): not CPU. A busy C call
at the same leaf (rare: these frames only call the blocking function) is counted as waiting."""

_LOOP_START = ("asyncio/", "threading.py")

_TASK_START = ("Handle._run (", "Thread.run (")

_FRAME = re.compile(r"^(?P<func>.*) \((?P<path>.*?)(?::(?P<line>\d+))?\)$")
_STDLIB = re.compile(r".*/lib/python3\.\d+/(?:(?:site|dist)-packages/)?")
_MODEL = re.compile(r".*/models?/repository/[^/]+/[0-9]+/")
_GENWIRE = re.compile(r".*?/(?=genwire(?:_[a-z]+)?/)")


def module_path(path: str) -> str:
    """A frame's file from its package on: ``…/site-packages/aiokafka/conn.py`` →
    ``aiokafka/conn.py``; a model version's files (``…/repository/<model>/<v>/x.py``) →
    ``model/x.py``; genwire's own (``/work/main/services/gateway/genwire_gateway/app.py``) →
    ``genwire_gateway/app.py``."""
    if _MODEL.match(path):
        return "model/" + _MODEL.sub("", path, count=1)
    if _STDLIB.match(path):
        return _STDLIB.sub("", path, count=1)
    if _GENWIRE.match(path):
        return _GENWIRE.sub("", path, count=1)
    return path.rsplit("/", 1)[-1] if path.startswith("/") else path


def frame_name(frame: str) -> str:
    """A frame without its line number, its file shortened: ``Fetcher._fetch (aiokafka/…)``."""
    match = _FRAME.match(frame)
    if match is None:
        return frame
    return f"{match['func']} ({module_path(match['path'])})"


def _module_of(frame: str) -> str:
    match = _FRAME.match(frame)
    return module_path(match["path"]) if match else frame


def _structural(frame: str) -> bool:
    return _module_of(frame).startswith(_BOUNDARY) or frame.startswith("<module> (")


def _bucket_of_module(module: str) -> Bucket | None:
    for bucket in BUCKETS:
        if module.startswith(bucket.prefixes):
            return bucket
    return None


def bucket_of(stack: Stack) -> str:
    """The bucket one sample is charged to (the rules in the module's docstring)."""
    modules = [_module_of(f) for f in stack]
    matched = [_bucket_of_module(m) for m in modules]
    for bucket in matched:  # root first: the outermost claiming frame takes it
        if bucket is not None and bucket.kind == "claim":
            return bucket.name
    for i in range(len(modules) - 1, -1, -1):
        if i < len(modules) - 1 and modules[i].startswith(_BOUNDARY):
            break
        bucket = matched[i]
        if bucket is not None and bucket.kind == "specific":
            return bucket.name
    leaf = matched[-1] if matched else None
    return leaf.name if leaf is not None else OTHER


def parse_collapsed(text: str) -> Counter[Stack]:
    """py-spy's ``--format raw`` (collapsed stacks: ``root;…;leaf count`` per line)."""
    stacks: Counter[Stack] = Counter()
    for line in text.splitlines():
        stack, _, count = line.rstrip().rpartition(" ")
        if not stack or not count.isdigit():
            continue
        stacks[tuple(stack.split(";"))] += int(count)
    return stacks


def write_collapsed(stacks: Mapping[Stack, int], path: Path) -> None:
    """``stacks`` in the collapsed format :func:`parse_collapsed` reads."""
    lines = [f"{';'.join(s)} {n}" for s, n in sorted(stacks.items())]
    path.write_text("\n".join(lines) + ("\n" if lines else ""), encoding="utf-8")


@dataclass(frozen=True)
class Share:
    """Samples of one bucket or frame and their share of the service's samples."""

    name: str
    samples: int
    share: float
    core_ms_per_request: float | None = None


@dataclass
class ServiceProfile:
    """What the profile says about one service during one phase."""

    service: str
    phase: str
    samples: int
    """Busy samples (a thread not in a :data:`WAITS` frame); buckets and tables count these."""
    rate_hz: int
    requests: int
    measured_core_ms_per_request: float | None
    """From the resources table (psutil CPU time of the process tree ÷ requests)."""
    buckets: list[Share] = field(default_factory=list)
    top_self: list[Share] = field(default_factory=list)
    top_total: list[Share] = field(default_factory=list)
    files: list[str] = field(default_factory=list)
    waiting: int = 0
    """Samples of threads waiting (leaf in :data:`WAITS`), left out of everything else."""

    @property
    def profiled_core_ms_per_request(self) -> float | None:
        """Busy samples ÷ rate, per request: the time threads were busy, which is CPU time
        plus time spent runnable without a core (or the GIL) on a loaded machine."""
        if not self.requests:
            return None
        return self.samples / self.rate_hz * 1000.0 / self.requests


def aggregate(
    stacks: Mapping[Stack, int],
    service: str,
    phase: str,
    rate_hz: int,
    requests: int,
    measured_core_ms_per_request: float | None = None,
    top: int = 6,
) -> ServiceProfile:
    """Buckets (every one, largest first) and the top frames by self and by total time."""
    waiting = sum(n for s, n in stacks.items() if s and frame_name(s[-1]) in WAITS)
    stacks = {s: n for s, n in stacks.items() if s and frame_name(s[-1]) not in WAITS}
    total = sum(stacks.values())
    by_bucket: Counter[str] = Counter()
    self_time: Counter[str] = Counter()
    total_time: Counter[str] = Counter()
    for stack, n in stacks.items():
        if not stack:
            continue
        by_bucket[bucket_of(stack)] += n
        self_time[frame_name(stack[-1])] += n
        # A recursive frame counts once; the event loop's and threads' own frames, on nearly
        # every stack, would only crowd the table.
        # Frames below a task's or a thread's start (``asyncio.run`` and what called it, e.g.
        # genwire's runner) are on every stack of their thread: left out too.
        start = next((i for i, f in enumerate(stack) if f.startswith(_TASK_START)), None)
        if start is None:  # the loop itself: nothing but the program's start below it
            start = next(
                (i for i, f in enumerate(stack) if _module_of(f).startswith(_LOOP_START)), 0
            )
        for name in {frame_name(f) for f in stack[start:] if not _structural(f)}:
            total_time[name] += n

    def shares(counter: Counter[str], limit: int | None) -> list[Share]:
        return [
            Share(
                name,
                n,
                n / total if total else 0.0,
                n / total * measured_core_ms_per_request
                if total and measured_core_ms_per_request is not None
                else None,
            )
            for name, n in counter.most_common(limit)
        ]

    return ServiceProfile(
        service=service,
        phase=phase,
        samples=total,
        rate_hz=rate_hz,
        requests=requests,
        measured_core_ms_per_request=measured_core_ms_per_request,
        waiting=waiting,
        buckets=shares(by_bucket, None),
        top_self=shares(self_time, top),
        top_total=shares(total_time, top),
    )


# ----------------------------------------------------------------------------------------------
# Flame graph (SVG) and speedscope files, from collapsed stacks
# ----------------------------------------------------------------------------------------------


@dataclass
class _Node:
    name: str
    count: int = 0
    bucket: str = OTHER
    children: dict[str, _Node] = field(default_factory=dict)


def _tree(stacks: Mapping[Stack, int]) -> _Node:
    root = _Node("all")
    for stack, n in stacks.items():
        root.count += n
        node = root
        bucket = bucket_of(stack) if stack else OTHER
        for frame in stack:
            name = frame_name(frame)
            node = node.children.setdefault(name, _Node(name))
            node.count += n
            node.bucket = bucket if node.bucket == OTHER else node.bucket
    return root


def flamegraph_svg(stacks: Mapping[Stack, int], title: str, width: int = 1400) -> str:
    """A flame graph (root at the bottom), each frame coloured by the bucket of its samples;
    hover a frame for its name and share. Frames under 0.1 % of the samples are left out."""
    root = _tree(stacks)
    colours = {b.name: b.colour for b in BUCKETS}
    row = 17

    def depth(node: _Node) -> int:
        return 1 + max((depth(c) for c in node.children.values()), default=0)

    levels = depth(root)
    height = (levels + 2) * row + 40
    total = max(root.count, 1)
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'font-family="monospace" font-size="11">',
        f'<text x="5" y="15" font-size="13">{html.escape(title)} — {root.count} samples</text>',
    ]

    def draw(node: _Node, x: float, level: int) -> None:
        w = node.count / total * (width - 10)
        if w < (width - 10) / 1000:
            return
        y = height - (level + 1) * row - 5
        share = node.count / total * 100
        label = html.escape(node.name)
        colour = colours.get(node.bucket, "#e9ecef")
        out.append(
            f"<g><title>{label} — {node.count} samples, {share:.1f} % ({html.escape(node.bucket)})"
            f'</title><rect x="{x + 5:.1f}" y="{y}" width="{max(w - 0.5, 0.1):.1f}" '
            f'height="{row - 1}" fill="{colour}" stroke="#fff" stroke-width="0.3"/>'
        )
        chars = int(w / 7)
        if chars >= 4:
            text = node.name if len(node.name) <= chars else node.name[: chars - 2] + ".."
            out.append(f'<text x="{x + 8:.1f}" y="{y + row - 5}">{html.escape(text)}</text>')
        out.append("</g>")
        cx = x
        for child in sorted(node.children.values(), key=lambda c: c.name):
            draw(child, cx, level + 1)
            cx += child.count / total * (width - 10)

    draw(root, 0.0, 0)
    out.append("</svg>")
    return "\n".join(out) + "\n"


def speedscope_json(stacks: Mapping[Stack, int], name: str, rate_hz: int) -> dict[str, object]:
    """The samples in speedscope's file format (a "sampled" profile; weights in samples)."""
    frames: list[dict[str, object]] = []
    index: dict[str, int] = {}
    samples: list[list[int]] = []
    weights: list[int] = []
    for stack, n in sorted(stacks.items()):
        ids = []
        for frame in stack:
            if frame not in index:
                match = _FRAME.match(frame)
                entry: dict[str, object] = {"name": match["func"] if match else frame}
                if match:
                    entry["file"] = module_path(match["path"])
                    if match["line"]:
                        entry["line"] = int(match["line"])
                index[frame] = len(frames)
                frames.append(entry)
            ids.append(index[frame])
        samples.append(ids)
        weights.append(n)
    return {
        "$schema": "https://www.speedscope.app/file-format-schema.json",
        "exporter": "genwire bench --profile",
        "name": name,
        "activeProfileIndex": 0,
        "shared": {"frames": frames},
        "profiles": [
            {
                "type": "sampled",
                "name": f"{name} (py-spy --idle, {rate_hz} Hz, waits included)",
                "unit": "none",
                "startValue": 0,
                "endValue": sum(weights),
                "samples": samples,
                "weights": weights,
            }
        ],
    }


def write_outputs(
    stacks: Mapping[Stack, int], folder: Path, service: str, title: str, rate_hz: int
) -> list[Path]:
    """``<service>.collapsed.txt``, ``.svg`` and ``.speedscope.json`` in ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    collapsed = folder / f"{service}.collapsed.txt"
    svg = folder / f"{service}.svg"
    scope = folder / f"{service}.speedscope.json"
    write_collapsed(stacks, collapsed)
    busy = {s: n for s, n in stacks.items() if s and frame_name(s[-1]) not in WAITS}
    svg.write_text(flamegraph_svg(busy, f"{title} (busy samples)"), encoding="utf-8")
    scope.write_text(json.dumps(speedscope_json(stacks, title, rate_hz)) + "\n", encoding="utf-8")
    return [collapsed, svg, scope]


# ----------------------------------------------------------------------------------------------
# Attaching py-spy
# ----------------------------------------------------------------------------------------------


def py_spy() -> str | None:
    """The py-spy executable: on PATH, else next to this interpreter (the venv's bin)."""
    found = shutil.which("py-spy")
    if found:
        return found
    beside = Path(sys.executable).parent / "py-spy"
    return str(beside) if beside.exists() else None


MODEL_SERVICE = "triton-model"
"""The Triton Python-backend stub serving the benchmarked model version."""


def profile_targets(run_dir: Path | None, model: str = "", version: str = "") -> dict[str, int]:
    """Every genwire service process of the running stack, by instance name, from the stack's
    run records (a supervised component's live child, else the recorded pid), and the model's
    Triton stub as :data:`MODEL_SERVICE` when ``model`` is given."""
    import psutil
    from genwire_stack.process import cmdline, live_child, records

    if run_dir is None or not run_dir.is_dir():
        return {}
    found: dict[str, int] = {}
    for record in records(run_dir):
        pid = live_child(run_dir, record.name)
        if pid is None and not record.supervised and record.alive():
            pid = record.pid
        if pid is None:
            continue
        argv = cmdline(pid)
        if any(a.startswith("genwire_") and a != "genwire_stack.supervise" for a in argv):
            found[record.name] = pid
        elif record.name == "triton" and model:
            stub = _model_stub(psutil.Process(pid), model, version)
            if stub is not None:
                found[MODEL_SERVICE] = stub
    return found


def _model_stub(triton: object, model: str, version: str) -> int | None:
    import psutil

    assert isinstance(triton, psutil.Process)
    best: tuple[int, int] | None = None
    with contextlib.suppress(psutil.Error):
        for child in triton.children():
            with contextlib.suppress(psutil.Error):
                argv = child.cmdline()
                match = (
                    re.search(rf"/{re.escape(model)}/([0-9]+)/model\.py$", argv[1])
                    if len(argv) > 1
                    else None
                )
                if match is None or (version and match[1] != version):
                    continue
                ranked = (int(match[1]), child.pid)
                best = ranked if best is None or ranked > best else best
    return best[1] if best else None


@dataclass
class _Spy:
    service: str
    pid: int
    output: Path
    proc: asyncio.subprocess.Process | None = None
    error: str = ""


class PhaseProfiler:
    """One ``py-spy record`` per process for the length of one phase (one round of one target)."""

    def __init__(self, exe: str, targets: Mapping[str, int], folder: Path, rate_hz: int) -> None:
        self._exe = exe
        self._rate = rate_hz
        self._spies = [_Spy(name, pid, folder / f"{name}.raw") for name, pid in targets.items()]
        folder.mkdir(parents=True, exist_ok=True)

    async def _start(self, spy: _Spy) -> None:
        argv = [self._exe, "record", "--pid", str(spy.pid), "--format", "raw"]
        argv += ["--rate", str(self._rate), "--idle", "--full-filenames", "-o", str(spy.output)]
        try:
            spy.proc = await asyncio.create_subprocess_exec(
                *argv, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE
            )
            assert spy.proc.stderr is not None
            # Sampling has begun once py-spy says so; the load starts after that.
            while True:
                async with asyncio.timeout(15.0):
                    line = await spy.proc.stderr.readline()
                if not line:
                    await spy.proc.wait()
                    spy.error = f"py-spy exited {spy.proc.returncode} before sampling"
                    spy.proc = None
                    return
                if b"Sampling process" in line:
                    return
                if b"Error" in line:
                    spy.error = line.decode(errors="replace").strip()
        except (OSError, TimeoutError) as exc:
            spy.error = f"py-spy did not start: {exc!r}"

    async def start(self) -> None:
        """Attach to every process; returns once each is being sampled (or failed)."""
        await asyncio.gather(*(self._start(s) for s in self._spies))

    async def _stop(self, spy: _Spy) -> None:
        proc = spy.proc
        if proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGINT)  # py-spy writes its file on Ctrl-C
        try:
            assert proc.stderr is not None
            async with asyncio.timeout(20.0):
                rest = await proc.stderr.read()
            async with asyncio.timeout(5.0):
                await proc.wait()
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
            spy.error = "py-spy did not stop within 20 s"
            return
        if not spy.output.exists():
            tail = rest.decode(errors="replace").strip().splitlines()
            spy.error = tail[-1] if tail else f"py-spy exited {proc.returncode} without output"

    async def stop(self) -> dict[str, Path | str]:
        """Stop sampling; per service its raw file, or why there is none."""
        await asyncio.gather(*(self._stop(s) for s in self._spies))
        return {
            s.service: (s.output if s.output.exists() else (s.error or "no samples"))
            for s in self._spies
        }


# ----------------------------------------------------------------------------------------------
# A run's profiles: merge rounds, write files, summarise
# ----------------------------------------------------------------------------------------------


def phase_folder(root: Path, phase: str) -> Path:
    """``kafka c=8`` → ``<root>/kafka_c8``."""
    return root / re.sub(r"[^A-Za-z0-9.-]+", "_", phase.replace("=", "")).strip("_")


def summarise_phase(
    phase: str,
    rounds: Sequence[Mapping[str, Path | str]],
    folder: Path,
    rate_hz: int,
    requests: int,
    measured: Mapping[str, float],
) -> tuple[list[ServiceProfile], dict[str, str]]:
    """Merge each service's rounds, write its files, and aggregate; services with no samples
    at all come back with the reason."""
    from genwire_bench.resources import service_of

    merged: dict[str, Counter[Stack]] = {}
    missing: dict[str, str] = {}
    for one in rounds:
        for instance, result in one.items():
            service = service_of(instance) if instance != MODEL_SERVICE else instance
            if isinstance(result, str):
                missing.setdefault(instance, result)
                continue
            merged.setdefault(service, Counter()).update(parse_collapsed(result.read_text()))
            result.unlink()
    out = []
    for service, stacks in sorted(merged.items()):
        files = write_outputs(stacks, folder, service, f"{service} during {phase}", rate_hz)
        profile = aggregate(stacks, service, phase, rate_hz, requests, measured.get(service))
        profile.files = [str(f) for f in files]
        out.append(profile)
        missing.pop(service, None)
    return out, {k: v for k, v in missing.items() if service_of(k) not in merged}


def table(headers: Sequence[str], rows: Sequence[Sequence[str]], left: Sequence[int] = (0,)) -> str:
    """Columns padded to fit, those in ``left`` left-aligned (genwire_bench.report's layout;
    not imported from there: the report imports the runner, which imports this module)."""
    widths = [max(len(str(c)) for c in col) for col in zip(headers, *rows, strict=True)]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(
            str(c).ljust(w) if i in left else str(c).rjust(w)
            for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        ).rstrip()

    rule = "  ".join("-" * w for w in widths)
    return "\n".join([line(headers), rule, *(line(r) for r in rows)])


def _pct(x: float) -> str:
    return f"{x * 100:.0f} %" if x >= 0.005 else "<1 %"


def _ms(x: float | None) -> str:
    return "-" if x is None else f"{x:.2f}"


def render_profiles(
    profiles: Mapping[str, Sequence[ServiceProfile]],
    missing: Mapping[str, Mapping[str, str]],
    root: Path | str,
) -> str:
    """The overview per phase (service, samples, core-ms per request from the resources table,
    top three buckets), then per service its buckets (share of the samples, and that share of
    the measured core-ms per request) and top frames by self and total time."""
    lines = [
        "",
        f"Profile (py-spy --idle; files under {root}): per service the busy and waiting "
        "samples, the core-ms per request the resources table measured and the busy ms per "
        "request the profile saw, and the buckets' shares of the busy samples",
        # Measured with perf (docs/benchmarks.md, *The kernel's count*): a stage's kernel share
        # was 6-11 % while py-spy put 9-14 % of its busy samples in socket writes alone.
        "(busy counts a thread waiting for a core too, which is why busy ms/req exceeds "
        "core-ms/req on a loaded machine; a write to a socket that wakes its reader on the "
        "writer's core shows as time in the write: read those frames as waits, not CPU)",
    ]
    for phase, items in profiles.items():
        rows = [
            [
                p.service,
                str(p.samples),
                str(p.waiting),
                _ms(p.measured_core_ms_per_request),
                _ms(p.profiled_core_ms_per_request),
                ", ".join(f"{b.name.split(' (')[0]} {_pct(b.share)}" for b in p.buckets[:3]),
            ]
            for p in items
        ]
        rows += [
            [name, "-", "-", "-", "-", f"not profiled: {why}"]
            for name, why in missing.get(phase, {}).items()
        ]
        lines += [
            "",
            f"{phase}:",
            table(
                ["service", "busy", "waiting", "core-ms/req", "busy ms/req", "top buckets"],
                rows,
                left=(0, 5),
            ),
        ]
    for phase, items in profiles.items():
        for p in items:
            lines += [
                "",
                f"{p.service} during {phase}: {p.samples} busy samples at {p.rate_hz} Hz "
                f"({p.waiting} waiting); core-ms/req: the bucket's share of the measured",
            ]
            lines.append(
                table(
                    ["bucket", "share", "core-ms/req"],
                    [[b.name, _pct(b.share), _ms(b.core_ms_per_request)] for b in p.buckets],
                )
            )
            lines.append(
                table(
                    ["top frames by self time", "share"],
                    [[f.name, _pct(f.share)] for f in p.top_self],
                )
            )
            lines.append(
                table(
                    ["top frames by total time", "share"],
                    [[f.name, _pct(f.share)] for f in p.top_total],
                )
            )
    return "\n".join(lines)


def profiles_json(
    profiles: Mapping[str, Sequence[ServiceProfile]], missing: Mapping[str, Mapping[str, str]]
) -> dict[str, object]:
    """The profiles as plain JSON data (``summary.json`` next to the files)."""
    return {
        "phases": {
            phase: {
                "services": [
                    {**asdict(p), "profiled_core_ms_per_request": p.profiled_core_ms_per_request}
                    for p in items
                ],
                "not_profiled": dict(missing.get(phase, {})),
            }
            for phase, items in profiles.items()
        },
        "buckets": [
            {"name": b.name, "kind": b.kind, "prefixes": list(b.prefixes)} for b in BUCKETS
        ],
    }


def every_bucket() -> Iterable[str]:
    """Bucket names in precedence order, then :data:`OTHER`."""
    return [*(b.name for b in BUCKETS), OTHER]


class _Load(Protocol):
    @property
    def label(self) -> str: ...


class _Usage(Protocol):
    @property
    def cpu_s(self) -> float: ...


class _Phase(Protocol):
    """What :func:`summarise_run` reads of the runner's ``Phase``."""

    @property
    def target(self) -> str: ...
    @property
    def load(self) -> _Load: ...
    @property
    def records(self) -> Sequence[object]: ...
    @property
    def profiles(self) -> Sequence[Mapping[str, Path | str]]: ...


def summarise_run(
    root: Path,
    phases: Sequence[_Phase],
    resources: Mapping[str, Mapping[str, _Usage]],
    rate_hz: int,
) -> dict[str, object]:
    """Every phase's profiles (the runner's phases, with their rounds' raw files), written out
    under ``root`` with ``summary.json``; returns ``{"phases": {label: [ServiceProfile]},
    "missing": {label: {service: why}}, "root": str}``."""
    profiles: dict[str, list[ServiceProfile]] = {}
    missing: dict[str, dict[str, str]] = {}
    for phase in phases:
        rounds, records = phase.profiles, phase.records
        if not rounds:
            continue
        label = f"{phase.target} {phase.load.label}"
        measured = {
            name: usage.cpu_s * 1000.0 / len(records)
            for name, usage in resources.get(label, {}).items()
            if records
        }
        folder = phase_folder(root, label)
        profiles[label], missing[label] = summarise_phase(
            label, rounds, folder, rate_hz, len(records), measured
        )
        for sub in folder.glob("round*"):
            with contextlib.suppress(OSError):
                sub.rmdir()
    (root / "summary.json").write_text(
        json.dumps(profiles_json(profiles, missing), indent=2) + "\n", encoding="utf-8"
    )
    return {"phases": profiles, "missing": missing, "root": str(root)}
