"""ONNX Runtime's fused copy of a version's graph (``model.ort.onnx``, ``genwire_model.ort_graph``):
built and validated beside the portable graph, served by ONNX Runtime, and a failed fusion
leaves the version on ``model.onnx`` with the reason."""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from genwire_model import cli, ort_graph
from genwire_model.build import BuildError, BuildOptions, build_version
from genwire_model.export import MAX_ABS_LOGIT_DIFF
from genwire_model.repository import ModelRepository, ModelVersion
from genwire_model.runtime import runners, tensorrt_engine
from genwire_model.runtime.runners import ORT_GRAPH_FILE, OnnxRuntimeRunner, onnxruntime_graph
from onnx import TensorProto, helper


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _behind(model: Any, output: str, op: str, *operands: str) -> None:
    """Make the graph's ``output`` by ``op`` over what made it before (and ``operands``)."""
    for node in model.graph.node:
        for i, name in enumerate(node.output):
            if name == output:
                node.output[i] = f"{output}_raw"
    model.graph.node.append(helper.make_node(op, [f"{output}_raw", *operands], [output]))


def _decode(runner: OnnxRuntimeRunner, steps: int) -> tuple[list[np.ndarray], Any]:
    """A left-padded batch of three prompts prefilled, then ``steps`` greedy decode steps with
    the loop's buffers (each step's cache written in place): every step's logits, the cache."""
    rng = np.random.default_rng(5)
    prompts = [rng.integers(0, runner.vocab_size, n) for n in (9, 4, 1)]
    runner.reserve(len(prompts), 9 + steps)
    logits, kv, mask, lengths = tensorrt_engine.prefill(runner, prompts)
    seen = [np.array(logits)]
    tokens = logits.argmax(axis=1)
    for n in range(steps):
        mask = np.concatenate([mask, np.ones((len(prompts), 1), np.int64)], axis=1)
        positions = np.array([[length + n] for length in lengths], np.int64)
        logits, kv = runner.step(tokens[:, None], mask, positions, kv)
        seen.append(np.array(logits))
        tokens = logits.argmax(axis=1)
    return seen, kv


def test_the_build_fuses_a_copy_for_onnx_runtime_and_validates_it(
    tiny_version: ModelVersion,
) -> None:
    record = tiny_version.manifest["build"]["onnxruntime_graph"]
    assert record["file"] == ORT_GRAPH_FILE
    assert record["optimizer"].startswith("onnxruntime.transformers.optimizer 1.")
    # GPT-2's residual adds go into its layer norms and its GELU becomes one kernel.
    assert record["fusions"]["SkipLayerNormalization"] > 0 and record["fusions"]["FastGelu"] > 0
    fused = onnx.load(str(tiny_version.path / ORT_GRAPH_FILE))
    portable = onnx.load(str(tiny_version.path / "model.onnx"))
    assert record["nodes"] == {
        "model.onnx": len(portable.graph.node),
        ORT_GRAPH_FILE: len(fused.graph.node),
    }
    assert len(fused.graph.node) < 0.6 * len(portable.graph.node)
    assert record["validation"]["max_abs_logit_diff"] < MAX_ABS_LOGIT_DIFF
    assert set(record["validation"]["cases"]) == set(tiny_version.manifest["validation"]["cases"])
    # The same inputs and outputs, and the cache still concatenated once, into the output.
    assert [i.name for i in fused.graph.input] == [i.name for i in portable.graph.input]
    assert [o.name for o in fused.graph.output] == [o.name for o in portable.graph.output]
    assert ort_graph.cache_concat_problem(fused.graph) is None
    assert ort_graph.cache_concat_problem(portable.graph) is None
    # The portable graph keeps standard ONNX only: TensorRT builds from it.
    assert {o.domain for o in portable.opset_import} <= {"", "ai.onnx"}
    assert "com.microsoft" in {o.domain for o in fused.opset_import}
    assert tiny_version.manifest["files"][ORT_GRAPH_FILE] == _sha256(
        tiny_version.path / ORT_GRAPH_FILE
    )


