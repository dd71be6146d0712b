"""The TensorRT runner's decode loop, without a GPU: buffers, ping-pong, bindings, row writes.

The runner runs here on torch CPU tensors over a stand-in for TensorRT's engine (``FakeEngine``,
``FakeContext``) that behaves as TensorRT does where the runner depends on it: the profiles are
the build's own (``tensorrt_engine.profile_shapes``), ``set_input_shape`` refuses a shape outside
its profile, ``get_tensor_shape`` infers the outputs from the input shapes, and
``execute_async_v3`` reads every input and writes every output only through the addresses
bound with ``set_tensor_address``, computing the pass with ONNX Runtime on the tiny model. So a
wrong address, shape or buffer swap gives wrong tokens here, as it would on a GPU. The stand-in
is for these tests of logic only; tests/model/test_tensorrt.py runs the real engine on a GPU.
"""

from __future__ import annotations

import ctypes
import itertools
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from genwire_model.repository import ModelVersion
from genwire_model.runtime import runners, tensorrt_engine
from genwire_model.runtime.cache_io import CacheIO
from genwire_model.runtime.runners import (
    ADDRESS_ALIGNMENT,
    FallbackRunner,
    OnnxRuntimeRunner,
    TensorRTRunner,
)
from genwire_model.runtime.scheduler import Request, Scheduler, Update

torch = pytest.importorskip("torch", reason="the TensorRT runner keeps its cache in torch tensors")

CONTEXT = 64  # the tiny model's
NUMPY = {"FLOAT": np.float32, "HALF": np.float16, "INT64": np.int64}
TO_TORCH = {"FLOAT": torch.float32, "HALF": torch.float16, "INT64": torch.int64}


def _array(address: int, shape: tuple[int, ...], kind: Any) -> Any:
    """The memory at ``address`` as a writable numpy array (no copy)."""
    count = int(np.prod(shape)) * np.dtype(kind).itemsize
    raw = (ctypes.c_uint8 * count).from_address(address)
    return np.ctypeslib.as_array(raw).view(kind).reshape(shape)


class FakeEngine:
    """The engine as the runner reads it: two profiles and each tensor's type."""

    def __init__(self, manifest: dict[str, Any], max_batch: int, cache: str = "FLOAT") -> None:
        shape = manifest["shape"]
        self.io = CacheIO.of_shape(shape)
        self.shapes = tensorrt_engine.profile_shapes(
            int(shape["num_layers"]),
            int(shape["num_kv_heads"]),
            int(shape["head_dim"]),
            max_batch,
            CONTEXT,
            self.io,
        )
        ints = ("input_ids", "attention_mask", "position_ids")
        self.types = {name: "INT64" if name in ints else cache for name in self.io.input_names}
        self.types.update({name: cache for name in self.io.output_names})
        self.types["logits"] = "FLOAT"

    def get_tensor_profile_shape(self, name: str, index: int) -> Any:
        return self.shapes[tensorrt_engine.PROFILE_NAMES[index]][name]

    def get_tensor_dtype(self, name: str) -> str:
        return self.types[name]


