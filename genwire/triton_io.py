"""The genwire model's contract on Triton: the tensors of a request and of each response.

One table for everyone who talks to the model: the inference service's backend, the model
client and the benchmark's Triton driver build their request tensors with ``infer_inputs`` and
read responses by the names in ``Output``; ``genwire model build`` writes the same table into
the model's ``config.pbtxt``. The Triton Python model (``tools/genwire_model/runtime``) runs
inside Triton and cannot import genwire: a test holds its names and types to this table.

The model is decoupled (0..N responses per request): every response carries the new tokens
and the running totals; the last one has ``finished`` set and the finish reason.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt


class Input:
    """Names of the request tensors."""

    INPUT_IDS = "input_ids"
    """The prompt's token ids."""
    MAX_TOKENS = "max_tokens"
    TEMPERATURE = "temperature"
    TOP_P = "top_p"
    TOP_K = "top_k"
    SEED = "seed"
    STOP_TOKEN_IDS = "stop_token_ids"
    """Token ids that end the generation (optional)."""
    STREAM = "stream"
    """True: a response per decode step; False: one final response with every token
    (optional; default True)."""


class Output:
    """Names of the response tensors."""

    TOKEN_IDS = "token_ids"
    """The tokens new in this response."""
    LOGPROBS = "logprobs"
    """Their log-probabilities."""
    FINISHED = "finished"
    FINISH_REASON = "finish_reason"
    PROMPT_TOKENS = "prompt_tokens"
    COMPLETION_TOKENS = "completion_tokens"
    MEAN_LOGPROB = "mean_logprob"
    QUEUE_MS = "queue_ms"
    COMPUTE_MS = "compute_ms"
    TTFT_MS = "ttft_ms"
    """Measured inside the model: arrival to the first sampled token."""


_NUMPY: dict[str, type[Any]] = {
    "INT32": np.int32,
    "INT64": np.int64,
    "FP32": np.float32,
    "BOOL": np.bool_,
    "BYTES": np.object_,
}


@dataclass(frozen=True)
class TensorSpec:
    """One tensor of the contract."""

    name: str
    datatype: str
    """Triton's datatype on the wire (what tritonclient's ``InferInput`` takes)."""
    dims: int
    """-1: any length; 1: exactly one value."""
    optional: bool = False

    @property
    def config_type(self) -> str:
        """The ``data_type`` of config.pbtxt (``BYTES`` is ``TYPE_STRING`` there)."""
        return "TYPE_STRING" if self.datatype == "BYTES" else f"TYPE_{self.datatype}"

    @property
    def numpy_dtype(self) -> type[Any]:
        """The numpy type of the tensor's values."""
        return _NUMPY[self.datatype]


INPUTS: tuple[TensorSpec, ...] = (
    TensorSpec(Input.INPUT_IDS, "INT32", -1),
    TensorSpec(Input.MAX_TOKENS, "INT32", 1),
    TensorSpec(Input.TEMPERATURE, "FP32", 1),
    TensorSpec(Input.TOP_P, "FP32", 1),
    TensorSpec(Input.TOP_K, "INT32", 1),
    TensorSpec(Input.SEED, "INT64", 1),
    TensorSpec(Input.STOP_TOKEN_IDS, "INT32", -1, optional=True),
    TensorSpec(Input.STREAM, "BOOL", 1, optional=True),
)
"""Request tensors, in config.pbtxt's order."""

OUTPUTS: tuple[TensorSpec, ...] = (
    TensorSpec(Output.TOKEN_IDS, "INT32", -1),
    TensorSpec(Output.LOGPROBS, "FP32", -1),
    TensorSpec(Output.FINISHED, "BOOL", 1),
    TensorSpec(Output.FINISH_REASON, "BYTES", 1),
    TensorSpec(Output.PROMPT_TOKENS, "INT32", 1),
    TensorSpec(Output.COMPLETION_TOKENS, "INT32", 1),
    TensorSpec(Output.MEAN_LOGPROB, "FP32", 1),
    TensorSpec(Output.QUEUE_MS, "FP32", 1),
    TensorSpec(Output.COMPUTE_MS, "FP32", 1),
    TensorSpec(Output.TTFT_MS, "FP32", 1),
)
"""Response tensors, in config.pbtxt's order."""

_INPUT_SPECS = {spec.name: spec for spec in INPUTS}


def input_arrays(
    input_ids: Sequence[int],
    *,
    max_tokens: int,
    temperature: float,
    top_p: float,
    top_k: int,
    seed: int,
    stream: bool,
    stop_token_ids: Sequence[int] = (),
    batched: bool = False,
) -> list[tuple[TensorSpec, npt.NDArray[Any]]]:
    """The request's tensors as numpy arrays of the contract's types; ``stop_token_ids`` only
    when there are some. ``batched`` (a model with ``max_batch_size > 0``) gives every tensor
    a leading batch dimension of 1."""
    values: list[tuple[str, Sequence[Any]]] = [
        (Input.INPUT_IDS, input_ids),
        (Input.MAX_TOKENS, [max_tokens]),
        (Input.TEMPERATURE, [temperature]),
        (Input.TOP_P, [top_p]),
        (Input.TOP_K, [top_k]),
        (Input.SEED, [seed]),
        (Input.STREAM, [stream]),
    ]
    if stop_token_ids:
        values.append((Input.STOP_TOKEN_IDS, stop_token_ids))
    arrays = []
    for name, value in values:
        spec = _INPUT_SPECS[name]
        array = np.asarray(value, dtype=spec.numpy_dtype)
        arrays.append((spec, array.reshape(1, -1) if batched else array))
    return arrays


def infer_inputs(
    input_ids: Sequence[int],
    *,
    max_tokens: int,
    temperature: float,
    top_p: float,
    top_k: int,
    seed: int,
    stream: bool,
    stop_token_ids: Sequence[int] = (),
    batched: bool = False,
) -> list[Any]:
    """The request's tensors as tritonclient ``InferInput``s (see ``input_arrays``)."""
    from tritonclient.grpc import InferInput  # only Triton's callers install tritonclient

    inputs = []
    for spec, array in input_arrays(
        input_ids,
        max_tokens=max_tokens,
        temperature=temperature,
        top_p=top_p,
        top_k=top_k,
        seed=seed,
        stream=stream,
        stop_token_ids=stop_token_ids,
        batched=batched,
    ):
        tensor = InferInput(spec.name, list(array.shape), spec.datatype)
        tensor.set_data_from_numpy(array)
        inputs.append(tensor)
    return inputs


def scalar(result: Any, name: str) -> Any:
    """The one value of output ``name`` of a response (an ``InferResult``); None when absent."""
    array = result.as_numpy(name)
    if array is None or array.size == 0:
        return None
    return array.reshape(-1)[0]
