"""``genwire.triton_stream.Result`` reads a response exactly as tritonclient's ``InferResult``
does: the same array (values, dtype, shape) for every output of the model contract, None for
an output the response lacks, and the same ``ModelStep`` through ``parse_response``."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from genwire_inference.backend import parse_response
from tritonclient.grpc import InferResult, service_pb2
from tritonclient.utils import serialize_byte_tensor

from genwire.triton_io import OUTPUTS, Output
from genwire.triton_stream import Result


def _response(arrays: dict[str, np.ndarray[Any, Any]]) -> Any:
    """A ``ModelInferResponse`` as Triton's gRPC frontend sends it: every output's data in
    ``raw_output_contents``, in the outputs' order."""
    datatypes = {spec.name: spec.datatype for spec in OUTPUTS}
    message = service_pb2.ModelInferResponse(model_name="genwire-gpt", model_version="3", id="r")
    for name, array in arrays.items():
        output = message.outputs.add(name=name, datatype=datatypes[name], shape=array.shape)
        assert output.name == name
        if datatypes[name] == "BYTES":
            message.raw_output_contents.append(serialize_byte_tensor(array).item())
        else:
            message.raw_output_contents.append(array.tobytes())
    return message


_FINAL = {
    Output.TOKEN_IDS: np.array([17, 4093, 2], dtype=np.int32),
    Output.LOGPROBS: np.array([-0.5, -1.25, -3.0], dtype=np.float32),
    Output.FINISHED: np.array([True]),
    Output.CHOICE: np.array([1], dtype=np.int32),
    Output.FINISH_REASON: np.array([b"stop"], dtype=np.object_),
    Output.PROMPT_TOKENS: np.array([5], dtype=np.int32),
    Output.COMPLETION_TOKENS: np.array([9], dtype=np.int32),
    Output.MEAN_LOGPROB: np.array([-1.5], dtype=np.float32),
    Output.QUEUE_MS: np.array([0.25], dtype=np.float32),
    Output.COMPUTE_MS: np.array([31.5], dtype=np.float32),
    Output.TTFT_MS: np.array([4.75], dtype=np.float32),
    Output.TOP_TOKEN_IDS: np.array([[17, 18], [4093, 7], [2, 3]], dtype=np.int32),
    Output.TOP_TOKEN_LOGPROBS: np.array([[-0.5, -1], [-1.25, -2], [-3, -4]], dtype=np.float32),
}
_INTERMEDIATE = {
    Output.TOKEN_IDS: np.array([17], dtype=np.int32),
    Output.LOGPROBS: np.array([-0.5], dtype=np.float32),
    Output.FINISHED: np.array([False]),
    Output.CHOICE: np.array([0], dtype=np.int32),
}
_EMPTY_FINAL = {
    Output.TOKEN_IDS: np.zeros(0, dtype=np.int32),
    Output.LOGPROBS: np.zeros(0, dtype=np.float32),
    Output.FINISHED: np.array([True]),
}


@pytest.mark.parametrize("arrays", [_FINAL, _INTERMEDIATE, _EMPTY_FINAL])
def test_every_output_reads_as_tritonclient_reads_it(
    arrays: dict[str, np.ndarray[Any, Any]],
) -> None:
    message = _response(arrays)
    ours, theirs = Result(message), InferResult(message)
    for spec in OUTPUTS:
        expected, got = theirs.as_numpy(spec.name), ours.as_numpy(spec.name)
        if spec.name not in arrays:
            assert expected is None and got is None
            continue
        assert got is not None and expected is not None
        assert got.dtype == expected.dtype
        assert got.shape == expected.shape == arrays[spec.name].shape
        np.testing.assert_array_equal(got, expected)
        np.testing.assert_array_equal(got, arrays[spec.name])
    assert ours.as_numpy("no_such_output") is None
    assert ours.get_response() is message
    assert parse_response(ours) == parse_response(theirs)


def test_the_step_carries_what_the_final_response_says() -> None:
    step = parse_response(Result(_response(_FINAL)))
    assert step.token_ids == [17, 4093, 2] and step.finished and step.finish_reason == "stop"
    assert (step.choice, step.prompt_tokens, step.completion_tokens) == (1, 5, 9)
    assert step.model_version == "3" and step.ttft_ms == 4.75
    assert step.top_logprobs[1] == [(4093, -1.25), (7, -2.0)]


def test_an_output_sent_without_raw_contents_still_reads() -> None:
    """Triton's frontend sends data raw; the typed ``contents`` are read too, as tritonclient
    reads them, and an output with no data is an empty array of its type."""
    message = service_pb2.ModelInferResponse(model_name="genwire-gpt")
    reason = message.outputs.add(name=Output.FINISH_REASON, datatype="BYTES", shape=[1])
    reason.contents.bytes_contents.append(b"length")
    message.outputs.add(name=Output.TOKEN_IDS, datatype="INT32", shape=[0])
    ours, theirs = Result(message), InferResult(message)
    for name in (Output.FINISH_REASON, Output.TOKEN_IDS):
        got, expected = ours.as_numpy(name), theirs.as_numpy(name)
        assert got is not None and expected is not None
        assert got.dtype == expected.dtype and got.shape == expected.shape
        np.testing.assert_array_equal(got, expected)
    assert parse_response(ours).finish_reason == "length"


def test_a_name_sent_twice_reads_as_its_first_output() -> None:
    """As ``InferResult`` (Triton never sends a name twice; the reader still agrees)."""
    message = _response(_INTERMEDIATE)
    message.outputs.add(name=Output.TOKEN_IDS, datatype="INT32", shape=[2])
    message.raw_output_contents.append(np.array([5, 6], dtype=np.int32).tobytes())
    got, expected = (
        Result(message).as_numpy(Output.TOKEN_IDS),
        InferResult(message).as_numpy(Output.TOKEN_IDS),
    )
    assert got is not None and expected is not None
    np.testing.assert_array_equal(got, expected)
    np.testing.assert_array_equal(got, [17])