class FakeContext:
    """An execution context that reads and writes only through the bound addresses."""

    def __init__(self, engine: FakeEngine, index: int, session: Any, vocab: int) -> None:
        self.engine = engine
        self.limits = engine.shapes[tensorrt_engine.PROFILE_NAMES[index]]
        self.session = session
        self.vocab = vocab
        self.shapes: dict[str, tuple[int, ...]] = {}
        self.addresses: dict[str, int] = {}
        self.passes: list[dict[str, tuple[int, int]]] = []  # name: (address, bytes)
        self.seen: list[dict[str, Any]] = []  # the inputs of each pass, as read

    def set_input_shape(self, name: str, shape: tuple[int, ...]) -> bool:
        low, _, high = self.limits[name]
        fits = len(shape) == len(low) and all(
            lo <= d <= hi for lo, d, hi in zip(low, shape, high, strict=True)
        )
        if fits:
            self.shapes[name] = tuple(int(d) for d in shape)
        return fits

    def set_tensor_address(self, name: str, address: int) -> bool:
        io = self.engine.io
        if name in (*io.past_names, *io.present_names) and address % ADDRESS_ALIGNMENT:
            return False  # TensorRT wants 256-byte boundaries; every cache tensor has one
        self.addresses[name] = int(address)
        return True

    def get_tensor_shape(self, name: str) -> tuple[int, ...]:
        io = self.engine.io
        ids, past = self.shapes["input_ids"], list(self.shapes[io.past_names[0]])
        if name == "logits":
            return (ids[0], self.vocab)
        past[io.column_axis] += ids[1]
        return tuple(past)

    def execute_async_v3(self, stream: int) -> bool:
        io = self.engine.io
        inputs, outputs = io.input_names, io.output_names
        shapes = {**self.shapes, **{n: self.get_tensor_shape(n) for n in outputs}}
        spans = {}
        for name in (*inputs, *outputs):
            kind = NUMPY[self.engine.types[name]]
            spans[name] = (
                self.addresses[name],
                int(np.prod(shapes[name])) * np.dtype(kind).itemsize,
            )
        for out in outputs:  # TensorRT's outputs must not overlap what it reads
            start, size = spans[out]
            for name in inputs:
                other, length = spans[name]
                assert start + size <= other or other + length <= start, (out, name)
        feeds = {
            name: _array(self.addresses[name], shapes[name], NUMPY[self.engine.types[name]]).copy()
            for name in inputs
        }
        for name, value in feeds.items():  # an FP16 cache is computed in FP32, written back FP16
            if value.dtype == np.float16:
                feeds[name] = value.astype(np.float32)
        self.passes.append(spans)
        self.seen.append(feeds)
        for name, value in zip(outputs, self.session.run(list(outputs), feeds), strict=True):
            assert value.shape == shapes[name], (name, value.shape, shapes[name])
            _array(self.addresses[name], shapes[name], NUMPY[self.engine.types[name]])[...] = value
        return True


def engine_runner(
    version: ModelVersion,
    max_batch: int = 8,
    cls: type = TensorRTRunner,
    cache: str = "FLOAT",
    graph: Path | None = None,
    manifest: dict[str, Any] | None = None,
) -> Any:
    """The TensorRT runner over the stand-in engine, on CPU tensors (``cache`` "HALF": an
    engine whose cache tensors are FP16, computed by the stand-in in FP32 and stored FP16;
    ``graph`` and ``manifest``: another graph than the version's, e.g. a stacked one)."""
    import onnxruntime as ort

    manifest = version.manifest if manifest is None else manifest
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1  # a shared 2-core machine
    session = ort.InferenceSession(
        str(graph or version.path / "model.onnx"), options, providers=["CPUExecutionProvider"]
    )
    engine = FakeEngine(manifest, max_batch, cache)
    vocab = int(manifest["shape"]["vocab_size"])
    contexts = [FakeContext(engine, i, session, vocab) for i in range(2)]
    return cls.on_engine(engine, contexts, manifest, torch, torch.device("cpu"), TO_TORCH)


def reference_runner(version: ModelVersion) -> OnnxRuntimeRunner:
    return OnnxRuntimeRunner(version.path / "model.onnx", version.manifest, threads=1)


def reserved(runner: Any) -> list[tuple[int, int]]:
    """(start, end) of every buffer ``reserve`` made."""
    spans = [
        (int(t.data_ptr()), int(t.data_ptr()) + t.numel() * t.element_size())
        for pair in runner._arenas
        for t in pair
    ]
    for name in ("inputs", "logits", "mask", "input_ids", "position_ids"):
        if name in runner._plan:
            t = runner._plan[name]
            spans.append((int(t.data_ptr()), int(t.data_ptr()) + t.numel() * t.element_size()))
    return spans


def prefill(runner: Any, prompts: list[list[int]]) -> tuple[Any, Any, list[int]]:
    """A left-padded prefill like the scheduler's; (logits, cache, lengths)."""
    logits, kv, _, lengths = tensorrt_engine.prefill(runner, prompts)
    return logits, kv, lengths


