"""Runners execute one forward pass of the KV-cache graph: ONNX Runtime (CPU) or TensorRT (GPU).

Both take numpy ``input_ids``, ``attention_mask`` and ``position_ids`` and return numpy logits;
the KV cache stays in the runner's own memory (numpy arrays, or torch CUDA tensors for
TensorRT) and is handled only through the runner's cache operations, so it never leaves the
device it lives on.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from .cache_io import CacheIO

KV = tuple[Any, Any]

Array = npt.NDArray[Any]


class Runner(Protocol):
    """One forward pass plus the cache operations the scheduler needs."""

    backend: str
    vocab_size: int
    min_past: int  # prefill uses this many masked dummy past columns (TensorRT needs >= 1)

    def forward(
        self, input_ids: Array, attention_mask: Array, position_ids: Array, kv: KV
    ) -> tuple[Array, KV]:
        """Logits [B, V] (float32, host) and the new cache [L, B, H, P+S, D]."""

    def empty(self, batch: int, width: int) -> KV:
        """A zero cache of ``width`` columns."""

    def pad_left(self, kv: KV, columns: int) -> KV:
        """Add ``columns`` zero columns before the existing ones."""

    def concat(self, parts: list[KV]) -> KV:
        """Stack caches of equal width along the batch axis."""

    def take(self, kv: KV, rows: list[int]) -> KV:
        """Keep only ``rows`` of the batch, in that order."""

    def trim_left(self, kv: KV, columns: int) -> KV:
        """Drop the first ``columns`` columns."""


def gather_basic(runner: Runner, parts: list[tuple[KV, list[int]]], width: int) -> KV:
    """``gather`` from the basic cache operations (for a runner without it): the ``rows`` of
    each cache, trimmed or padded on the left to ``width`` columns, stacked in order."""
    pieces = []
    for kv, rows in parts:
        piece = runner.take(kv, rows)
        have = int(piece[0].shape[3])
        if have > width:
            piece = runner.trim_left(piece, have - width)
        elif have < width:
            piece = runner.pad_left(piece, width - have)
        pieces.append(piece)
    return pieces[0] if len(pieces) == 1 else runner.concat(pieces)


DEFAULT_INTRA_OP_THREADS = 1
"""ONNX Runtime's intra-op threads for a version whose build set none (its manifest) and no
``override_intra_op_threads`` in its config.pbtxt (and the build's default). One: on the
project's 2-vCPU machine, where the services want the other core and a step split over two
threads likely waits for the second one's wake-up on every operator, one thread served 5–21 %
more tokens per second through Triton at batch 1, 8 and 32, and 4–23 % in process
(docs/model.md, *Round 14*). A node with cores to spare for the model sets more (``genwire
model build --intra-op-threads``)."""


def version_options(params: dict[str, str], manifest: dict[str, Any]) -> dict[str, int]:
    """``max_batch``, ``stream_interval`` and ``intra_op_threads`` a version serves with: its
    own build's (its manifest: every version of a model shares one config.pbtxt, which a newer
    build rewrites), unless a config.pbtxt ``override_<key>`` parameter overrides them for
    every version. The config's plain keys are ignored: a build keeps them only for versions
    built before this runtime, whose own copy of the runtime reads them. The runtime
    (``triton_model``) and ``genwire model bench --in-process`` both read them here."""
    built = manifest.get("build", {}).get("options", {}) or {}
    defaults = {"max_batch": 32, "stream_interval": 1, "intra_op_threads": DEFAULT_INTRA_OP_THREADS}
    return {
        key: int(params.get(f"override_{key}", built.get(key, value)))  # build.OVERRIDE_PREFIX
        for key, value in defaults.items()
    }


class OnnxRuntimeRunner:
    """The ONNX graph on ONNX Runtime's CPU execution provider.

    Decode steps (``step``) run with I/O binding into two preallocated cache arenas (``reserve``):
    a step reads the batch's cache from one arena and ONNX Runtime writes the grown cache into
    the other, and the logits into a preallocated buffer, so a step allocates no cache memory
    (no megabytes of fresh pages per token). A per-layer graph (``cache_io``) reads and writes
    per-layer views of the arenas: each layer's concatenation lands in place. ``gather``
    re-forms the batch (rows leaving, rows joining, the width trimmed) in one copy into the
    arena the batch is not in. Prefills use ``forward`` (ONNX Runtime allocates their small
    outputs).
    """

    backend = "onnxruntime"
    min_past = 0

    def __init__(
        self,
        model_path: Path,
        manifest: dict[str, Any],
        threads: int = DEFAULT_INTRA_OP_THREADS,
        allow_spinning: bool = False,
    ) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # Spinning workers burn the cores Triton and the services share; off unless asked.
        options.add_session_config_entry(
            "session.intra_op.allow_spinning", "1" if allow_spinning else "0"
        )
        self.session = ort.InferenceSession(
            str(model_path), options, providers=["CPUExecutionProvider"]
        )
        shape = manifest["shape"]
        self.layers = int(shape["num_layers"])
        self.heads = int(shape["num_kv_heads"])
        self.head_dim = int(shape["head_dim"])
        self.vocab_size = int(shape["vocab_size"])
        # From the graph itself: the in-process bench also reads versions built before it.
        self.io = CacheIO.of_names((i.name for i in self.session.get_inputs()), self.layers)
        self._arenas: list[tuple[Array, Array]] = []
        self._logits = np.zeros(0, np.float32)
        self._binding: Any = None

    def reserve(self, batch: int, width: int) -> None:
        """Preallocate the two cache arenas (``batch`` rows x ``width`` columns each) and the
        logits buffer used by ``step`` and ``gather``."""
        size = self.layers * batch * self.heads * width * self.head_dim
        self._arenas = [(np.zeros(size, np.float32), np.zeros(size, np.float32)) for _ in "ab"]
        self._logits = np.zeros(batch * self.vocab_size, np.float32)
        self._binding = self.session.io_binding()

    def _arena_of(self, kv: KV) -> int:
        """Which arena holds ``kv`` (-1: none)."""
        if not isinstance(kv[0], np.ndarray) or not kv[0].size:
            return -1
        address = kv[0].ctypes.data
        for index, (keys, _) in enumerate(self._arenas):
            if address == keys.ctypes.data:
                return index
        return -1

    def _views(self, arena: int, shape: tuple[int, ...]) -> KV | None:
        """Contiguous views of ``shape`` at the start of an arena (None: it does not fit)."""
        size = int(np.prod(shape))
        keys, values = self._arenas[arena]
        if size > keys.size:
            return None
        return keys[:size].reshape(shape), values[:size].reshape(shape)

    def step(
        self, input_ids: Array, attention_mask: Array, position_ids: Array, kv: KV
    ) -> tuple[Array, KV]:
        """A decode pass written into the other arena (``forward`` when there is none)."""
        if not self._arenas:
            return self.forward(input_ids, attention_mask, position_ids, kv)
        rows = int(input_ids.shape[0])
        width = int(kv[0].shape[3]) + int(input_ids.shape[1])
        shape = (self.layers, rows, self.heads, width, self.head_dim)
        target = 1 if self._arena_of(kv) == 0 else 0
        out = self._views(target, shape)
        if out is None or rows * self.vocab_size > self._logits.size:
            return self.forward(input_ids, attention_mask, position_ids, kv)
        logits = self._logits[: rows * self.vocab_size].reshape(rows, self.vocab_size)
        binding = self._binding
        binding.clear_binding_inputs()
        binding.clear_binding_outputs()
        for name, array in self.io.feeds(input_ids, attention_mask, position_ids, kv).items():
            binding.bind_cpu_input(name, np.ascontiguousarray(array))
        binding.bind_output("logits", "cpu", 0, np.float32, list(logits.shape), logits.ctypes.data)
        for name, array in self.io.present(out).items():
            binding.bind_output(name, "cpu", 0, np.float32, list(array.shape), array.ctypes.data)
        self.session.run_with_iobinding(binding)
        return logits, out

    def gather(self, parts: list[tuple[KV, list[int]]], width: int) -> KV:
        """A cache of ``width`` columns whose rows are, in order, the listed rows of each part,
        right-aligned (their last ``width`` columns, zeros in front of shorter ones)."""
        rows = sum(len(r) for _, r in parts)
        shape = (self.layers, rows, self.heads, width, self.head_dim)
        busy = {self._arena_of(kv) for kv, _ in parts}
        target = next((i for i in range(len(self._arenas)) if i not in busy), -1)
        out = self._views(target, shape) if target >= 0 else None
        if out is None:
            out = (np.empty(shape, np.float32), np.empty(shape, np.float32))
        row = 0
        for kv, picks in parts:
            have = int(kv[0].shape[3])
            keep = min(have, width)
            for source in picks:
                for dst, src in zip(out, kv, strict=True):
                    dst[:, row, :, width - keep :] = src[:, source, :, have - keep :]
                    if keep < width:
                        dst[:, row, :, : width - keep] = 0.0
                row += 1
        return out

    def forward(
        self, input_ids: Array, attention_mask: Array, position_ids: Array, kv: KV
    ) -> tuple[Array, KV]:
        """One pass; returns last-position logits and the grown cache (a per-layer graph's
        outputs stacked: one copy, on prefills and passes ``step`` cannot take)."""
        io = self.io
        got = self.session.run(
            list(io.output_names), io.feeds(input_ids, attention_mask, position_ids, kv)
        )
        return got[0], io.join(got[1:], np.stack)

    def empty(self, batch: int, width: int) -> KV:
        """Zero cache."""
        shape = (self.layers, batch, self.heads, width, self.head_dim)
        return np.zeros(shape, np.float32), np.zeros(shape, np.float32)

    def pad_left(self, kv: KV, columns: int) -> KV:
        """Zero columns in front."""
        pad = ((0, 0), (0, 0), (0, 0), (columns, 0), (0, 0))
        return np.pad(kv[0], pad), np.pad(kv[1], pad)

    def concat(self, parts: list[KV]) -> KV:
        """Batch concatenation."""
        return (
            np.concatenate([p[0] for p in parts], axis=1),
            np.concatenate([p[1] for p in parts], axis=1),
        )

    def take(self, kv: KV, rows: list[int]) -> KV:
        """Row selection (a copy, contiguous)."""
        return np.ascontiguousarray(kv[0][:, rows]), np.ascontiguousarray(kv[1][:, rows])

    def trim_left(self, kv: KV, columns: int) -> KV:
        """Column trim (a copy, contiguous)."""
        return (
            np.ascontiguousarray(kv[0][:, :, :, columns:]),
            np.ascontiguousarray(kv[1][:, :, :, columns:]),
        )


class TensorRTRunner:
    """A serialized TensorRT engine of the same graph; the cache lives in device memory (torch).

    Two execution contexts, one per optimization profile (``prefill`` and ``decode``, see
    tensorrt_engine.py): a pass uses the decode context when it feeds one token per row and
    the cache fits it. Every TensorRT call that can fail is checked: a shape outside the
    profiles raises ``ValueError`` naming the limit, a failed execution ``RuntimeError``
    (create_runner's wrapper then falls back to ONNX Runtime).

    The decode loop is the ONNX Runtime runner's (``step``, ``reserve``, ``gather``, rows
    written in place). ``reserve`` preallocates on the device two buffers per cache (keys,
    values: ``max_batch`` x ``context + 1`` columns each), a step's logits and its inputs; a
    step binds ``past_*`` to the buffer the batch is in and ``present_*`` to the other one
    (``set_tensor_address``), so it allocates no device memory and the cache never leaves the
    device. Per step one copy goes up (3 x B int64 from a pinned buffer: each row's token, its
    position and its first unmasked column, from which the attention mask is rebuilt on the
    device) and, with ``host_logits`` off, nothing comes back but what the sampler returns.
    ``gather`` re-forms the batch into the free buffer. With a per-layer graph (``cache_io``) each
    buffer holds the layers as slabs that each start on a 256-byte boundary (a strided stack),
    so every layer's view can be bound. The padding only exists when kv_heads x head_dim x the
    cache type's bytes is not a multiple of 256 (never for the default model's FP32 4 x 48).
    ``forward`` (prefills, and any pass
    ``step`` cannot take) stages its inputs in pinned host buffers, copies them without
    blocking on the engine's stream and writes its outputs into fresh buffers of the same
    layout (unzeroed: the engine writes them whole).
    """

    backend = "tensorrt"
    min_past = 1  # the engine's profiles start at one past column: no zero-sized tensors
    # False: forward returns the logits as a CUDA tensor (no host copy); the decode loop sets
    # it and samples them there (sampling_torch).
    host_logits = True

    def __init__(self, engine_path: Path, manifest: dict[str, Any], device: int = 0) -> None:
        import tensorrt as trt
        import torch as torch_module

        torch: Any = torch_module
        where = torch.device("cuda", device)
        torch.cuda.set_device(where)
        self.logger = trt.Logger(trt.Logger.WARNING)
        self.runtime = trt.Runtime(self.logger)
        if self.runtime is None:
            raise RuntimeError("trt.Runtime could not be created (CUDA driver?)")
        engine = self.runtime.deserialize_cuda_engine(engine_path.read_bytes())
        if engine is None:
            raise RuntimeError(
                f"TensorRT {trt.__version__} could not deserialize {engine_path} "
                "(built with another TensorRT version or for another GPU?)"
            )
        stream = torch.cuda.Stream(device=where)
        contexts = []
        for index in range(int(engine.num_optimization_profiles)):
            context = _execution_context(trt, engine)
            if context is None:
                raise RuntimeError(
                    "TensorRT could not create an execution context (out of GPU memory?)"
                )
            if not context.set_optimization_profile_async(index, stream.cuda_stream):
                raise RuntimeError(f"TensorRT refused optimization profile {index}")
            contexts.append(context)
        stream.synchronize()
        if not contexts:
            raise RuntimeError(f"{engine_path} has no optimization profile")
        to_torch = {
            trt.DataType.FLOAT: torch.float32,
            trt.DataType.HALF: torch.float16,
            trt.DataType.INT32: torch.int32,
            trt.DataType.INT64: torch.int64,
        }
        if hasattr(trt.DataType, "BF16"):
            to_torch[trt.DataType.BF16] = torch.bfloat16
        self._setup(torch, where, engine, contexts, manifest, stream, to_torch)

    @classmethod
    def on_engine(
        cls,
        engine: Any,
        contexts: list[Any],
        manifest: dict[str, Any],
        torch: Any,
        device: Any,
        to_torch: dict[Any, Any],
        stream: Any = None,
    ) -> TensorRTRunner:
        """A runner over an engine and its execution contexts (one per profile, in order).

        ``stream`` None means no CUDA: no stream, events or pinned memory. That is for the
        runner's own tests, which drive its bookkeeping (buffers, ping-pong, bindings, row
        writes) on CPU tensors with a stand-in engine; a GPU always has a stream.
        """
        runner = cls.__new__(cls)
        runner._setup(torch, device, engine, contexts, manifest, stream, to_torch)
        return runner

    def _setup(
        self,
        torch: Any,
        device: Any,
        engine: Any,
        contexts: list[Any],
        manifest: dict[str, Any],
        stream: Any,
        to_torch: dict[Any, Any],
    ) -> None:
        self.torch = torch
        self.device = device
        self.engine = engine
        self.stream = stream
        self.io = CacheIO.of_shape(manifest["shape"])
        self.profiles: list[dict[str, Any]] = []
        for index, context in enumerate(contexts):
            limits = {
                name: [
                    tuple(int(d) for d in s) for s in engine.get_tensor_profile_shape(name, index)
                ]
                for name in self.io.input_names
            }
            self.profiles.append({"index": index, "context": context, "limits": limits})
        self.dtypes: dict[str, Any] = {}
        for name in (*self.io.input_names, *self.io.output_names):
            kind = engine.get_tensor_dtype(name)
            if kind not in to_torch:
                raise RuntimeError(f"engine tensor {name} has unsupported type {kind}")
            self.dtypes[name] = to_torch[kind]
        shape = manifest["shape"]
        self.layers = int(shape["num_layers"])
        self.heads = int(shape["num_kv_heads"])
        self.head_dim = int(shape["head_dim"])
        self.vocab_size = int(shape["vocab_size"])
        self.max_rows = max(p["limits"]["input_ids"][2][0] for p in self.profiles)
        self.widest = max(p["limits"]["attention_mask"][2][1] for p in self.profiles)
        pin = stream is not None
        self._host = {
            name: torch.empty((self.max_rows, self.widest), dtype=torch.int64, pin_memory=pin)
            for name in ("input_ids", "attention_mask", "position_ids")
        }
        self._logits = torch.empty(
            (self.max_rows, self.vocab_size), dtype=torch.float32, pin_memory=pin
        )
        self._copied = torch.cuda.Event() if pin else None
        self._staged = torch.cuda.Event() if pin else None
        self.device_logits: Any = None
        self._arenas: list[KV] = []  # reserve: two buffers per cache
        self._plan: dict[str, Any] = {}  # reserve: the step's other buffers
        self.steps_in_place = 0  # decode passes ``step`` ran into its buffers

    # -- the engine's stream (nothing without CUDA: the tests' CPU tensors) -------------------
    def _on_stream(self) -> Any:
        """The engine's stream as the current one inside a ``with`` block."""
        if self.stream is None:
            return contextlib.nullcontext()
        return self.torch.cuda.stream(self.stream)

    def _drive_on_stream(self) -> None:
        # Every torch operation of the thread driving this runner goes to the engine's stream,
        # the scheduler's own writes into the cache too (its in-place re-form indexes these
        # tensors): on another stream they could run before TensorRT finished writing the
        # cache or after it started reading it, and freed blocks could be reused under them.
        if self.stream is not None:
            self.torch.cuda.set_stream(self.stream)

    def _handle(self) -> int:
        return 0 if self.stream is None else int(self.stream.cuda_stream)

    def _record(self, event: Any) -> None:
        if event is not None:
            event.record(self.stream)

    @staticmethod
    def _wait(event: Any) -> None:
        if event is not None:
            event.synchronize()

    def _buffer(self, count: int, dtype: Any, zero: bool = True) -> Any:
        """``count`` elements of ``dtype`` on the device, starting on a 256-byte boundary (what
        ``set_tensor_address`` requires): zeros, so masked columns never hold NaN patterns,
        unless ``zero`` is off (an output the engine writes whole)."""
        torch = self.torch
        item = int(torch.empty(0, dtype=dtype).element_size())
        make = torch.zeros if zero else torch.empty
        raw = make(count + ADDRESS_ALIGNMENT // item, dtype=dtype, device=self.device)
        skip = (-int(raw.data_ptr()) % ADDRESS_ALIGNMENT) // item
        return raw[skip : skip + count]

    # -- the decode loop's buffers --------------------------------------------------------
    def reserve(self, batch: int, width: int) -> None:
        """Preallocate on the device what ``step`` and ``gather`` use: two buffers per cache
        (``batch`` rows x ``width`` columns each), a step's logits, its inputs (3 x ``batch``
        int64, one copy up from a pinned buffer) and its attention mask (``batch`` x the
        widest profile's columns), each on a 256-byte boundary. An engine whose past and
        present caches differ in type cannot swap them: it gets no buffers (``step`` is then
        ``forward``), with a warning."""
        torch = self.torch
        kind = self.cache_dtype
        names = (*self.io.past_names, *self.io.present_names)
        if any(self.dtypes[name] != kind for name in names):
            log.warning(
                "TensorRT engine caches of different types (%s): decode steps allocate",
                {name: str(self.dtypes[name]) for name in names},
            )
            self._arenas, self._plan = [], {}
            return
        size = self._cache_elements((self.layers, batch, self.heads, width, self.head_dim))
        stride = -(-batch // (ADDRESS_ALIGNMENT // 8)) * (ADDRESS_ALIGNMENT // 8)
        self._arenas, self._plan = [], {}  # the old buffers go before the new ones are made
        try:
            with self._on_stream():
                arenas = [(self._buffer(size, kind), self._buffer(size, kind)) for _ in "ab"]
                plan: dict[str, Any] = {
                    "rows": batch,
                    "stride": stride,  # elements between the three inputs: 256-byte multiples
                    "host": torch.zeros(3 * stride, dtype=torch.int64, pin_memory=self._pinned()),
                    "inputs": self._buffer(3 * stride, torch.int64),
                    "logits": self._buffer(batch * self.vocab_size, self.dtypes["logits"]),
                    "mask": self._buffer(batch * self.widest, self.dtypes["attention_mask"]),
                    # The comparison's own result type: no cast temporary inside torch.ge.
                    "ones": self._buffer(batch * self.widest, torch.bool),
                    "columns": torch.arange(self.widest, dtype=torch.int64, device=self.device),
                }
                for name in ("input_ids", "position_ids"):  # an engine taking int32 indices
                    if self.dtypes[name] != torch.int64:
                        plan[name] = self._buffer(batch, self.dtypes[name])
        except RuntimeError as exc:  # torch.cuda.OutOfMemoryError is one
            # Four buffers of the largest batch at the full context; the loop without them
            # holds only the live batch's width. Serving goes on, each step allocating.
            log.warning(
                "TensorRT decode buffers for %d rows x %d columns (4 x %.1f MiB) could not be "
                "made, decode steps allocate their outputs: %s",
                batch,
                width,
                size * int(torch.empty(0, dtype=kind).element_size()) / 2**20,
                exc,
            )
            return
        self._arenas, self._plan = arenas, plan

    def _pinned(self) -> bool:
        return self.stream is not None

    @property
    def cache_dtype(self) -> Any:
        """The type of the engine's cache tensors."""
        return self.dtypes[self.io.past_names[0]]

    def _slab(self, shape: tuple[int, ...]) -> int:
        """Elements between two layers of a cache of ``shape`` [L, B, H, W, D] in a buffer:
        one layer's, rounded up to 256 bytes when the engine binds each layer by itself."""
        layer = int(np.prod(shape[1:]))
        if self.io.stacked:
            return layer
        unit = ADDRESS_ALIGNMENT // int(self.torch.empty(0, dtype=self.cache_dtype).element_size())
        return -(-layer // unit) * unit

    def _cache_elements(self, shape: tuple[int, ...]) -> int:
        """A buffer's elements for a cache of ``shape``, its layers' padding included."""
        return int(shape[0]) * self._slab(shape)

    def _laid_out(self, flat: Any, shape: tuple[int, ...]) -> Any:
        """A cache of ``shape`` over the start of the 1-D ``flat`` (on a 256-byte boundary):
        contiguous when stacked, else each layer a contiguous block on its own boundary."""
        if self.io.stacked:
            return flat[: int(np.prod(shape))].view(shape)
        slab, layer = self._slab(shape), int(np.prod(shape[1:]))
        # Views only (bounds-checked): [L, slab] rows, each cut to its layer and split.
        return flat[: int(shape[0]) * slab].view(int(shape[0]), slab)[:, :layer].view(shape)

    def _bindable_layers(self, tensor: Any) -> bool:
        """Every tensor the engine reads from a cache ``tensor`` is contiguous and aligned."""
        parts = [tensor] if self.io.stacked else [tensor[layer] for layer in range(self.layers)]
        return all(
            part.is_contiguous() and int(part.data_ptr()) % ADDRESS_ALIGNMENT == 0 for part in parts
        )

    def _arena_of(self, kv: KV) -> int:
        """Which buffer pair holds ``kv`` (-1: none)."""
        if not self._arenas or not hasattr(kv[0], "data_ptr") or not hasattr(kv[1], "data_ptr"):
            return -1
        keys, values = int(kv[0].data_ptr()), int(kv[1].data_ptr())
        for index, (k, v) in enumerate(self._arenas):
            if keys == int(k.data_ptr()) and values == int(v.data_ptr()):
                return index
        return -1

    def _views(self, arena: int, shape: tuple[int, ...]) -> KV | None:
        """Views of ``shape`` at the start of a buffer pair, laid out for binding (``_laid_out``;
        None: it does not fit)."""
        keys, values = self._arenas[arena]
        if self._cache_elements(shape) > keys.numel():
            return None
        return self._laid_out(keys, shape), self._laid_out(values, shape)

    def step(
        self, input_ids: Array, attention_mask: Array, position_ids: Array, kv: KV
    ) -> tuple[Array, KV]:
        """A decode pass whose grown cache TensorRT writes into the other buffer (``forward``
        when there are no buffers, the pass is not one token per row, or it does not fit)."""
        plan = self._plan
        rows, seq = (int(d) for d in input_ids.shape)
        past = int(kv[0].shape[3])  # the runtime's caches are stacked [L, B, H, W, D]
        columns = int(attention_mask.shape[1])
        if columns != past + seq:
            raise ValueError(
                f"attention_mask has {columns} columns for a {past}-column cache and {seq} "
                "new tokens"
            )
        if not self._arenas or seq != 1 or rows > plan["rows"] or columns > self.widest:
            return self.forward(input_ids, attention_mask, position_ids, kv)
        profile = self._profile(rows, seq, past)  # raises the named error outside them all
        if rows > profile["limits"]["input_ids"][2][0]:
            return self.forward(input_ids, attention_mask, position_ids, kv)  # split there
        source = self._arena_of(kv)
        shape = (self.layers, rows, self.heads, past + seq, self.head_dim)
        out = self._views(1 if source == 0 else 0, shape)
        if out is None:
            return self.forward(input_ids, attention_mask, position_ids, kv)
        self._drive_on_stream()
        with self._on_stream():
            cache = kv if source >= 0 else self._bindable(kv)
            ids, positions, mask = self._stage_step(input_ids, attention_mask, position_ids)
            logits = plan["logits"][: rows * self.vocab_size].view(rows, self.vocab_size)
            context = profile["context"]
            self._bind_inputs(profile, self.io.feeds(ids, mask, positions, cache))
            outputs = {"logits": logits, **self.io.present(out)}
            for name, tensor in outputs.items():
                inferred = tuple(int(d) for d in context.get_tensor_shape(name))
                if inferred != tuple(tensor.shape):
                    raise RuntimeError(
                        f"TensorRT infers {name} of shape {inferred}; the step's buffer is "
                        f"{tuple(tensor.shape)}"
                    )
                if not context.set_tensor_address(name, int(tensor.data_ptr())):
                    raise RuntimeError(f"TensorRT refused the address of {name}")
            if not context.execute_async_v3(self._handle()):
                raise RuntimeError("TensorRT execution failed (execute_async_v3 returned False)")
            self.device_logits = logits
            self.steps_in_place += 1
            if not self.host_logits:
                return logits, out
            host = self._logits[:rows]
            host.copy_(logits, non_blocking=True)
            self._record(self._copied)
        self._wait(self._copied)  # the one wait per pass: the logits are on the host
        return host.numpy().copy(), out

    def _bindable(self, kv: KV) -> KV:
        """A cache outside the buffers as TensorRT can read it: the engine's type, each tensor
        it binds contiguous and on a 256-byte boundary (copied only when it is not)."""
        kind = self.cache_dtype
        made = []
        for tensor in kv:
            moved = self.torch.as_tensor(tensor).to(device=self.device, dtype=kind)
            if not self._bindable_layers(moved):
                shape = tuple(int(d) for d in moved.shape)
                copy = self._laid_out(self._buffer(self._cache_elements(shape), kind), shape)
                copy.copy_(moved)
                moved = copy
            made.append(moved)
        return made[0], made[1]

    def _stage_step(
        self, input_ids: Array, attention_mask: Array, position_ids: Array
    ) -> tuple[Any, Any, Any]:
        """The step's inputs on the device, in the reserved buffers: ids and positions [B, 1]
        and the attention mask [B, C]. A mask of the loop's form (each row: zeros, then ones to
        the end) goes up as each row's first one and is rebuilt on the device (one comparison
        with the column numbers); any other mask is copied up whole."""
        torch, plan = self.torch, self._plan
        rows, columns = (int(d) for d in attention_mask.shape)
        stride = plan["stride"]
        mask_host = np.asarray(attention_mask)
        suffix = bool(
            mask_host.min() >= 0
            and mask_host.max() <= 1
            and (mask_host[:, 1:] >= mask_host[:, :-1]).all()
        )
        self._wait(self._staged)  # the previous upload has left the pinned buffers
        host = plan["host"].numpy()
        host[:rows] = input_ids[:, 0]
        host[stride : stride + rows] = position_ids[:, 0]
        used = stride + rows
        if suffix:
            host[2 * stride : 2 * stride + rows] = columns - mask_host.sum(axis=1)
            used = 2 * stride + rows
        device = plan["inputs"]
        device[:used].copy_(plan["host"][:used], non_blocking=True)
        mask = plan["mask"][: rows * columns].view(rows, columns)
        if not suffix:
            staged = self._host["attention_mask"].view(-1)[: rows * columns].view(rows, columns)
            staged.numpy()[...] = mask_host
            mask.copy_(staged, non_blocking=True)
        self._record(self._staged)
        ids = device[:rows].view(rows, 1)
        positions = device[stride : stride + rows].view(rows, 1)
        if suffix:
            first = device[2 * stride : 2 * stride + rows].view(rows, 1)
            ones = plan["ones"][: rows * columns].view(rows, columns)
            torch.ge(plan["columns"][:columns].expand(rows, columns), first, out=ones)
            mask.copy_(ones)
        if "input_ids" in plan:
            plan["input_ids"][:rows].copy_(ids[:, 0])
            ids = plan["input_ids"][:rows].view(rows, 1)
        if "position_ids" in plan:
            plan["position_ids"][:rows].copy_(positions[:, 0])
            positions = plan["position_ids"][:rows].view(rows, 1)
        return ids, positions, mask

    def _bind_inputs(self, profile: dict[str, Any], tensors: dict[str, Any]) -> None:
        context = profile["context"]
        for name in self.io.input_names:
            shape = tuple(int(d) for d in tensors[name].shape)
            if not context.set_input_shape(name, shape):
                low, _, high = profile["limits"][name]
                raise ValueError(
                    f"TensorRT refused {name} of shape {shape} (profile {profile['index']}: "
                    f"{low}..{high})"
                )
            if not context.set_tensor_address(name, int(tensors[name].data_ptr())):
                raise RuntimeError(f"TensorRT refused the address of {name}")

    def _profile(self, rows: int, seq: int, past: int) -> dict[str, Any]:
        """The profile a pass runs in: decode when it fits, else the first one that does."""
        fits = []
        first, axis = self.io.past_names[0], self.io.column_axis
        for profile in self.profiles:
            ids, kv = profile["limits"]["input_ids"], profile["limits"][first]
            if ids[0][1] <= seq <= ids[2][1] and kv[0][axis] <= past <= kv[2][axis]:
                fits.append(profile)
        if not fits:
            ranges = [
                f"profile {p['index']}: tokens {p['limits']['input_ids'][0][1]}.."
                f"{p['limits']['input_ids'][2][1]}, cache {p['limits'][first][0][axis]}.."
                f"{p['limits'][first][2][axis]}"
                for p in self.profiles
            ]
            raise ValueError(
                f"no TensorRT profile takes {seq} new tokens over a {past}-column cache "
                f"({'; '.join(ranges)}); rebuild with a larger --max-context"
            )
        # Most rows first: a pass is split only when no profile holds all its rows.
        return max(fits, key=lambda p: p["limits"]["input_ids"][2][0])

    def forward(
        self, input_ids: Array, attention_mask: Array, position_ids: Array, kv: KV
    ) -> tuple[Array, KV]:
        """One pass on the GPU; only the logits come back to the host."""
        self._drive_on_stream()
        rows, seq = input_ids.shape
        profile = self._profile(rows, seq, int(kv[0].shape[3]))
        limit = profile["limits"]["input_ids"][2][0]
        if rows <= limit:
            return self._run(profile, input_ids, attention_mask, position_ids, kv)
        # More rows than the profile holds (a big prefill): run them in slices.
        logits, keys, values = [], [], []
        for start in range(0, rows, limit):
            part = slice(start, start + limit)
            got, (k, v) = self._run(
                profile,
                input_ids[part],
                attention_mask[part],
                position_ids[part],
                (kv[0][:, part], kv[1][:, part]),
            )
            logits.append(got)
            keys.append(k)
            values.append(v)
        with self._on_stream():
            merged = (self.torch.cat(keys, dim=1), self.torch.cat(values, dim=1))
            if not self.host_logits:
                self.device_logits = self.torch.cat(logits, dim=0)
                return self.device_logits, merged
        return np.concatenate(logits, axis=0), merged

    def _run(
        self,
        profile: dict[str, Any],
        input_ids: Array,
        attention_mask: Array,
        position_ids: Array,
        kv: KV,
    ) -> tuple[Array, KV]:
        context = profile["context"]
        rows = input_ids.shape[0]
        with self._on_stream():
            tensors: dict[str, Any] = {}
            feeds = {
                "input_ids": input_ids,
                "attention_mask": attention_mask,
                "position_ids": position_ids,
            }
            # The previous pass's uploads must have left the pinned buffers before they are
            # overwritten (without a host copy of the logits nothing else waited for them).
            self._wait(self._staged)
            for name, array in feeds.items():
                # A contiguous [rows, cols] view of the flat pinned buffer: one DMA, no temp.
                staged = self._host[name].view(-1)[: array.size].view(array.shape)
                staged.numpy()[...] = array
                device = staged.to(self.device, non_blocking=True)
                tensors[name] = device.to(self.dtypes[name]).contiguous()
            self._record(self._staged)
            tensors.update(self.io.past(self._bindable(kv)))
            self._bind_inputs(profile, tensors)
            shapes = {}
            for name in self.io.output_names:
                shape = tuple(int(d) for d in context.get_tensor_shape(name))
                if any(d < 0 for d in shape):
                    raise RuntimeError(f"TensorRT could not infer the shape of {name}: {shape}")
                shapes[name] = shape
            # Outputs on boundaries whatever the allocator gives (CUDA's does; host memory
            # not), left unzeroed (the engine writes them whole); a per-layer graph's cache
            # outputs are the layers of one laid-out stack per kind, so nothing is stacked after.
            logits = self._buffer(int(np.prod(shapes["logits"])), self.dtypes["logits"], False)
            tensors["logits"] = logits.view(shapes["logits"])
            layer = shapes[self.io.present_names[0]]
            stacked = layer if self.io.stacked else (self.layers, *layer)
            present = tuple(
                self._laid_out(
                    self._buffer(self._cache_elements(stacked), self.dtypes[name], False), stacked
                )
                for name in self.io.present_names[:2]  # the keys' and the values' types
            )
            tensors.update(self.io.present((present[0], present[1])))
            for name in self.io.output_names:
                if tuple(tensors[name].shape) != shapes[name]:
                    raise RuntimeError(
                        f"TensorRT infers {name} of shape {shapes[name]}; its buffer is "
                        f"{tuple(tensors[name].shape)}"
                    )
                if not context.set_tensor_address(name, int(tensors[name].data_ptr())):
                    raise RuntimeError(f"TensorRT refused the address of {name}")
            if not context.execute_async_v3(self._handle()):
                raise RuntimeError("TensorRT execution failed (execute_async_v3 returned False)")
            self.device_logits = tensors["logits"]
            if not self.host_logits:
                # The decode loop samples on the GPU (sampling_torch): no copy, no wait.
                return tensors["logits"], (present[0], present[1])
            out = self._logits[:rows]
            out.copy_(tensors["logits"].float(), non_blocking=True)
            self._record(self._copied)
        self._wait(self._copied)  # the one wait per pass: the logits are on the host
        logits = out.numpy().copy()  # the pinned buffer is reused by the next pass
        return logits, (present[0], present[1])

    def empty(self, batch: int, width: int) -> KV:
        """Zero cache on the GPU."""
        shape = (self.layers, batch, self.heads, width, self.head_dim)
        dtype = self.cache_dtype
        make = self.torch.zeros
        with self._on_stream():
            return make(shape, dtype=dtype, device=self.device), make(
                shape, dtype=dtype, device=self.device
            )

    # Every cache operation runs on the engine's stream: torch's side streams do not wait for
    # the default stream, so a cache built there could still be in flight when TensorRT reads it
    # (and freed blocks could be reused while the other stream still reads them).
    def pad_left(self, kv: KV, columns: int) -> KV:
        """Zero columns in front."""
        pad = self.torch.nn.functional.pad
        with self._on_stream():
            return pad(kv[0], (0, 0, columns, 0)), pad(kv[1], (0, 0, columns, 0))

    def concat(self, parts: list[KV]) -> KV:
        """Batch concatenation."""
        cat = self.torch.cat
        with self._on_stream():
            return cat([p[0] for p in parts], dim=1), cat([p[1] for p in parts], dim=1)

    def take(self, kv: KV, rows: list[int]) -> KV:
        """Row selection."""
        with self._on_stream():
            index = self.torch.tensor(rows, device=self.device)
            return kv[0].index_select(1, index), kv[1].index_select(1, index)

    def trim_left(self, kv: KV, columns: int) -> KV:
        """Column trim."""
        with self._on_stream():
            return kv[0][:, :, :, columns:].contiguous(), kv[1][:, :, :, columns:].contiguous()

    def gather(self, parts: list[tuple[KV, list[int]]], width: int) -> KV:
        """A cache of ``width`` columns whose rows are, in order, the listed rows of each part,
        right-aligned (their last ``width`` columns, zeros in front of shorter ones), written
        into the buffer pair the batch is not in (fresh tensors when none is free or it does
        not fit): one device copy per run of consecutive rows, no index tensor."""
        torch = self.torch
        rows = sum(len(r) for _, r in parts)
        shape = (self.layers, rows, self.heads, width, self.head_dim)
        busy = {self._arena_of(kv) for kv, _ in parts}
        target = next((i for i in range(len(self._arenas)) if i not in busy), -1)
        with self._on_stream():
            out = self._views(target, shape) if target >= 0 else None
            if out is None:
                dtype = self.cache_dtype
                out = (
                    torch.empty(shape, dtype=dtype, device=self.device),
                    torch.empty(shape, dtype=dtype, device=self.device),
                )
            row = 0
            for kv, picks in parts:
                have = int(kv[0].shape[3])
                keep = min(have, width)
                for first, count in _runs(picks):
                    rows_out = slice(row, row + count)
                    rows_in = slice(first, first + count)
                    for dst, src in zip(out, kv, strict=True):
                        dst[:, rows_out, :, width - keep :] = src[:, rows_in, :, have - keep :]
                        if keep < width:
                            dst[:, rows_out, :, : width - keep].zero_()
                    row += count
        return out

    def sample_on_device(
        self,
        logits: Any,
        temperature: Array,
        top_p: Array,
        top_k: Array,
        draws: Array,
        min_p: Array | None = None,
    ) -> tuple[Array, Array]:
        """Tokens and their log-probabilities sampled on the GPU from logits [B, V].

        ``logits`` None means the last pass's, still on the device. ``sampling_torch``'s rule,
        which is ``sampling.py``'s (the decode loop calls it directly, with the per-request
        options; this is the bare form for checks). Only the B ids and log-probabilities
        come back.
        """
        from . import sampling_torch

        torch = self.torch
        with self._on_stream():
            source = self.device_logits if logits is None else logits
            values = torch.as_tensor(source, device=self.device).float()
            lse = sampling_torch.logsumexp(values)
            floor = np.zeros(len(temperature)) if min_p is None else min_p
            chosen = sampling_torch.sample(values.clone(), temperature, top_p, top_k, floor, draws)
            logprobs = values.gather(1, chosen[:, None])[:, 0] - lse
            out = torch.stack([chosen.double(), logprobs.double()]).cpu()  # synchronizes
        return out[0].numpy().astype(np.int64), out[1].numpy().astype(np.float32)


# set_tensor_address: "the pointer must have at least 256-byte alignment" (NvInferRuntime.h).
ADDRESS_ALIGNMENT = 256


def _runs(picks: list[int]) -> list[tuple[int, int]]:
    """``picks`` as runs of consecutive rows: (first row, count) each, in order."""
    runs: list[tuple[int, int]] = []
    for pick in picks:
        if runs and runs[-1][0] + runs[-1][1] == pick:
            runs[-1] = (runs[-1][0], runs[-1][1] + 1)
        else:
            runs.append((int(pick), 1))
    return runs


def _execution_context(trt: Any, engine: Any) -> Any:
    """An execution context whose scratch memory fits the one profile it selects.

    STATIC (the default) gives every context memory for the largest profile, so the decode
    context would hold the prefill's rows x context² too. ON_PROFILE_CHANGE sizes it for the
    selected profile: through a runtime config where the engine has one (10.11+, 11), else as
    the strategy argument (10.x); where neither is accepted, the default.
    """
    strategies = getattr(trt, "ExecutionContextAllocationStrategy", None)
    per_profile = getattr(strategies, "ON_PROFILE_CHANGE", None)
    if per_profile is not None:
        make_config = getattr(engine, "create_runtime_config", None)
        if make_config is not None:
            try:
                config = make_config()
                config.set_execution_context_allocation_strategy(per_profile)
                return engine.create_execution_context(config)
            except (TypeError, AttributeError):  # an overload or method this release lacks
                log.debug("no runtime-config execution context", exc_info=True)
        try:
            return engine.create_execution_context(per_profile)
        except TypeError:
            log.debug("no allocation-strategy execution context", exc_info=True)
    return engine.create_execution_context()


def tensorrt_usable() -> str | None:
    """None when a CUDA GPU and the tensorrt package are present, else the reason why not."""
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        return "the tensorrt package is not installed (pip install 'genwire[gpu]')"
    except Exception as exc:  # a broken install (missing CUDA libraries) is not a crash
        return f"the tensorrt package does not load: {type(exc).__name__}: {exc}"
    try:
        import torch
    except ImportError:
        return "torch is not installed (the TensorRT runner keeps the KV cache in torch tensors)"
    try:
        if not torch.cuda.is_available():
            return "no CUDA GPU is visible"
    except Exception as exc:
        return f"CUDA is not usable: {type(exc).__name__}: {exc}"
    return None


ORT_GRAPH_FILE = "model.ort.onnx"
"""ONNX Runtime's copy of the graph with the transformer fusions (``genwire_model.ort_graph``),
recorded in the manifest's ``build.onnxruntime_graph``; ``model.onnx`` stays the portable one."""


def onnxruntime_graph(version_dir: Path, manifest: dict[str, Any]) -> Path:
    """The graph ONNX Runtime serves for a version: its fused copy when the build made one (and
    validated it), else ``model.onnx`` (versions built before it, ``--onnxruntime-graph
    portable``, a fusion that failed, an INT8 graph)."""
    record = manifest.get("build", {}).get("onnxruntime_graph") or {}
    name = record.get("file")
    if not name:
        return version_dir / "model.onnx"
    path = version_dir / str(name)
    if not path.is_file():
        # The manifest says it was built: a missing file is a damaged version, not a choice.
        raise FileNotFoundError(f"{path}: the manifest's ONNX Runtime graph is missing")
    return path


STATUS_FILE = "runtime-status.json"
BUILD_ON_LOAD_ENV = "GENWIRE_TENSORRT_BUILD_ON_LOAD"
BACKEND_ENV = "GENWIRE_MODEL_BACKEND"  # overrides config.pbtxt's backend: auto|onnxruntime|tensorrt
FALLBACK_STAGES = ("build", "deserialize", "run")
# Each version's reporter lives as long as the process: Triton drops a metric family whose
# Python object is collected, and a runner that fell back at load does not hold its reporter.
_REPORTS: dict[str, Any] = {}

log = logging.getLogger(__name__)


class _Fallback:
    """Where a runner's fall back to ONNX Runtime is reported: log, Triton metric, status file.

    The status file (``runtime-status.json`` in the version folder) says which backend serves
    the version and, after a fallback, at which stage (build, deserialize, run) and why;
    ``genwire model list`` prints it. The metric ``genwire_tensorrt_fallback_total`` (labels
    model, version, stage) appears on Triton's metrics port when running inside Triton.
    """

    def __init__(self, version_dir: Path, record: bool = True) -> None:
        self.version_dir = version_dir
        self.record = record  # False: log and metric only, the status file is left alone
        self.model = version_dir.parent.name
        self.version = version_dir.name
        self.events: list[dict[str, str]] = []
        self.graph = ""  # the file ONNX Runtime serves (or falls back to) for this version
        self._family: Any = None
        self._metrics: dict[str, Any] = {}

    def status(self, backend: str, engine: str = "", reason: str = "") -> None:
        """Record the backend now serving (and every fallback so far); ``reason``: why ONNX
        Runtime serves when TensorRT was not even tried."""
        if not self.record:
            return
        record = {
            "backend": backend,
            "engine": engine,
            "fallbacks": self.events,
            "updated": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        if reason:
            record["reason"] = reason
        if backend == "onnxruntime" and self.graph:
            record["graph"] = self.graph
        path = self.version_dir / STATUS_FILE
        try:
            tmp = path.with_name(f".{STATUS_FILE}.{os.getpid()}")
            tmp.write_text(json.dumps(record, indent=2), encoding="utf-8")
            os.replace(tmp, path)
        except OSError:  # a read-only repository: the log and the metric still say it
            log.debug("could not write %s", path, exc_info=True)

    def report(self, stage: str, reason: str) -> None:
        """A fallback at ``stage`` (build, deserialize, run): warn, count, record."""
        log.warning(
            "%s version %s: TensorRT %s failed, serving with ONNX Runtime instead: %s",
            self.model,
            self.version,
            stage,
            reason,
        )
        self.events.append({"stage": stage, "reason": reason[:2000]})
        self._count(stage)
        self.status("onnxruntime")

    def open_metrics(self) -> None:
        """Inside Triton: the counter at 0 for every stage from the load on. A version falls
        back at most once, so a series born at 1 would be an increase Prometheus never sees."""
        for stage in FALLBACK_STAGES:
            self._metric(stage)

    def _count(self, stage: str) -> None:
        metric = self._metric(stage)
        if metric is None:
            return
        try:
            metric.increment(1)
        except Exception:  # metrics are best effort; serving goes on
            log.debug("could not count the fallback", exc_info=True)

    def _metric(self, stage: str) -> Any:
        """The counter of ``stage`` (None outside Triton's stub or when metrics fail)."""
        if stage in self._metrics:
            return self._metrics[stage]
        try:
            import triton_python_backend_utils as pb_utils  # only inside Triton's stub
        except ImportError:
            return None
        try:
            if self._family is None:
                self._family = pb_utils.MetricFamily(
                    name="genwire_tensorrt_fallback_total",
                    description="TensorRT failures that made a model version fall back to "
                    "ONNX Runtime, by stage (build, deserialize, run)",
                    kind=pb_utils.MetricFamily.COUNTER,
                )
            labels = {"model": self.model, "version": self.version, "stage": stage}
            self._metrics[stage] = self._family.Metric(labels=labels)
        except Exception:  # metrics are best effort; serving goes on
            log.debug("could not create the fallback counter", exc_info=True)
            return None
        return self._metrics[stage]


def _to_host(kv: KV) -> KV:
    """A cache as float32 numpy arrays (from torch CUDA tensors when TensorRT made it)."""
    if isinstance(kv[0], np.ndarray):
        return kv
    return (
        np.ascontiguousarray(kv[0].float().cpu().numpy()),
        np.ascontiguousarray(kv[1].float().cpu().numpy()),
    )


class FallbackRunner:
    """TensorRT until it fails, ONNX Runtime from then on, without dropping the batch.

    A pass TensorRT cannot run is rerun by ONNX Runtime on the same inputs (the cache is copied
    to the host once); every later pass and cache operation goes to ONNX Runtime. The cache's
    masked dummy column of TensorRT's prefills stays harmless: ONNX Runtime masks it too.
    Other attributes (``backend``, ``min_past``, ``vocab_size``, anything a runner adds) are
    the active runner's, read and written. After a fallback the logits are numpy again: the
    decode loop, which set ``host_logits = False``, picks its sampler by the logits' type per
    pass (torch tensor: ``sampling_torch`` on the device; numpy: ``sampling``).
    """

    def __init__(self, primary: Any, make_fallback: Any, fallback: _Fallback) -> None:
        self.active = primary
        self._make_fallback = make_fallback
        self._report = fallback
        self.failed = False
        self._reserved: tuple[int, int] | None = None

    _OWN = frozenset({"active", "_make_fallback", "_report", "failed", "_reserved"})

    def __getattr__(self, name: str) -> Any:
        return getattr(self.__dict__["active"], name)

    def __setattr__(self, name: str, value: Any) -> None:
        # Settings such as ``host_logits`` reach the runner doing the work.
        if name in self._OWN:
            object.__setattr__(self, name, value)
        else:
            setattr(self.active, name, value)

    def _switch(self, exc: BaseException) -> None:
        self._report.report("run", f"{type(exc).__name__}: {exc}")
        self.active = self._make_fallback()
        self.failed = True
        if self._reserved is not None:  # the decode loop's buffers, on the new side
            reserve = getattr(self.active, "reserve", None)
            if reserve is not None:
                reserve(*self._reserved)

    def reserve(self, batch: int, width: int) -> None:
        """The active runner's step buffers (and ONNX Runtime's after a fallback)."""
        self._reserved = (batch, width)
        reserve = getattr(self.active, "reserve", None)
        if reserve is not None:
            reserve(batch, width)

    def step(
        self, input_ids: Array, attention_mask: Array, position_ids: Array, kv: KV
    ) -> tuple[Array, KV]:
        """TensorRT's decode step, or ONNX Runtime's when TensorRT fails (the scheduler binds
        this method once: the step must fall back here, not by re-reading the attribute)."""
        if not self.failed:
            try:
                step = getattr(self.active, "step", self.active.forward)
                result: tuple[Array, KV] = step(input_ids, attention_mask, position_ids, kv)
                return result
            except Exception as exc:
                log.exception("TensorRT step failed")
                self._switch(exc)
        step = getattr(self.active, "step", self.active.forward)
        result = step(input_ids, attention_mask, position_ids, _to_host(kv))
        return result

    def forward(
        self, input_ids: Array, attention_mask: Array, position_ids: Array, kv: KV
    ) -> tuple[Array, KV]:
        """TensorRT's pass, or ONNX Runtime's when TensorRT fails."""
        if not self.failed:
            try:
                result: tuple[Array, KV] = self.active.forward(
                    input_ids, attention_mask, position_ids, kv
                )
                return result
            except Exception as exc:
                log.exception("TensorRT pass failed")
                self._switch(exc)
        result = self.active.forward(input_ids, attention_mask, position_ids, _to_host(kv))
        return result

    def empty(self, batch: int, width: int) -> KV:
        """A zero cache of the active runner."""
        kv: KV = self.active.empty(batch, width)
        return kv

    def pad_left(self, kv: KV, columns: int) -> KV:
        """Zero columns in front (on the active runner's side)."""
        out: KV = self.active.pad_left(self._own(kv), columns)
        return out

    def concat(self, parts: list[KV]) -> KV:
        """Batch concatenation."""
        out: KV = self.active.concat([self._own(p) for p in parts])
        return out

    def take(self, kv: KV, rows: list[int]) -> KV:
        """Row selection."""
        out: KV = self.active.take(self._own(kv), rows)
        return out

    def trim_left(self, kv: KV, columns: int) -> KV:
        """Column trim."""
        out: KV = self.active.trim_left(self._own(kv), columns)
        return out

    def gather(self, parts: list[tuple[KV, list[int]]], width: int) -> KV:
        """Row selection and right-alignment in one copy (both runners have it)."""
        gather = getattr(self.active, "gather", None)
        if gather is None:  # a runner without it: the basic operations
            return gather_basic(self, parts, width)
        out: KV = gather([(self._own(kv), rows) for kv, rows in parts], width)
        return out

    def _own(self, kv: KV) -> KV:
        return _to_host(kv) if self.failed else kv


def _recorded_agreement(plan: Path) -> dict[str, Any] | None:
    """The agreement figures in an engine's ``tensorrt.json`` (None: none recorded)."""
    from .tensorrt_engine import RECORD

    try:
        record = json.loads((plan.parent / RECORD).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    figures = record.get("agreement") if isinstance(record, dict) else None
    return figures if isinstance(figures, dict) else None


def _build_on_load(version_dir: Path, manifest: dict[str, Any], key: dict[str, str]) -> Path:
    """Build the engine for this GPU and TensorRT into the version folder (load time)."""
    from .tensorrt_engine import PLAN, build_engine, engine_dir, quantized_graph

    options = manifest.get("build", {}).get("options", {})
    out = engine_dir(version_dir, key)
    # A quantized version's engine comes from its Q/DQ graph (--quantize int8|fp8).
    quantized = quantized_graph(manifest)
    build_engine(
        version_dir / (quantized[1] if quantized else "model.onnx"),
        out,
        manifest["shape"],
        int(options.get("max_batch", 32)),
        int(manifest["context_length"]),
        progress=log.info,
        quantized=quantized[0] if quantized else "",
    )
    return out / PLAN


def create_runner(
    version_dir: Path,
    threads: int = DEFAULT_INTRA_OP_THREADS,
    prefer: str = "auto",
    allow_spinning: bool = False,
    record_status: bool | None = None,
) -> Runner:
    """The runner for a version folder: TensorRT on a GPU when it works, else ONNX Runtime.

    ``prefer`` is "auto", "onnxruntime" or "tensorrt". "auto" uses the engine built for this
    TensorRT version and GPU (``engines/<key>/``), building it now if the version has none
    (unless ``GENWIRE_TENSORRT_BUILD_ON_LOAD=0``), and falls back to ONNX Runtime, with a
    warning, the ``genwire_tensorrt_fallback_total`` metric and the reason in the version's
    ``runtime-status.json``, whenever the engine cannot be built, deserialized or run.
    "tensorrt" raises instead of falling back at load. ``GENWIRE_MODEL_BACKEND`` in the
    environment overrides ``prefer``.

    ``record_status`` None writes ``runtime-status.json`` only inside Triton's stub: the file
    says what the served version runs on, so a build's smoke test, a benchmark or a backend
    comparison on the same folder must not overwrite it.
    """
    version_dir = Path(version_dir)
    manifest = json.loads((version_dir / "manifest.json").read_text(encoding="utf-8"))
    if record_status is None:
        record_status = "triton_python_backend_utils" in sys.modules
    report = _REPORTS[str(version_dir)] = _Fallback(version_dir, record_status)
    # An operator's override for every model of this process (e.g. to compare backends).
    chosen = f"{BACKEND_ENV}={os.environ[BACKEND_ENV]}" if os.environ.get(BACKEND_ENV) else ""
    prefer = os.environ.get(BACKEND_ENV) or prefer

    graph = onnxruntime_graph(version_dir, manifest)
    report.graph = graph.name

    def onnxruntime() -> Runner:
        return OnnxRuntimeRunner(graph, manifest, threads, allow_spinning)

    if prefer not in ("auto", "tensorrt"):
        report.status("onnxruntime", reason=f"backend {prefer} ({chosen or 'configured'})")
        return onnxruntime()
    from .tensorrt_engine import quantized_graph

    quantized = quantized_graph(manifest)
    if manifest.get("quantization") and quantized is None:
        # ONNX Runtime's INT8 graph (--quantize int8: MatMulInteger, DynamicQuantizeLinear) is
        # not TensorRT's to build: no engine is tried, so no failing build at every load. A
        # version built on a GPU also has ModelOpt's Q/DQ graph (quantized): TensorRT's.
        if prefer == "tensorrt":
            raise RuntimeError(
                "TensorRT backend requested but this version's graph is ONNX Runtime's INT8 "
                "(--quantize int8)"
            )
        report.status("onnxruntime", reason="INT8 graph (--quantize int8): ONNX Runtime's")
        return onnxruntime()
    reason = tensorrt_usable()
    if reason is not None:
        if prefer == "tensorrt":
            raise RuntimeError(f"TensorRT backend requested but {reason}")
        if "tensorrt package is not installed" not in reason:
            # Installed but unusable (a broken install, no GPU in the container): an operator
            # who installed TensorRT expects it, so this is said, not only recorded.
            log.warning("%s: TensorRT not used, ONNX Runtime serves: %s", version_dir, reason)
        report.status("onnxruntime", reason=reason)
        return onnxruntime()
    report.open_metrics()
    stage, key_label = "deserialize", ""
    try:
        from .tensorrt_engine import TensorRTBuildError, current_key, find_engine, key_name

        key = current_key()
        key_label = key_name(key)
        if quantized is not None and quantized[0] == "fp8":
            from .tensorrt_engine import fp8_unsupported

            unsupported = fp8_unsupported(key["compute_capability"])
            if unsupported is not None:
                stage = "build"
                raise TensorRTBuildError(f"the FP8 engine cannot run here: {unsupported}")
        engine = find_engine(version_dir, key)
        built_now = engine is None
        recorded = _recorded_agreement(engine) if engine is not None else None
        if recorded is not None:
            # An engine built at load that disagreed with ONNX Runtime stays on disk with its
            # figures (a rebuild would disagree the same way): it is never served.
            from .tensorrt_engine import check_agreement

            stage = "run"
            check_agreement(recorded)
            stage = "deserialize"
        if engine is None:
            if prefer == "auto" and os.environ.get(BUILD_ON_LOAD_ENV, "1") == "0":
                report.status(
                    "onnxruntime", reason=f"no engine for {key_label}, {BUILD_ON_LOAD_ENV}=0"
                )
                return onnxruntime()
            stage = "build"
            tried = manifest.get("build", {}).get("tensorrt", {})
            if prefer == "auto" and tried.get("attempted_key") == key_label:
                # The version's build already failed for this TensorRT and GPU with the same
                # graph and code: every load (every Triton restart) would fail it again.
                raise TensorRTBuildError(
                    f"not retried at load: the build for {key_label} failed "
                    f"({tried.get('reason', 'no reason recorded')})"
                )
            engine = _build_on_load(version_dir, manifest, key)
            stage = "deserialize"
        runner = TensorRTRunner(engine, manifest)
        if built_now:
            # As at build time: run the new engine against ONNX Runtime once, keep the figures.
            from .tensorrt_engine import agreement, check_agreement, record_agreement

            stage = "run"
            context = int(manifest["context_length"])
            # Against the portable graph, as the build's check: the graph TensorRT built from.
            reference = OnnxRuntimeRunner(version_dir / "model.onnx", manifest, threads)
            figures = agreement(runner, reference, runner.vocab_size, context)
            if quantized is not None:
                figures["quantized"] = quantized[0]  # judged on its KL (check_agreement)
            record_agreement(engine, figures)
            check_agreement(figures)
    except Exception as exc:
        if prefer == "tensorrt":
            raise
        log.exception("TensorRT %s failed", stage)
        report.report(stage, f"{type(exc).__name__}: {exc}")
        return onnxruntime()
    report.status("tensorrt", key_label)
    return FallbackRunner(runner, onnxruntime, report)  # type: ignore[return-value]