def test_onnx_runtime_serves_the_fused_graph_and_decodes_as_the_portable_one(
    tiny_version: ModelVersion, monkeypatch: pytest.MonkeyPatch
) -> None:
    opened: list[Path] = []
    original = OnnxRuntimeRunner.__init__

    def spy(self: OnnxRuntimeRunner, model_path: Path, *args: Any, **kwargs: Any) -> None:
        opened.append(Path(model_path))
        original(self, model_path, *args, **kwargs)

    monkeypatch.setattr(OnnxRuntimeRunner, "__init__", spy)
    fused = runners.create_runner(tiny_version.path, threads=1, prefer="onnxruntime")
    assert opened == [tiny_version.path / ORT_GRAPH_FILE]
    portable = OnnxRuntimeRunner(tiny_version.path / "model.onnx", tiny_version.manifest, threads=1)
    assert isinstance(fused, OnnxRuntimeRunner)
    (fused_logits, fused_kv), (portable_logits, portable_kv) = (
        _decode(fused, 8),
        _decode(portable, 8),
    )
    for a, b in zip(fused_logits, portable_logits, strict=True):
        assert np.abs(a - b).max() < 1e-4
        assert np.array_equal(a.argmax(axis=1), b.argmax(axis=1))
    assert all(np.abs(a - b).max() < 1e-4 for a, b in zip(fused_kv, portable_kv, strict=True))


def test_the_runtime_status_names_the_graph_onnx_runtime_serves(
    tiny_version: ModelVersion, tmp_path: Path
) -> None:
    copy = tmp_path / "1"
    shutil.copytree(tiny_version.path, copy)
    runners.create_runner(copy, threads=1, prefer="onnxruntime", record_status=True)
    status = json.loads((copy / runners.STATUS_FILE).read_text())
    assert status["backend"] == "onnxruntime" and status["graph"] == ORT_GRAPH_FILE
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["build"]["onnxruntime_graph"] = {"file": None, "reason": "test"}
    (copy / "manifest.json").write_text(json.dumps(manifest))
    runners.create_runner(copy, threads=1, prefer="onnxruntime", record_status=True)
    assert json.loads((copy / runners.STATUS_FILE).read_text())["graph"] == "model.onnx"


def test_a_version_without_the_record_serves_model_onnx_and_a_missing_file_is_an_error(
    tiny_version: ModelVersion, tmp_path: Path
) -> None:
    manifest = json.loads(json.dumps(tiny_version.manifest))
    del manifest["build"]["onnxruntime_graph"]  # a version built before the fused copy
    assert onnxruntime_graph(tmp_path, manifest) == tmp_path / "model.onnx"
    manifest["build"]["onnxruntime_graph"] = {
        "file": None,
        "reason": "--onnxruntime-graph portable",
    }
    assert onnxruntime_graph(tmp_path, manifest) == tmp_path / "model.onnx"
    manifest["build"]["onnxruntime_graph"] = {"file": ORT_GRAPH_FILE}
    with pytest.raises(FileNotFoundError, match="the manifest's ONNX Runtime graph is missing"):
        onnxruntime_graph(tmp_path, manifest)


