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

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
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
    N = "n"
    """Choices sharing one prefill (optional; default 1; 1-16)."""
    TOP_LOGPROBS = "top_logprobs"
    """Alternatives returned per generated token, most likely first (optional; 0-20)."""
    PRESENCE_PENALTY = "presence_penalty"
    FREQUENCY_PENALTY = "frequency_penalty"
    REPETITION_PENALTY = "repetition_penalty"
    MIN_P = "min_p"
    LOGIT_BIAS_IDS = "logit_bias_ids"
    """Token ids whose logits get the matching ``logit_bias_values`` added (optional)."""
    LOGIT_BIAS_VALUES = "logit_bias_values"
    MIN_TOKENS = "min_tokens"
    """No end-of-sequence or stop token before this many tokens (optional)."""
    IGNORE_EOS = "ignore_eos"
    """End-of-sequence tokens do not end the generation (optional)."""
    GUIDED = "guided"
    """Structured output: the JSON of ``genwire.events.Guided`` (optional)."""
    STOP = "stop"
    """Stop strings, matched on the text while decoding (optional)."""


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
    CHOICE = "choice"
    """Which of the request's ``n`` choices this response's tokens belong to."""
    TOP_TOKEN_IDS = "top_token_ids"
    """With ``top_logprobs`` k > 0: k alternatives per token of ``token_ids``, flattened
    (token-major: [tokens x k])."""
    TOP_TOKEN_LOGPROBS = "top_token_logprobs"
    """Their log-probabilities, in the same order."""


FINAL_ONLY_OUTPUTS = (
    Output.FINISH_REASON,
    Output.PROMPT_TOKENS,
    Output.COMPLETION_TOKENS,
    Output.MEAN_LOGPROB,
    Output.QUEUE_MS,
    Output.COMPUTE_MS,
    Output.TTFT_MS,
)
"""Outputs only a choice's final response carries (intermediate responses carry the new
tokens, their log-probabilities, ``finished``, ``choice`` and the alternatives)."""


CANCEL_PARAMETER = "genwire_cancel"
"""A request parameter (string): this request is not a generation but a cancel of the request
with that Triton request id, sent on the same gRPC stream. Several requests share one stream
(the inference service multiplexes them), so cancelling the call would stop all of them. The
model answers a cancel with one empty final response (only when the request also sets
``triton_enable_empty_final_response``, which gRPC clients must ask for) and never generates
for it; a cancel of an id not running (finished, or unknown) does nothing. Model versions built
before this existed generate for it instead: ``CANCEL_ACK_PROBE`` tells them apart."""

RESPONSE_GAP_PARAMETER = "genwire_min_response_gap_ms"
"""A request parameter (a number of milliseconds, as a string): the least time between two
streamed responses of this request's choices, on top of the model's own response budget (the
longer of the two applies; the first response is held only with
``HOLD_FIRST_RESPONSE_PARAMETER``, the final one never). The inference service sets it to its
chunk budget's spacing, so the model does not send responses that the service would only merge
into its next chunk. Not a number, negative or not finite: the request
fails with an error naming it. Model versions built before this existed ignore it (they send
the responses the budget allows, as before)."""

HOLD_FIRST_RESPONSE_PARAMETER = "genwire_hold_first_response"
"""A request parameter (a boolean): hold this request's first streamed response too until its
``RESPONSE_GAP_PARAMETER`` gap has passed since the model received it, so a request that ends
sooner gets one response (its final, with every token) and a longer one a response per gap. The
inference service sets it for an unstreamed request with a deadline, which streams only to keep
its tokens when the deadline cancels it; streamed requests never set it (time to first token).
Not a boolean: the request fails with an error naming it. Model versions built before this
existed ignore it (they send the first token at once, as before)."""

