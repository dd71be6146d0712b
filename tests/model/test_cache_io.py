"""The graph's cache contract: one tensor per layer, and graphs of earlier versions still read."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from genwire_model.repository import ModelVersion
from genwire_model.runtime import tensorrt_engine
from genwire_model.runtime.cache_io import CacheIO
from genwire_model.runtime.runners import ORT_GRAPH_FILE, OnnxRuntimeRunner

from tests.model.legacy import stacked_graph
from tests.model.profile import assert_head_on_last_position


def test_names_shapes_and_the_round_trip_of_a_per_layer_cache() -> None:
    io = CacheIO(2)
    assert io.kind == "per_layer" and io.column_axis == 2
    assert io.past_names == ("past_key_0", "past_value_0", "past_key_1", "past_value_1")
    assert io.output_names == (
        "logits",
        "present_key_0",
        "present_value_0",
        "present_key_1",
        "present_value_1",
    )
    assert io.tensor_shape(3, 4, 5, 8) == (3, 4, 5, 8)
    keys = np.arange(2 * 3 * 4 * 5 * 8, dtype=np.float32).reshape(2, 3, 4, 5, 8)
    values = -keys
    past = io.past((keys, values))
    # Views, not copies: the runner binds them as they are.
    assert all(np.shares_memory(past[f"past_key_{n}"], keys) for n in range(2))
    assert np.array_equal(past["past_value_1"], values[1])
    joined = io.join(list(past.values()), np.stack)
    assert np.array_equal(joined[0], keys) and np.array_equal(joined[1], values)


def test_a_graphs_contract_is_read_from_its_names_or_its_manifest() -> None:
    stacked = CacheIO.of_names(["input_ids", "past_keys", "past_values", "x"], 4)
    assert stacked.stacked and stacked.column_axis == 3
    assert stacked.past_names == ("past_keys", "past_values")
    assert stacked.tensor_shape(3, 4, 5, 8) == (4, 3, 4, 5, 8)
    names = ["input_ids", "attention_mask", "position_ids", *CacheIO(2).past_names]
    assert CacheIO.of_names(names, 2) == CacheIO(2)
    with pytest.raises(ValueError, match="no input 'past_key_2' for a 3-layer KV cache"):
        CacheIO.of_names(names, 3)
    # A manifest written before the field: the graph beside it stacks the layers.
    assert CacheIO.of_shape({"num_layers": 2}).stacked
    assert CacheIO.of_shape({"num_layers": 2, "cache_io": "per_layer"}) == CacheIO(2)
    with pytest.raises(ValueError, match="unknown cache_io 'paged'"):
        CacheIO.of_shape({"num_layers": 2, "cache_io": "paged"})


def test_the_built_graph_takes_and_gives_one_tensor_per_layer(tiny_version: ModelVersion) -> None:
    import onnx

    graph = onnx.load(str(tiny_version.path / "model.onnx")).graph
    io = CacheIO.of_shape(tiny_version.manifest["shape"])
    assert not io.stacked
    assert [i.name for i in graph.input] == list(io.input_names)
    assert [o.name for o in graph.output] == list(io.output_names)
    # Each layer's past goes straight into the concatenation that is its present (the one copy
    # of the cache a pass makes): nothing splits or stacks the layers.
    producers = {out: node for node in graph.node for out in node.output}
    for past, present in zip(io.past_names, io.present_names, strict=True):
        consumers = [node for node in graph.node if past in node.input]
        assert [node.op_type for node in consumers] == ["Concat"], past
        assert producers[present] is consumers[0], present


@pytest.mark.parametrize("graph", ["model.onnx", ORT_GRAPH_FILE])
def test_a_prefill_multiplies_only_the_last_position_by_the_head(
    tiny_version: ModelVersion, graph: str, tmp_path: Path
) -> None:
    """The logits out are the last position's; the vocabulary's matrix must not be applied to
    the others either (the prefill's largest product at short prompts). Read from ONNX Runtime's
    profile of a 2-row, 9-token prefill: the head's product has one position per row."""
    assert_head_on_last_position(
        tiny_version.path / graph, tiny_version.manifest["shape"], tmp_path
    )


def test_a_version_built_before_still_runs_and_decodes_the_same(
    tiny_version: ModelVersion, tiny_checkpoint: Path, tmp_path: Path
) -> None:
    """``genwire model bench --in-process`` and the fallback read earlier versions' graphs with
    today's runner: their stacked cache is fed and read back as it was, step for step."""
    old = tmp_path / "stacked.onnx"
    stacked_graph(tiny_checkpoint, old)
    manifest = {**tiny_version.manifest, "shape": dict(tiny_version.manifest["shape"])}
    del manifest["shape"]["cache_io"]
    legacy = OnnxRuntimeRunner(old, manifest, threads=1)
    current = OnnxRuntimeRunner(tiny_version.path / "model.onnx", tiny_version.manifest, threads=1)
    assert legacy.io.stacked and not current.io.stacked
    rng = np.random.default_rng(2)
    prompts = [rng.integers(0, int(manifest["shape"]["vocab_size"]), n) for n in (9, 4, 1)]
    runs = []
    for runner in (legacy, current):
        runner.reserve(len(prompts), 9 + 8)  # the loop's buffers: every step writes in place
        logits, kv, mask, lengths = tensorrt_engine.prefill(runner, prompts)
        seen = [np.array(logits)]
        tokens = logits.argmax(axis=1)
        for n in range(8):
            mask = np.concatenate([mask, np.ones((len(prompts), 1), np.int64)], axis=1)
            positions = np.array([[length + n] for length in lengths], np.int64)
            logits, kv = runner.step(tokens[:, None], mask, positions, kv)
            assert runner._arena_of(kv) >= 0  # the step wrote into a buffer
            seen.append(np.array(logits))
            tokens = logits.argmax(axis=1)
        runs.append((seen, kv))
    (old_logits, old_kv), (new_logits, new_kv) = runs
    for a, b in zip(old_logits, new_logits, strict=True):
        assert np.abs(a - b).max() < 1e-5
    assert all(np.abs(a - b).max() < 1e-5 for a, b in zip(old_kv, new_kv, strict=True))