def test_a_fusion_that_fails_leaves_the_portable_graph_with_the_reason(
    tiny_checkpoint: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(info: Any, portable: Path) -> Any:
        raise RuntimeError("the optimizer fell over")

    monkeypatch.setattr(ort_graph, "_optimize", broken)
    lines: list[str] = []
    version = build_version(tiny_checkpoint, "t", tmp_path, BuildOptions(max_batch=4), lines.append)
    record = version.manifest["build"]["onnxruntime_graph"]
    assert record["file"] is None
    assert record["reason"] == "RuntimeError: the optimizer fell over"
    assert any("ONNX Runtime serves the portable graph: RuntimeError" in line for line in lines)
    assert not (version.path / ORT_GRAPH_FILE).exists()
    assert ORT_GRAPH_FILE not in version.manifest["files"]
    assert version.manifest["validation"]["smoke"]["greedy_tokens"] == 16  # it serves


def _shift_logits(model: Any) -> None:
    """Every logit + 1: the same tokens, but not the checkpoint's logits."""
    model.graph.initializer.append(helper.make_tensor("one_f", TensorProto.FLOAT, [], [1.0]))
    _behind(model, "logits", "Add", "one_f")


def _copy_a_present(model: Any) -> None:
    """present_key_0 through an Identity: right values, not the Concat the runner binds."""
    _behind(model, "present_key_0", "Identity")


@pytest.mark.parametrize(
    ("tamper", "reason"),
    [
        (_shift_logits, r"^ExportError: ONNX graph disagrees with torch: largest logit difference"),
        (
            _copy_a_present,
            r"^ValueError: the fused graph breaks the cache contract: "
            r"present_key_0 is made by Identity, not a Concat of past_key_0$",
        ),
    ],
)
def test_a_fused_graph_that_fails_a_check_is_not_kept(
    tiny_checkpoint: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    tamper: Callable[[Any], None],
    reason: str,
) -> None:
    real = ort_graph._optimize

    def tampered(info: Any, portable: Path) -> Any:
        model, fusions = real(info, portable)
        tamper(model)
        return model, fusions

    monkeypatch.setattr(ort_graph, "_optimize", tampered)
    version = build_version(tiny_checkpoint, "t", tmp_path, BuildOptions(max_batch=4))
    record = version.manifest["build"]["onnxruntime_graph"]
    assert record["file"] is None and re.search(reason, record["reason"]), record
    assert not (version.path / ORT_GRAPH_FILE).exists()


def test_the_cache_contract_check_names_what_breaks_it() -> None:
    def graph(nodes: list[Any], outputs: list[str]) -> Any:
        value = helper.make_tensor_value_info
        return helper.make_graph(
            nodes,
            "g",
            [value("past_key_0", TensorProto.FLOAT, None), value("new", TensorProto.FLOAT, None)],
            [value(name, TensorProto.FLOAT, None) for name in outputs],
        )

    concat = helper.make_node("Concat", ["past_key_0", "new"], ["present_key_0"], axis=2)
    assert ort_graph.cache_concat_problem(graph([concat], ["present_key_0"])) is None
    copied = helper.make_node("Identity", ["past_key_0"], ["present_key_0"])
    assert ort_graph.cache_concat_problem(graph([copied], ["present_key_0"])) == (
        "present_key_0 is made by Identity, not a Concat of past_key_0"
    )
    also = helper.make_node("Relu", ["past_key_0"], ["other"])
    assert ort_graph.cache_concat_problem(graph([concat, also], ["present_key_0", "other"])) == (
        "past_key_0 feeds 2 nodes, not only its Concat"
    )
    assert ort_graph.cache_concat_problem(graph([also], ["other"])) == (
        "the graph has no present_* outputs"
    )


def test_the_portable_choice_is_honoured_and_an_unknown_one_refused(
    tiny_checkpoint: Path, tmp_path: Path
) -> None:
    parser = argparse.ArgumentParser()
    cli.register(parser.add_subparsers())
    args = parser.parse_args(
        [
            "model", "build", "--checkpoint", str(tiny_checkpoint), "--repository", str(tmp_path),
            "--name", "p", "--onnxruntime-graph", "portable", "--max-batch", "4",
        ]
    )  # fmt: skip
    assert args.func(args) == 0
    version = ModelRepository(tmp_path).latest("p")
    assert version.manifest["build"]["options"]["onnxruntime_graph"] == "portable"
    assert version.manifest["build"]["onnxruntime_graph"] == {
        "file": None,
        "reason": "--onnxruntime-graph portable",
    }
    assert not (version.path / ORT_GRAPH_FILE).exists()
    assert onnxruntime_graph(version.path, version.manifest) == version.path / "model.onnx"
    with pytest.raises(BuildError, match="onnxruntime_graph must be fused or portable, got 'fast'"):
        build_version(tiny_checkpoint, "x", tmp_path, BuildOptions(onnxruntime_graph="fast"))