CANCEL_ACK_PROBE = "genwire-cancel-probe"
"""The id a client cancels to learn whether a model version understands ``CANCEL_PARAMETER``:
an empty final response says yes; a generation (one token) or an error says no."""


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
    TensorSpec(Input.N, "INT32", 1, optional=True),
    TensorSpec(Input.TOP_LOGPROBS, "INT32", 1, optional=True),
    TensorSpec(Input.PRESENCE_PENALTY, "FP32", 1, optional=True),
    TensorSpec(Input.FREQUENCY_PENALTY, "FP32", 1, optional=True),
    TensorSpec(Input.REPETITION_PENALTY, "FP32", 1, optional=True),
    TensorSpec(Input.MIN_P, "FP32", 1, optional=True),
    TensorSpec(Input.LOGIT_BIAS_IDS, "INT32", -1, optional=True),
    TensorSpec(Input.LOGIT_BIAS_VALUES, "FP32", -1, optional=True),
    TensorSpec(Input.MIN_TOKENS, "INT32", 1, optional=True),
    TensorSpec(Input.IGNORE_EOS, "BOOL", 1, optional=True),
    TensorSpec(Input.GUIDED, "BYTES", 1, optional=True),
    TensorSpec(Input.STOP, "BYTES", -1, optional=True),
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
    TensorSpec(Output.CHOICE, "INT32", 1),
    TensorSpec(Output.TOP_TOKEN_IDS, "INT32", -1),
    TensorSpec(Output.TOP_TOKEN_LOGPROBS, "FP32", -1),
)
"""Response tensors, in config.pbtxt's order."""

_INPUT_SPECS = {spec.name: spec for spec in INPUTS}


@dataclass(frozen=True)
class Options:
    """The decode-loop options beyond the basic sampling ones; defaults change nothing (and
    their tensors are left out of the request)."""

    n: int = 1
    top_logprobs: int = 0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    repetition_penalty: float = 1.0
    min_p: float = 0.0
    logit_bias: Mapping[int, float] = field(default_factory=dict)
    min_tokens: int = 0
    ignore_eos: bool = False
    guided: str = ""
    """The JSON of ``genwire.events.Guided``; "" for none."""
    stop: Sequence[str] = ()

    def values(self) -> list[tuple[str, Sequence[Any]]]:
        """(input name, values) of every option that differs from its default."""
        out: list[tuple[str, Sequence[Any]]] = []
        for name, value, default in (
            (Input.N, self.n, 1),
            (Input.TOP_LOGPROBS, self.top_logprobs, 0),
            (Input.PRESENCE_PENALTY, self.presence_penalty, 0.0),
            (Input.FREQUENCY_PENALTY, self.frequency_penalty, 0.0),
            (Input.REPETITION_PENALTY, self.repetition_penalty, 1.0),
            (Input.MIN_P, self.min_p, 0.0),
            (Input.MIN_TOKENS, self.min_tokens, 0),
            (Input.IGNORE_EOS, self.ignore_eos, False),
        ):
            if value != default:
                out.append((name, [value]))
        if self.logit_bias:
            out.append((Input.LOGIT_BIAS_IDS, [int(k) for k in self.logit_bias]))
            out.append((Input.LOGIT_BIAS_VALUES, [float(v) for v in self.logit_bias.values()]))
        if self.guided:
            out.append((Input.GUIDED, [self.guided.encode("utf-8")]))
        if self.stop:
            out.append((Input.STOP, [s.encode("utf-8") for s in self.stop]))
        return out


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
    options: Options | None = None,
) -> list[tuple[TensorSpec, npt.NDArray[Any]]]:
    """The request's tensors as numpy arrays of the contract's types; ``stop_token_ids`` and the
    ``options`` only when they are set. ``batched`` (a model with ``max_batch_size > 0``) gives
    every tensor a leading batch dimension of 1."""
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
    if options is not None:
        values.extend(options.values())
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
    options: Options | None = None,
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
        options=options,
    ):
        tensor = InferInput(spec.name, list(array.shape), spec.datatype)
        tensor.set_data_from_numpy(array)
        inputs.append(tensor)
    return inputs


def top_alternatives(result: Any, tokens: int) -> list[list[tuple[int, float]]]:
    """Per token of a response, its alternatives ``[(token id, logprob)]`` (empty lists when
    the request asked for none)."""
    ids = result.as_numpy(Output.TOP_TOKEN_IDS)
    lps = result.as_numpy(Output.TOP_TOKEN_LOGPROBS)
    if ids is None or lps is None or ids.size == 0 or tokens == 0:
        return [[] for _ in range(tokens)]
    k = ids.size // tokens
    ids = ids.reshape(tokens, k).astype(np.int64).tolist()
    lps = lps.reshape(tokens, k).astype(np.float64).tolist()
    return [list(zip(i, v, strict=True)) for i, v in zip(ids, lps, strict=True)]


def scalar(result: Any, name: str) -> Any:
    """The one value of output ``name`` of a response (anything with ``as_numpy``: tritonclient's
    ``InferResult``, ``genwire.triton_stream.Result``); None when absent."""
    array = result.as_numpy(name)
    if array is None or array.size == 0:
        return None
    return array.reshape(-1)[0]
