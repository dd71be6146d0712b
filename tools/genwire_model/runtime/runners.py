"""Runners execute one forward pass of the KV-cache graph: ONNX Runtime (CPU) or TensorRT (GPU).

Both take numpy ``input_ids``, ``attention_mask`` and ``position_ids`` and return numpy logits;
the KV cache stays in the runner's own memory (numpy arrays, or torch CUDA tensors for
TensorRT) and is handled only through the runner's cache operations, so it never leaves the
device it lives on.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

INPUT_NAMES = ("input_ids", "attention_mask", "position_ids", "past_keys", "past_values")
OUTPUT_NAMES = ("logits", "present_keys", "present_values")

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


class OnnxRuntimeRunner:
    """The ONNX graph on ONNX Runtime's CPU execution provider."""

    backend = "onnxruntime"
    min_past = 0

    def __init__(
        self,
        model_path: Path,
        manifest: dict[str, Any],
        threads: int = 2,
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

    def forward(
        self, input_ids: Array, attention_mask: Array, position_ids: Array, kv: KV
    ) -> tuple[Array, KV]:
        """One pass; returns last-position logits and the grown cache."""
        logits, keys, values = self.session.run(
            list(OUTPUT_NAMES),
            {
                "input_ids": input_ids,
                "attention_mask": attention_mask,
                "position_ids": position_ids,
                "past_keys": kv[0],
                "past_values": kv[1],
            },
        )
        return logits, (keys, values)

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
    """A serialized TensorRT engine of the same graph; the cache lives in CUDA memory (torch)."""

    backend = "tensorrt"
    min_past = 1  # the engine's profiles start at one past column: no zero-sized tensors

    def __init__(self, engine_path: Path, manifest: dict[str, Any], device: int = 0) -> None:
        import tensorrt as trt
        import torch as torch_module

        torch: Any = torch_module
        self.torch = torch
        self.device = torch.device("cuda", device)
        torch.cuda.set_device(self.device)
        self.logger = trt.Logger(trt.Logger.WARNING)
        self.runtime = trt.Runtime(self.logger)
        self.engine = self.runtime.deserialize_cuda_engine(engine_path.read_bytes())
        if self.engine is None:
            raise RuntimeError(
                f"TensorRT {trt.__version__} could not deserialize {engine_path} "
                "(built with another TensorRT version or for another GPU?)"
            )
        self.context = self.engine.create_execution_context()
        self.stream = torch.cuda.Stream(device=self.device)
        to_torch = {
            trt.DataType.FLOAT: torch.float32,
            trt.DataType.HALF: torch.float16,
            trt.DataType.INT32: torch.int32,
            trt.DataType.INT64: torch.int64,
        }
        if hasattr(trt.DataType, "BF16"):
            to_torch[trt.DataType.BF16] = torch.bfloat16
        self.dtypes = {
            name: to_torch[self.engine.get_tensor_dtype(name)]
            for name in (*INPUT_NAMES, *OUTPUT_NAMES)
        }
        shape = manifest["shape"]
        self.layers = int(shape["num_layers"])
        self.heads = int(shape["num_kv_heads"])
        self.head_dim = int(shape["head_dim"])
        self.vocab_size = int(shape["vocab_size"])

    def forward(
        self, input_ids: Array, attention_mask: Array, position_ids: Array, kv: KV
    ) -> tuple[Array, KV]:
        """One pass on the GPU; only the logits come back to the host."""
        torch = self.torch
        with torch.cuda.stream(self.stream):
            feeds = {
                "input_ids": torch.from_numpy(input_ids),
                "attention_mask": torch.from_numpy(attention_mask),
                "position_ids": torch.from_numpy(position_ids),
            }
            tensors: dict[str, Any] = {
                name: t.to(self.device, self.dtypes[name], non_blocking=False)
                for name, t in feeds.items()
            }
            tensors["past_keys"] = kv[0].to(self.dtypes["past_keys"]).contiguous()
            tensors["past_values"] = kv[1].to(self.dtypes["past_values"]).contiguous()
            for name in INPUT_NAMES:
                self.context.set_input_shape(name, tuple(tensors[name].shape))
                self.context.set_tensor_address(name, tensors[name].data_ptr())
            for name in OUTPUT_NAMES:
                shape = tuple(self.context.get_tensor_shape(name))
                tensors[name] = torch.empty(shape, dtype=self.dtypes[name], device=self.device)
                self.context.set_tensor_address(name, tensors[name].data_ptr())
            if not self.context.execute_async_v3(self.stream.cuda_stream):
                raise RuntimeError("TensorRT execution failed")
            logits = tensors["logits"].float().cpu().numpy()  # synchronizes the stream
        return logits, (tensors["present_keys"], tensors["present_values"])

    def empty(self, batch: int, width: int) -> KV:
        """Zero cache on the GPU."""
        shape = (self.layers, batch, self.heads, width, self.head_dim)
        dtype = self.dtypes["past_keys"]
        make = self.torch.zeros
        with self.torch.cuda.stream(self.stream):
            return make(shape, dtype=dtype, device=self.device), make(
                shape, dtype=dtype, device=self.device
            )

    # Every cache operation runs on the engine's stream: torch's side streams do not wait for
    # the default stream, so a cache built there could still be in flight when TensorRT reads it
    # (and freed blocks could be reused while the other stream still reads them).
    def pad_left(self, kv: KV, columns: int) -> KV:
        """Zero columns in front."""
        pad = self.torch.nn.functional.pad
        with self.torch.cuda.stream(self.stream):
            return pad(kv[0], (0, 0, columns, 0)), pad(kv[1], (0, 0, columns, 0))

    def concat(self, parts: list[KV]) -> KV:
        """Batch concatenation."""
        cat = self.torch.cat
        with self.torch.cuda.stream(self.stream):
            return cat([p[0] for p in parts], dim=1), cat([p[1] for p in parts], dim=1)

    def take(self, kv: KV, rows: list[int]) -> KV:
        """Row selection."""
        with self.torch.cuda.stream(self.stream):
            index = self.torch.tensor(rows, device=self.device)
            return kv[0].index_select(1, index), kv[1].index_select(1, index)

    def trim_left(self, kv: KV, columns: int) -> KV:
        """Column trim."""
        with self.torch.cuda.stream(self.stream):
            return kv[0][:, :, :, columns:].contiguous(), kv[1][:, :, :, columns:].contiguous()


def tensorrt_usable() -> str | None:
    """None when a CUDA GPU and the tensorrt package are present, else the reason why not."""
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        return "the tensorrt package is not installed"
    try:
        import torch
    except ImportError:
        return "torch is not installed (the TensorRT runner keeps the KV cache in torch tensors)"
    if not torch.cuda.is_available():
        return "no CUDA GPU is visible"
    return None


def create_runner(
    version_dir: Path, threads: int = 2, prefer: str = "auto", allow_spinning: bool = False
) -> Runner:
    """The runner for a version folder: its TensorRT engine on a GPU if both exist, else ORT.

    ``prefer`` is "auto", "onnxruntime" or "tensorrt" (the latter fails without a GPU).
    """
    manifest = json.loads((version_dir / "manifest.json").read_text(encoding="utf-8"))
    engine = version_dir / "model.plan"
    if prefer in ("auto", "tensorrt") and engine.is_file():
        reason = tensorrt_usable()
        if reason is None:
            return TensorRTRunner(engine, manifest)
        if prefer == "tensorrt":
            raise RuntimeError(f"TensorRT backend requested but {reason}")
    elif prefer == "tensorrt":
        raise RuntimeError(f"TensorRT backend requested but {version_dir} has no model.plan")
    return OnnxRuntimeRunner(version_dir / "model.onnx", manifest, threads, allow_spinning)
