"""``TritonPythonModel.execute`` off the stack (a stand-in ``triton_python_backend_utils``, as in
test_outbox.py): every request of a batch is answered or queued whatever one of them raises,
refusals carry the prefix the inference service reads, and the model's guided-spec nesting
limit is preprocess's."""

from __future__ import annotations

import ast
import importlib.util
import json
import sys
import threading
import types
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from genwire_inference import handlers
from genwire_model.build import RUNTIME_DIR
from genwire_model.repository import ModelVersion
from genwire_model.runtime import constraints
from genwire_preprocess import guided as preprocess_guided

FINAL = 1


def refusal_prefix() -> str:
    return str(handlers.MODEL_REFUSAL)  # read at test time: the prefix the service reads


@pytest.fixture
def model_module(tiny_version: ModelVersion, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    stub = types.ModuleType("triton_python_backend_utils")
    stub.TRITONSERVER_RESPONSE_COMPLETE_FINAL = FINAL  # type: ignore[attr-defined]
    stub.TritonError = lambda message: ("error", message)  # type: ignore[attr-defined]
    stub.InferenceResponse = lambda output_tensors=None, error=None: types.SimpleNamespace(  # type: ignore[attr-defined]
        output_tensors=output_tensors, error=error
    )
    monkeypatch.setitem(sys.modules, "triton_python_backend_utils", stub)
    saved_path = list(sys.path)
    spec = importlib.util.spec_from_file_location(
        "genwire_test_triton_model_execute", tiny_version.path / "model.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    try:
        yield module
    finally:
        sys.path[:] = saved_path
        for name in [n for n in sys.modules if n.split(".")[0] == "genwire_runtime"]:
            del sys.modules[name]


class Sender:
    """A request's response sender: records what is sent; ``final`` when the last went."""

    def __init__(self) -> None:
        self.sent: list[tuple[Any, int]] = []
        self.final = threading.Event()

    def send(self, response: Any = None, flags: int = 0) -> None:
        self.sent.append((response, flags))
        if flags == FINAL:
            self.final.set()

    def is_cancelled(self) -> bool:
        return False

    @property
    def error(self) -> str:
        response, _ = self.sent[-1]
        return str(response.error[1])


class Tensor:
    def __init__(self, name: str, array: Any) -> None:
        self._name, self._array = name, array

    def name(self) -> str:
        return self._name

    def as_numpy(self) -> Any:
        return self._array


class FakeRequest:
    """A Triton request with the contract's inputs (``guided``: the JSON of a Guided)."""

    def __init__(self, rid: str, guided: str = "", n: int = 1) -> None:
        self.rid = rid
        self.sender = Sender()
        tensors = [
            Tensor("input_ids", np.asarray([5, 6, 7], np.int32)),
            Tensor("max_tokens", np.asarray([4], np.int32)),
            Tensor("n", np.asarray([n], np.int32)),
        ]
        if guided:
            tensors.append(Tensor("guided", np.asarray([guided.encode()], dtype=np.object_)))
        self.tensors = tensors

    def inputs(self) -> list[Tensor]:
        return self.tensors

    def parameters(self) -> str:
        return "{}"

    def request_id(self) -> str:
        return self.rid

    def get_response_sender(self) -> Sender:
        return self.sender


class Queued:
    """The scheduler stand-in: records what was submitted."""

    def __init__(self) -> None:
        self.submitted: list[Any] = []

    def submit(self, request: Any, wait_s: float = 0.0) -> None:
        self.submitted.append(request)


def _instance(module: Any, scheduler: Any, compiler: Any) -> Any:
    instance = module.TritonPythonModel.__new__(module.TritonPythonModel)
    instance.scheduler = scheduler
    instance.constraints = compiler
    instance.vocab_size, instance.context = 512, 64
    instance.outbox = module._Outbox(poll_s=10.0)
    return instance


class Exploding:
    """A constraint compiler that fails as a too deeply nested spec did (RecursionError)."""

    def build(self, guided: str, stop: Any, n: int) -> Any:
        if guided:
            raise RecursionError("maximum recursion depth exceeded while decoding a JSON array")
        return None


def test_an_unexpected_error_fails_its_request_only_and_the_batch_goes_on(
    model_module: Any,
) -> None:
    bad = FakeRequest("bad", guided=json.dumps({"kind": "json_schema", "spec": "{}"}))
    good = FakeRequest("good")
    scheduler = Queued()
    instance = _instance(model_module, scheduler, Exploding())
    try:
        instance.execute([bad, good])  # must not raise
        assert bad.sender.final.wait(10.0)
        assert bad.sender.error.startswith("request failed: RecursionError: ")
        assert not bad.sender.error.startswith(refusal_prefix())  # not the request's fault
        assert [r.sink.request_id for r in scheduler.submitted] == ["good"]
        # Its sink was answered and forgotten (no longer watched as live).
        assert not any(sink.request_id == "bad" for sink in instance.outbox.live.values())
    finally:
        instance.outbox.close()


class Buggy:
    """A constraint compiler with a bug: a TypeError is no refusal of the request."""

    def build(self, guided: str, stop: Any, n: int) -> Any:
        if guided:
            raise TypeError("unsupported operand type(s) for +: 'NoneType' and 'int'")
        return None


def test_a_bug_raising_a_value_or_type_error_is_no_refusal(model_module: Any) -> None:
    bad = FakeRequest("bad", guided=json.dumps({"kind": "json_schema", "spec": "{}"}))
    instance = _instance(model_module, Queued(), Buggy())
    try:
        instance.execute([bad])
        assert bad.sender.final.wait(10.0)
        assert bad.sender.error.startswith("request failed: TypeError: ")
    finally:
        instance.outbox.close()


def test_a_spec_nested_too_deep_is_refused_as_preprocess_refuses_it(
    model_module: Any, tiny_version: ModelVersion
) -> None:
    """The real compiler: a RecursionError before; now the nesting limit's refusal, with the
    prefix the inference service reads as the caller's error (400)."""
    compiler = model_module.ConstraintCompiler(tiny_version.path, 512, ())
    deep = "[" * 5000 + "]" * 5000
    requests = [
        FakeRequest("schema", guided=json.dumps({"kind": "json_schema", "spec": deep})),
        FakeRequest("choice", guided=json.dumps({"kind": "choice", "spec": deep})),
        FakeRequest("envelope", guided="[" * 5000 + "]" * 5000),
        FakeRequest("good"),
    ]
    scheduler = Queued()
    instance = _instance(model_module, scheduler, compiler)
    try:
        instance.execute(requests)
        for r in requests[:3]:
            assert r.sender.final.wait(10.0)
            assert r.sender.error.startswith(refusal_prefix()), r.sender.error
            assert "more than 124 levels deep" in r.sender.error
        assert [r.sink.request_id for r in scheduler.submitted] == ["good"]
    finally:
        instance.outbox.close()


def test_n_over_the_batch_is_refused_by_the_scheduler_with_the_refusal_prefix(
    model_module: Any, tiny_version: ModelVersion
) -> None:
    runner = model_module.create_runner(tiny_version.path)
    scheduler = model_module.Scheduler(runner, context=64, eos_ids=(), max_batch=4)
    instance = _instance(model_module, scheduler, None)
    wide, fits = FakeRequest("wide", n=6), FakeRequest("fits", n=4)
    try:
        instance.execute([wide, fits])
        assert wide.sender.final.wait(10.0)
        assert wide.sender.error == (
            f"{refusal_prefix()}n must be at most 4 on this model (its max_batch: every choice "
            "decodes in the same batch), got 6"
        )
        assert scheduler.pending.qsize() == 1  # the one that fits is queued
    finally:
        instance.outbox.close()


def test_the_refusal_prefix_is_the_inference_services() -> None:
    tree = ast.parse((RUNTIME_DIR / "triton_model.py").read_text(encoding="utf-8"))
    literals = [
        node.value.value
        for node in ast.walk(tree)
        if isinstance(node, ast.Assign)
        and any(isinstance(t, ast.Name) and t.id == "_REFUSED" for t in node.targets)
        and isinstance(node.value, ast.Constant)
    ]
    assert literals == [refusal_prefix()]


def test_the_models_nesting_limit_is_preprocesss() -> None:
    assert constraints.MAX_JSON_NESTING == preprocess_guided.MAX_JSON_NESTING
    for text in ('{"a": "[[{\\"[", "b": [1, {"c": "]]"}]}', "[" * 300, '["\\\\", [[]]]'):
        assert constraints.json_nesting(text, 1000) == preprocess_guided.json_nesting(text, 1000)
    deep = "[" * 5000 + "]" * 5000
    for kind in ("json_schema", "choice"):
        with pytest.raises(constraints.ConstraintError) as model:
            constraints.grammar_text(kind, deep)
        with pytest.raises(preprocess_guided.GuidedError) as ours:
            preprocess_guided.grammar_text(kind, deep)
        assert str(model.value) == str(ours.value)
