"""The model contract (``genwire.triton_io``) against the model code that runs inside Triton (it
cannot import genwire) and the config.pbtxt the build writes; the request tensors it builds."""

from __future__ import annotations

import ast
import re
from typing import Any

import numpy as np
import numpy.typing as npt
from genwire_model.build import RUNTIME_DIR, render_config

from genwire.triton_io import (
    INPUTS,
    OUTPUTS,
    Input,
    Options,
    Output,
    TensorSpec,
    input_arrays,
    top_alternatives,
)


def _called(node: ast.Call) -> str:
    func = node.func
    if isinstance(func, ast.Attribute):
        return func.attr
    return func.id if isinstance(func, ast.Name) else ""


def _model_tensors() -> tuple[set[str], dict[str, str]]:
    """(input names the model reads, output name → numpy type it sends) from its source."""
    tree = ast.parse((RUNTIME_DIR / "triton_model.py").read_text(encoding="utf-8"))
    inputs: set[str] = set()
    outputs: dict[str, str] = {}
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call) or len(node.args) < 2:
            continue
        name, value = node.args[0], node.args[1]
        if _called(node) in ("get_input_tensor_by_name", "_scalar", "_vector"):
            if isinstance(value, ast.Constant):  # (the helpers pass their argument on)
                inputs.add(str(value.value))
        elif _called(node) == "Tensor":  # pb_utils.Tensor(name, np.asarray(..., dtype=np.X))
            assert isinstance(name, ast.Constant) and isinstance(value, ast.Call)
            dtype = next(kw.value for kw in value.keywords if kw.arg == "dtype")
            assert isinstance(dtype, ast.Attribute), ast.unparse(node)
            outputs[str(name.value)] = dtype.attr
    return inputs, outputs


def test_the_triton_model_reads_and_sends_the_contracts_tensors() -> None:
    inputs, outputs = _model_tensors()
    assert inputs == {spec.name for spec in INPUTS}
    assert outputs == {spec.name: spec.numpy_dtype.__name__ for spec in OUTPUTS}


def test_config_pbtxt_declares_the_contract() -> None:
    config = render_config("genwire-gpt")
    pattern = r'\{ name: "(\w+)" data_type: (\w+) dims: \[ (-?\d+) \]( optional: true)? \}'
    blocks = re.search(r"input \[\n(.*?)\n\]\noutput \[\n(.*?)\n\]", config, re.S)
    assert blocks is not None
    for block, specs in zip(blocks.groups(), (INPUTS, OUTPUTS), strict=True):
        declared = [(n, t, int(d), bool(o)) for n, t, d, o in re.findall(pattern, block)]
        assert declared == [(s.name, s.config_type, s.dims, s.optional) for s in specs]


def test_request_tensors_have_the_contracts_types_and_shapes() -> None:
    def arrays(**kw: Any) -> list[tuple[TensorSpec, npt.NDArray[Any]]]:
        return input_arrays(
            [1, 2, 3], max_tokens=8, temperature=0.5, top_p=0.9, top_k=4, seed=7, **kw
        )

    by_name = {spec.name: (spec, array) for spec, array in arrays(stream=False)}
    assert Input.STOP_TOKEN_IDS not in by_name  # optional: sent only when there are some
    basic = {spec.name for spec in INPUTS if not spec.optional} | {Input.STREAM}
    assert set(by_name) == basic
    for spec, array in by_name.values():
        assert array.dtype == np.dtype(spec.numpy_dtype)
        assert array.shape == ((3,) if spec.dims == -1 else (1,))
    assert by_name[Input.STREAM][1].tolist() == [False]

    batched = arrays(stream=True, stop_token_ids=[0, 9], batched=True)
    shapes = {spec.name: array.shape for spec, array in batched}
    assert shapes[Input.INPUT_IDS] == (1, 3) and shapes[Input.MAX_TOKENS] == (1, 1)
    assert shapes[Input.STOP_TOKEN_IDS] == (1, 2)


def test_decode_loop_options_are_sent_only_when_set() -> None:
    def names(options: Options) -> dict[str, list[Any]]:
        arrays = input_arrays(
            [1, 2],
            max_tokens=4,
            temperature=1.0,
            top_p=1.0,
            top_k=0,
            seed=1,
            stream=True,
            options=options,
        )
        return {spec.name: array.tolist() for spec, array in arrays}

    assert set(names(Options())) == {spec.name for spec in INPUTS if not spec.optional} | {
        Input.STREAM
    }
    sent = names(
        Options(
            n=3,
            top_logprobs=5,
            presence_penalty=0.5,
            frequency_penalty=-0.25,
            repetition_penalty=1.2,
            min_p=0.1,
            logit_bias={7: 2.5, 9: -100.0},
            min_tokens=2,
            ignore_eos=True,
            guided='{"kind": "regex", "spec": "[0-9]+"}',
            stop=["\n", "END"],
        )
    )
    every_option = {spec.name for spec in INPUTS if spec.optional} - {Input.STOP_TOKEN_IDS}
    assert every_option <= set(sent)
    assert sent[Input.N] == [3] and sent[Input.TOP_LOGPROBS] == [5]
    assert sent[Input.LOGIT_BIAS_IDS] == [7, 9]
    assert sent[Input.LOGIT_BIAS_VALUES] == [2.5, -100.0]
    assert sent[Input.IGNORE_EOS] == [True]
    assert sent[Input.STOP] == [b"\n", b"END"]
    assert sent[Input.GUIDED] == [b'{"kind": "regex", "spec": "[0-9]+"}']


def test_top_alternatives_are_read_token_major() -> None:
    class Result:
        def as_numpy(self, name: str) -> Any:
            return {
                Output.TOP_TOKEN_IDS: np.array([1, 2, 3, 4, 5, 6], np.int32),
                Output.TOP_TOKEN_LOGPROBS: np.array([-1, -2, -3, -4, -5, -6], np.float32),
            }.get(name)

    assert top_alternatives(Result(), 2) == [
        [(1, -1.0), (2, -2.0), (3, -3.0)],
        [(4, -4.0), (5, -5.0), (6, -6.0)],
    ]
    assert top_alternatives(Result(), 0) == []