def step_inputs(tokens: Any, lengths: Any, width: int) -> tuple[Any, Any, Any]:
    """The scheduler's step inputs: each row's cache is its last lengths[i] columns."""
    ids = np.asarray(tokens, np.int64)[:, None]
    lengths = np.asarray(lengths, np.int64)
    mask = (np.arange(width + 1)[None, :] >= (width - lengths)[:, None]).astype(np.int64)
    return ids, mask, lengths[:, None]


PROMPTS = [[5, 6, 7], [8, 9, 10, 11, 12, 13, 14, 15], [20], [30, 31, 32, 33, 34], [40, 41]]


@pytest.mark.parametrize("cache", ["FLOAT", "HALF"])
def test_reserve_plans_two_aligned_buffers_per_cache(
    tiny_version: ModelVersion, cache: str
) -> None:
    """FP16: a column of the tiny model's layer is 128 bytes, so a layer of an odd number of
    rows x columns ends off a boundary, and only the slabs' padding keeps the next on one."""
    runner = engine_runner(tiny_version, cache=cache)
    runner.reserve(4, CONTEXT + 1)
    shape = tiny_version.manifest["shape"]
    layer = 4 * int(shape["num_kv_heads"]) * (CONTEXT + 1) * int(shape["head_dim"])
    unit = ADDRESS_ALIGNMENT // np.dtype(NUMPY[cache]).itemsize  # elements per boundary
    assert shape["cache_io"] == "per_layer"  # each layer bound by itself: slabs on boundaries
    size = int(shape["num_layers"]) * (-(-layer // unit) * unit)
    assert len(runner._arenas) == 2
    assert all(
        t.numel() == size and t.dtype == TO_TORCH[cache] for pair in runner._arenas for t in pair
    )
    spans = reserved(runner)
    assert all(start % ADDRESS_ALIGNMENT == 0 for start, _ in spans)
    ordered = sorted(spans)
    assert all(a[1] <= b[0] for a, b in itertools.pairwise(ordered)), "buffers overlap"
    assert runner._plan["stride"] * 8 % ADDRESS_ALIGNMENT == 0  # each input on a boundary
    # The mask buffer holds the widest mask the profiles allow, for every row.
    assert runner._plan["mask"].numel() == 4 * (CONTEXT + 2)
    # Every layer of a batch of any size starts on a boundary of its own (TensorRT binds it).
    for rows, width in ((3, 17), (1, 1), (4, CONTEXT + 1)):
        cache_shape = (runner.layers, rows, runner.heads, width, runner.head_dim)
        views = runner._views(0, cache_shape)
        assert views is not None and tuple(views[0].shape) == cache_shape
        for layer in range(runner.layers):
            for view in views:
                assert view[layer].is_contiguous()
                assert int(view[layer].data_ptr()) % ADDRESS_ALIGNMENT == 0, (rows, width)


def test_steps_ping_pong_and_bind_only_reserved_memory(tiny_version: ModelVersion) -> None:
    """Every step reads the cache from one buffer and writes the grown one into the other;
    every address it binds lies in what ``reserve`` made (no allocation per step), and its
    logits and cache equal those of ``forward`` (which allocates) on the same inputs."""
    runner = engine_runner(tiny_version)
    plain = engine_runner(tiny_version)  # no reserve: forward only
    runner.reserve(4, CONTEXT + 1)
    decode = runner.profiles[1]["context"]
    prompts = PROMPTS[:3]
    logits, kv, lengths = prefill(runner, prompts)
    width = max(lengths)
    kv = runner.gather([(kv, [0, 1, 2])], width)  # the batch enters the buffers
    assert runner._arena_of(kv) == 0
    other = kv
    expect_logits, _, _ = prefill(plain, prompts)
    assert np.array_equal(logits, expect_logits)
    tokens = np.asarray(logits).argmax(axis=1)
    lengths_now = np.array(lengths)
    spans = reserved(runner)
    bases = [int(pair[0].data_ptr()) for pair in runner._arenas]
    for n in range(6):
        ids, mask, positions = step_inputs(tokens, lengths_now, width)
        before = len(decode.passes)
        got, kv_next = runner.step(ids, mask, positions, kv)
        want, other = plain.forward(ids, mask, positions, other)
        assert len(decode.passes) == before + 1 and runner.steps_in_place == n + 1
        bound = decode.passes[-1]
        io = runner.io
        assert bound[io.past_names[0]][0] == bases[n % 2]
        assert bound[io.present_names[0]][0] == bases[(n + 1) % 2]
        for name, (address, size) in bound.items():
            assert address % ADDRESS_ALIGNMENT == 0, name
            assert any(lo <= address and address + size <= hi for lo, hi in spans), name
        assert np.array_equal(got, want)
        assert torch.equal(kv_next[0], other[0]) and torch.equal(kv_next[1], other[1])
        assert np.array_equal(decode.seen[-1]["attention_mask"], mask)  # rebuilt on the device
        kv, width = kv_next, width + 1
        tokens, lengths_now = got.argmax(axis=1), lengths_now + 1


def test_logits_stay_on_the_device_and_any_mask_is_taken(tiny_version: ModelVersion) -> None:
    runner = engine_runner(tiny_version)
    runner.reserve(4, CONTEXT + 1)
    runner.host_logits = False
    _, kv, lengths = prefill(runner, PROMPTS[:2])
    kv = runner.gather([(kv, [0, 1])], max(lengths))
    ids, mask, positions = step_inputs([3, 4], lengths, max(lengths))
    logits, _ = runner.step(ids, mask, positions, kv)
    assert isinstance(logits, torch.Tensor) and logits is runner.device_logits
    assert int(logits.data_ptr()) == int(runner._plan["logits"].data_ptr())
    # A mask that is not zeros-then-ones is copied up whole, not rebuilt.
    odd = mask.copy()
    odd[0, -2] = 0
    runner.step(ids, odd, positions, kv)
    assert np.array_equal(runner.profiles[1]["context"].seen[-1]["attention_mask"], odd)
    with pytest.raises(ValueError, match="columns"):
        runner.step(ids, mask[:, :-1], positions, kv)


def test_a_pass_the_buffers_cannot_take_goes_to_forward(tiny_version: ModelVersion) -> None:
    runner = engine_runner(tiny_version)
    runner.reserve(2, 8)
    _, kv, lengths = prefill(runner, PROMPTS[:3])  # 3 rows > the 2 reserved
    ids, mask, positions = step_inputs([1, 2, 3], lengths, int(kv[0].shape[3]))
    runner.step(ids, mask, positions, kv)
    assert runner.steps_in_place == 0
    with pytest.raises(ValueError, match="profile"):  # past the profiles: named, as forward
        wide = runner.empty(1, CONTEXT + 5)
        runner.step(np.array([[1]]), np.ones((1, CONTEXT + 6), np.int64), np.array([[3]]), wide)


def test_gather_writes_into_the_free_buffer_like_onnx_runtime(tiny_version: ModelVersion) -> None:
    runner, reference = engine_runner(tiny_version), reference_runner(tiny_version)
    runner.reserve(8, CONTEXT + 1)
    reference.reserve(8, CONTEXT + 1)
    rng = np.random.default_rng(4)
    shape = (runner.layers, 5, runner.heads, 7, runner.head_dim)
    host = (rng.standard_normal(shape, np.float32), rng.standard_normal(shape, np.float32))
    small = tuple(a[:, :2, :, :3].copy() for a in host)
    device = tuple(torch.from_numpy(a.copy()) for a in host)
    device_small = tuple(torch.from_numpy(a.copy()) for a in small)
    batch = runner.gather([(device, [0, 1, 2, 3, 4])], 7)
    assert runner._arena_of(batch) == 0
    for width in (3, 7, 9):
        parts = [(batch, [4, 0, 1, 3]), (device_small, [1, 0])]
        got = runner.gather(parts, width)
        want = reference.gather([(host, [4, 0, 1, 3]), (small, [1, 0])], width)
        assert runner._arena_of(got) == 1  # the buffer the batch is not in
        assert np.array_equal(got[0].numpy(), want[0]) and np.array_equal(got[1].numpy(), want[1])
    assert runners._runs([4, 0, 1, 3, 4, 5]) == [(4, 1), (0, 2), (3, 3)]


class Collect:
    def __init__(self) -> None:
        self.updates: list[Update] = []

    def send(self, update: Update) -> None:
        self.updates.append(update)

    def fail(self, message: str) -> None:
        raise AssertionError(message)

    def is_cancelled(self) -> bool:
        return False

    @property
    def done(self) -> bool:
        return bool(self.updates and self.updates[-1].last)

    @property
    def tokens(self) -> list[int]:
        return [t for u in self.updates for t in u.token_ids]


def closed_loop(runner: Any, temperature: float) -> tuple[list[list[int]], Scheduler]:
    """Fourteen requests through four rows: every one that ends is replaced at once, so rows
    leave, join in place and the batch is rebuilt as the loop goes."""
    jobs = [(PROMPTS[i % len(PROMPTS)], i, 3 + (i * 5) % 9) for i in range(14)]
    scheduler = Scheduler(runner, context=CONTEXT, eos_ids=(), max_batch=4)
    sinks = [Collect() for _ in jobs]
    started = 0
    for _ in range(10_000):
        running = sum(1 for s in sinks[:started] if not s.done)
        while started < len(jobs) and running < 4:
            prompt, seed, max_tokens = jobs[started]
            scheduler.submit(
                Request(
                    np.asarray(prompt, np.int64),
                    sink=sinks[started],
                    max_tokens=max_tokens,
                    temperature=temperature,
                    top_p=0.95,
                    top_k=0,
                    seed=seed,
                    stop_ids=frozenset(),
                    stream=True,
                )
            )
            started += 1
            running += 1
        if all(s.done for s in sinks):
            break
        scheduler.run_once()
    assert all(s.done for s in sinks)
    return [s.tokens for s in sinks], scheduler


class ForwardOnly(TensorRTRunner):
    """The runner before the decode loop's buffers: every pass allocates its outputs."""

    def reserve(self, batch: int, width: int) -> None:
        return None


def test_the_loop_on_the_engine_writes_onnx_runtime_text_through_joins_and_leaves(
    tiny_version: ModelVersion,
) -> None:
    runner = engine_runner(tiny_version)
    text, scheduler = closed_loop(runner, 0.0)
    want, _reference = closed_loop(reference_runner(tiny_version), 0.0)
    assert text == want
    assert runner.host_logits is False  # the loop sampled where the logits are
    assert scheduler.reforms_in_place > 0 and scheduler.rebuilds > 0
    assert runner.steps_in_place > 0
    # Every decode pass went through the buffers: none fell back to forward's allocations.
    decode = runner.profiles[1]["context"]
    bases = {int(pair[0].data_ptr()) for pair in runner._arenas}
    assert {p[runner.io.present_names[0]][0] for p in decode.passes} == bases
    # The same seeds and sampling give the same text as the allocating runner.
    sampled, _ = closed_loop(engine_runner(tiny_version), 0.8)
    before, _ = closed_loop(engine_runner(tiny_version, cls=ForwardOnly), 0.8)
    assert sampled == before


class FailingContext:
    """The decode context of an engine that fails from its first step on."""

    def __init__(self, inner: FakeContext) -> None:
        self.inner = inner

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def execute_async_v3(self, stream: int) -> bool:
        return False


def test_a_failing_step_moves_the_loop_to_onnx_runtime_and_its_buffers(
    tiny_version: ModelVersion,
) -> None:
    """The scheduler binds ``step`` once: through ``FallbackRunner`` a failing step is rerun
    on ONNX Runtime (the cache copied to the host once), whose own buffers serve from then on;
    the text is ONNX Runtime's throughout."""
    engine = engine_runner(tiny_version)
    engine.profiles[1]["context"] = FailingContext(engine.profiles[1]["context"])
    made: list[OnnxRuntimeRunner] = []

    def onnxruntime() -> OnnxRuntimeRunner:
        made.append(reference_runner(tiny_version))
        return made[-1]

    report = runners._Fallback(tiny_version.path, record=False)
    wrapped = FallbackRunner(engine, onnxruntime, report)
    text, scheduler = closed_loop(wrapped, 0.0)
    want, _ = closed_loop(reference_runner(tiny_version), 0.0)
    assert text == want
    assert wrapped.failed and wrapped.backend == "onnxruntime"
    assert report.events and report.events[0]["stage"] == "run"
    assert "execute_async_v3" in report.events[0]["reason"]
    assert len(made) == 1 and made[0]._arenas  # reserve reached the new runner
    assert scheduler.rebuilds > 0


def test_the_stand_in_refuses_shapes_outside_the_profiles(tiny_version: ModelVersion) -> None:
    """The stand-in refuses what TensorRT refuses (else the tests above could not fail)."""
    runner = engine_runner(tiny_version)
    prefill_context = runner.profiles[0]["context"]
    io = runner.io
    first = io.past_names[0]
    kv = io.tensor_shape(1, runner.heads, 2, runner.head_dim)
    assert not prefill_context.set_input_shape(first, kv)  # prefill: one past column
    assert prefill_context.set_input_shape(
        first, io.tensor_shape(1, runner.heads, 1, runner.head_dim)
    )
    # Nor does it take a cache tensor off a 256-byte boundary (TensorRT's rule).
    assert not prefill_context.set_tensor_address(io.present_names[-1], ADDRESS_ALIGNMENT + 64)
    assert not runner.profiles[1]["context"].set_input_shape("input_ids", (1, 2))


def test_the_build_and_load_check_runs_the_steps_in_the_buffers(
    tiny_version: ModelVersion,
) -> None:
    """``agreement`` (at build and at load) reserves and steps like the decode loop, so an
    engine whose buffer swap went wrong would show in its greedy agreement."""
    runner = engine_runner(tiny_version)
    vocab = int(tiny_version.manifest["shape"]["vocab_size"])
    figures = tensorrt_engine.agreement(runner, reference_runner(tiny_version), vocab, CONTEXT, 8)
    assert runner.steps_in_place == figures["cases"]["decode_steps"] == 8
    assert figures["finite"] and figures["greedy_token_agreement"] == 1.0
    assert figures["max_abs_logprob_diff"] < 1e-3  # the same graph, one masked column more
    tensorrt_engine.check_agreement(figures)


def test_rows_that_reach_the_context_leave_the_cache_within_the_profile(
    tiny_version: ModelVersion,
) -> None:
    """A row that ends at the context stays in the batch (fed, not sampled) while a shorter
    one runs on: the cache is trimmed once it is as wide as the context, so no row is fed a
    position past the graph's and no step's cache outgrows the decode profile (context + 1
    columns) or the buffers. Before, the batch failed on both runners (position 64 of 64)."""

    def run(runner: Any) -> tuple[list[Collect], Scheduler]:
        scheduler = Scheduler(runner, context=CONTEXT, eos_ids=(), max_batch=4)
        sinks = [Collect(), Collect()]
        for length, sink in zip((50, 46), sinks, strict=True):
            scheduler.submit(
                Request(
                    np.arange(1, length + 1, dtype=np.int64),
                    sink=sink,
                    max_tokens=100,
                    temperature=0.0,
                    top_p=1.0,
                    top_k=0,
                    seed=1,
                    stop_ids=frozenset(),
                    stream=True,
                )
            )
        for _ in range(200):
            if all(s.done for s in sinks):
                break
            scheduler.run_once()
            assert scheduler.width <= CONTEXT
        return sinks, scheduler

    runner = engine_runner(tiny_version)
    got, scheduler = run(runner)
    want, _ = run(reference_runner(tiny_version))
    assert [s.tokens for s in got] == [s.tokens for s in want]
    # Both ran to the context (the last token is sampled, never fed): the first ended while
    # the second still had tokens to make.
    assert [len(s.tokens) for s in got] == [CONTEXT - 50 + 1, CONTEXT - 46 + 1]
    assert all(s.updates[-1].finish_reason == "length" for s in got)
    decode = runner.profiles[1]["context"]
    io = runner.io
    widths = [feeds[io.past_names[0]].shape[io.column_axis] for feeds in decode.seen]
    assert max(widths) <= CONTEXT + 1
    assert max(p for feeds in decode.seen for p in feeds["position_ids"].ravel()) < CONTEXT
    assert runner.steps_in_place == len(decode.seen)  # every decode pass in the buffers
    assert scheduler.rebuilds >= 2  # the batch's first form, and the trim at the context


def test_buffers_that_do_not_fit_leave_the_steps_allocating(
    tiny_version: ModelVersion, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """``reserve`` asks for four buffers of the largest batch at the full context; where the
    GPU has not that much free, the model still loads (the scheduler reserves in its
    constructor): a warning, no buffers (the old ones released first), steps go to
    ``forward``."""
    runner = engine_runner(tiny_version)
    runner.reserve(2, 8)
    assert runner._arenas
    make = runner._buffer

    def short(count: int, dtype: Any, zero: bool = True) -> Any:
        if count > 4096:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (stand-in)")
        return make(count, dtype, zero)

    monkeypatch.setattr(runner, "_buffer", short)
    with caplog.at_level("WARNING", logger=runners.__name__):
        runner.reserve(4, CONTEXT + 1)
    assert runner._arenas == [] and runner._plan == {}
    assert "decode buffers for 4 rows" in caplog.text and "out of memory" in caplog.text
    _, kv, lengths = prefill(runner, PROMPTS[:2])
    ids, mask, positions = step_inputs([3, 4], lengths, int(kv[0].shape[3]))
    got, _ = runner.step(ids, mask, positions, kv)
    want, _ = engine_runner(tiny_version).forward(ids, mask, positions, kv)
    assert runner.steps_in_place == 0 and np.array_equal(got, want)


@pytest.mark.parametrize("fails", [False, True])
def test_compare_backends_refuses_figures_of_a_fallen_back_engine(
    tiny_version: ModelVersion,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    fails: bool,
) -> None:
    """``deploy/gpu/compare_backends.py`` on the stand-in engine: the decode through the
    buffers agrees with ONNX Runtime; an engine whose steps fail (``FallbackRunner`` moves to
    ONNX Runtime) gives no "tensorrt" figures, which would be ONNX Runtime's."""
    import importlib.util
    from pathlib import Path

    script = Path(__file__).parents[2] / "deploy" / "gpu" / "compare_backends.py"
    spec = importlib.util.spec_from_file_location("compare_backends", script)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)

    def create_runner(path: Any, prefer: str = "auto", **_: Any) -> Any:
        if prefer == "onnxruntime":
            return reference_runner(tiny_version)
        engine = engine_runner(tiny_version)
        if fails:
            engine.profiles[1]["context"] = FailingContext(engine.profiles[1]["context"])
        report = runners._Fallback(tiny_version.path, record=False)
        return FallbackRunner(engine, lambda: reference_runner(tiny_version), report)

    monkeypatch.setattr(runners, "create_runner", create_runner)
    args = ["--repository", str(tiny_version.path.parents[1]), "--name", tiny_version.name]
    args += ["--batch", "2", "--steps", "4", "--prompt-tokens", "6"]
    code = module.main(args)
    out = capsys.readouterr()
    if fails:
        assert code == 1 and "TensorRT failed at batch 2" in out.err
    else:
        assert code == 0 and "tensorrt" in out.out and "100%" in out.out


# -- FP16 caches, whose layers are off a boundary unless laid out, and legacy stacked engines -----


def watched(runner: Any) -> dict[str, int]:
    """Counts the runner's steps, and those fed a stack that is not contiguous (laid out)."""
    seen = {"steps": 0, "strided": 0}
    real = runner.step

    def step(ids: Any, mask: Any, positions: Any, kv: Any) -> Any:
        seen["steps"] += 1
        seen["strided"] += int(not kv[0].is_contiguous())
        return real(ids, mask, positions, kv)

    runner.step = step
    return seen


@pytest.mark.parametrize("temperature", [0.0, 0.8])
def test_an_fp16_cache_decodes_in_its_laid_out_buffers_what_allocating_passes_decode(
    tiny_version: ModelVersion, temperature: float
) -> None:
    """An FP16 layer of the tiny model is 128 bytes per row and column: the buffers pad each
    layer to a boundary (a strided stack), and the loop over them, rows joining in place and
    the batch rebuilt, writes the text of passes that allocate every output."""
    runner = engine_runner(tiny_version, cache="HALF")
    seen = watched(runner)
    text, scheduler = closed_loop(runner, temperature)
    want, _ = closed_loop(engine_runner(tiny_version, cls=ForwardOnly, cache="HALF"), temperature)
    assert text == want
    assert runner.steps_in_place > 0 and seen["strided"] > 0  # padded stacks were stepped
    assert scheduler.reforms_in_place > 0 and scheduler.rebuilds > 0


def test_an_fp16_stack_whose_layers_are_off_a_boundary_is_laid_out_before_binding(
    tiny_version: ModelVersion,
) -> None:
    """A contiguous FP16 stack that starts on a boundary (as device memory always does) but
    whose layers do not (odd rows x columns): each layer is copied to one before it is bound,
    by ``step`` and by ``forward`` (the stand-in refuses a cache address off a boundary)."""
    runner = engine_runner(tiny_version, cache="HALF")
    plain = engine_runner(tiny_version, cls=ForwardOnly, cache="HALF")
    runner.reserve(4, CONTEXT + 1)
    _, kv, lengths = prefill(plain, PROMPTS[:3])
    shape = tuple(int(d) for d in kv[0].shape)
    assert shape[1] * shape[3] % 2 == 1, shape  # 3 rows x an odd width: layer 1 is off
    placed = []
    for tensor in kv:
        flat = runner._buffer(tensor.numel(), tensor.dtype)
        placed.append(flat.view(shape))
        placed[-1].copy_(tensor)
    assert int(placed[0].data_ptr()) % ADDRESS_ALIGNMENT == 0
    assert int(placed[0][1].data_ptr()) % ADDRESS_ALIGNMENT != 0
    ids, mask, positions = step_inputs([1, 2, 3], lengths, shape[3])
    want, _ = plain.forward(ids, mask, positions, kv)
    got, _ = runner.step(ids, mask, positions, (placed[0], placed[1]))
    assert np.array_equal(got, want) and runner.steps_in_place == 1
    got, _ = runner.forward(ids, mask, positions, (placed[0], placed[1]))
    assert np.array_equal(got, want)


@pytest.mark.parametrize("cache", ["FLOAT", "HALF"])
def test_an_engine_of_an_earlier_stacked_graph_still_runs_the_loop(
    tiny_version: ModelVersion, tiny_checkpoint: Path, tmp_path: Path, cache: str
) -> None:
    """A version built before the per-layer contract (no ``shape.cache_io``): its engine's
    ``past_keys`` / ``present_keys`` are bound whole, in the buffers, as before."""
    from tests.model.legacy import stacked_graph

    graph = tmp_path / "stacked.onnx"
    stacked_graph(tiny_checkpoint, graph)
    manifest = {**tiny_version.manifest, "shape": dict(tiny_version.manifest["shape"])}
    del manifest["shape"]["cache_io"]
    runner = engine_runner(tiny_version, cache=cache, graph=graph, manifest=manifest)
    assert runner.io.stacked
    text, _ = closed_loop(runner, 0.0)
    if cache == "FLOAT":
        want, _ = closed_loop(reference_runner(tiny_version), 0.0)  # today's per-layer graph
    else:
        plain = engine_runner(
            tiny_version, cls=ForwardOnly, cache=cache, graph=graph, manifest=manifest
        )
        want, _ = closed_loop(plain, 0.0)
    assert text == want
    assert runner.steps_in_place > 0
    bound = runner.profiles[1]["context"].passes[-1]
    assert "past_keys" in bound and "present_values" in bound
