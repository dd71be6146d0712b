"""TensorRT's failures fall back to ONNX Runtime, with the reason recorded (no GPU needed).

A version folder is made from the tiny checkpoint's exported graph; TensorRT's presence is
simulated (``tensorrt_usable`` says yes, ``current_key`` names a GPU), so every TensorRT step
that is then attempted fails for real (no tensorrt package, no CUDA): the runner must be ONNX
Runtime, the status file must say at which stage and why, and engines must be looked up by
TensorRT version and compute capability.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from genwire_model import export, tensorrt_build
from genwire_model.checkpoint import inspect_checkpoint
from genwire_model.runtime import runners, tensorrt_engine
from genwire_model.runtime.cache_io import CacheIO

KEY = {"tensorrt_version": "10.13.3.9", "compute_capability": "9.0", "gpu": "NVIDIA H200"}


@pytest.fixture(scope="module")
def version_dir(tiny_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    info = inspect_checkpoint(tiny_checkpoint)
    out = tmp_path_factory.mktemp("repo") / "tiny" / "1"
    out.mkdir(parents=True)
    export.export_onnx(info, export.load_model(info), out / "model.onnx")
    manifest = {
        "context_length": info.context,
        "eos_token_ids": [],
        "shape": {
            "num_layers": info.num_layers,
            "num_kv_heads": info.num_kv_heads,
            "head_dim": info.head_dim,
            "vocab_size": info.vocab_size,
            "cache_io": export.cache_io(info).kind,
        },
        "build": {"options": {"max_batch": 4}},
    }
    (out / "manifest.json").write_text(json.dumps(manifest))
    return out


@pytest.fixture
def gpu_here(monkeypatch: pytest.MonkeyPatch) -> None:
    """Pretend TensorRT and a GPU are present: what follows fails like a broken install."""
    monkeypatch.setattr(runners, "tensorrt_usable", lambda: None)
    monkeypatch.setattr(tensorrt_engine, "current_key", lambda: dict(KEY))
    monkeypatch.setattr(tensorrt_build, "current_key", lambda: dict(KEY))


REAL_TENSORRT = runners.tensorrt_usable() is None
needs_broken_tensorrt = pytest.mark.skipif(
    REAL_TENSORRT, reason="TensorRT really works here: an engine build would succeed"
)


def status(version_dir: Path) -> dict[str, Any]:
    record: dict[str, Any] = json.loads((version_dir / runners.STATUS_FILE).read_text())
    return record


def test_key_names_the_tensorrt_version_and_compute_capability() -> None:
    assert tensorrt_engine.key_name(KEY) == "trt10.13.3.9-sm90"
    other_gpu = {**KEY, "compute_capability": "8.9"}
    assert tensorrt_engine.key_name(other_gpu) != tensorrt_engine.key_name(KEY)


def test_engine_is_found_only_for_its_own_key(tmp_path: Path) -> None:
    folder = tensorrt_engine.engine_dir(tmp_path, KEY)
    folder.mkdir(parents=True)
    (folder / "model.plan").write_bytes(b"plan")
    (folder / "tensorrt.json").write_text(json.dumps(KEY))
    assert tensorrt_engine.find_engine(tmp_path, KEY) == folder / "model.plan"
    assert tensorrt_engine.find_engine(tmp_path, {**KEY, "tensorrt_version": "11.4.1"}) is None
    assert tensorrt_engine.find_engine(tmp_path, {**KEY, "compute_capability": "8.0"}) is None
    # A version from before engines/ existed: its top-level plan counts for its recorded key.
    (tmp_path / "model.plan").write_bytes(b"legacy")
    (tmp_path / "tensorrt.json").write_text(json.dumps({**KEY, "tensorrt_version": "10.0.1"}))
    legacy = {**KEY, "tensorrt_version": "10.0.1"}
    assert tensorrt_engine.find_engine(tmp_path, legacy) == tmp_path / "model.plan"


def test_without_tensorrt_the_runner_is_onnx_runtime_and_says_so(version_dir: Path) -> None:
    if runners.tensorrt_usable() is None:
        pytest.skip("TensorRT is usable here: the GPU tests cover this machine")
    runner = runners.create_runner(version_dir, prefer="auto", record_status=True)
    assert runner.backend == "onnxruntime"
    assert status(version_dir)["backend"] == "onnxruntime"
    assert status(version_dir)["reason"] == runners.tensorrt_usable()  # why not TensorRT
    with pytest.raises(RuntimeError, match="TensorRT backend requested but"):
        runners.create_runner(version_dir, prefer="tensorrt")


def test_an_engine_that_cannot_load_falls_back_with_the_reason(
    version_dir: Path, gpu_here: None
) -> None:
    folder = tensorrt_engine.engine_dir(version_dir, KEY)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "model.plan").write_bytes(b"not an engine")
    (folder / "tensorrt.json").write_text(json.dumps(KEY))
    try:
        runner = runners.create_runner(version_dir, prefer="auto", record_status=True)
        assert runner.backend == "onnxruntime"
        record = status(version_dir)
        assert record["backend"] == "onnxruntime"
        assert record["fallbacks"][-1]["stage"] == "deserialize"
        assert record["fallbacks"][-1]["reason"]
        with pytest.raises(Exception):  # noqa: B017 - "tensorrt" never falls back
            runners.create_runner(version_dir, prefer="tensorrt")
    finally:
        import shutil

        shutil.rmtree(version_dir / tensorrt_engine.ENGINES_DIR)


def test_an_engine_recorded_as_disagreeing_is_never_served(
    version_dir: Path, gpu_here: None
) -> None:
    """An engine built at load that failed its agreement check stays on disk with its figures:
    every later load refuses it before deserializing (the plan here is not even an engine)."""
    folder = tensorrt_engine.engine_dir(version_dir, KEY)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "model.plan").write_bytes(b"not an engine")
    figures = {"finite": False, "max_abs_logit_diff": 7.5, "greedy_token_agreement": 0.1}
    (folder / "tensorrt.json").write_text(json.dumps({**KEY, "agreement": figures}))
    try:
        runner = runners.create_runner(version_dir, prefer="auto", record_status=True)
        assert runner.backend == "onnxruntime"
        last = status(version_dir)["fallbacks"][-1]
        assert last["stage"] == "run" and "disagrees with ONNX Runtime" in last["reason"]
        # Figures that pass do not stop the load: it goes on to deserialize (and fails there).
        passing = {"finite": True, "max_abs_logit_diff": 0.01, "greedy_token_agreement": 1.0}
        (folder / "tensorrt.json").write_text(json.dumps({**KEY, "agreement": passing}))
        runners.create_runner(version_dir, prefer="auto", record_status=True)
        assert status(version_dir)["fallbacks"][-1]["stage"] == "deserialize"
    finally:
        import shutil

        shutil.rmtree(version_dir / tensorrt_engine.ENGINES_DIR)


@needs_broken_tensorrt
def test_a_version_without_an_engine_builds_one_at_load_or_falls_back(
    version_dir: Path, gpu_here: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    runner = runners.create_runner(version_dir, prefer="auto", record_status=True)
    assert runner.backend == "onnxruntime"
    assert status(version_dir)["fallbacks"][-1]["stage"] == "build"
    # Building at load can be switched off: then ONNX Runtime without a fallback event.
    monkeypatch.setenv(runners.BUILD_ON_LOAD_ENV, "0")
    (version_dir / runners.STATUS_FILE).unlink()
    runner = runners.create_runner(version_dir, prefer="auto", record_status=True)
    assert runner.backend == "onnxruntime"
    assert status(version_dir)["fallbacks"] == []
    assert status(version_dir)["reason"].endswith(f"{runners.BUILD_ON_LOAD_ENV}=0")


class _Failing:
    backend, min_past, vocab_size = "tensorrt", 1, 0

    def forward(self, *args: Any) -> Any:
        raise RuntimeError("TensorRT execution failed (execute_async_v3 returned False)")

    def empty(self, batch: int, width: int) -> Any:
        raise AssertionError("not used")


def test_a_failing_pass_is_rerun_on_onnx_runtime_and_later_ones_stay_there(
    version_dir: Path,
) -> None:
    manifest = json.loads((version_dir / "manifest.json").read_text())

    def onnxruntime() -> Any:
        return runners.OnnxRuntimeRunner(version_dir / "model.onnx", manifest)

    reference = onnxruntime()
    report = runners._Fallback(version_dir)
    runner = runners.FallbackRunner(_Failing(), onnxruntime, report)
    assert runner.backend == "tensorrt"
    ids = np.array([[5, 6, 7]], np.int64)
    positions = np.arange(3, dtype=np.int64)[None, :]
    mask = np.array([[0, 1, 1, 1]], np.int64)  # TensorRT's masked dummy past column
    kv = reference.empty(1, 1)
    got, got_kv = runner.forward(ids, mask, positions, kv)
    want, _ = reference.forward(ids, mask, positions, kv)
    assert np.allclose(got, want)
    assert runner.backend == "onnxruntime"
    assert status(version_dir)["fallbacks"][-1]["stage"] == "run"
    # The cache made before the switch keeps working with the ONNX Runtime runner.
    step, _ = runner.forward(
        np.array([[8]], np.int64), np.array([[0, 1, 1, 1, 1]]), np.array([[3]]), got_kv
    )
    assert np.isfinite(step).all()
    # A cache TensorRT made (torch tensors) is copied to the host for ONNX Runtime's gather.
    import torch

    made_by_tensorrt = (torch.from_numpy(got_kv[0]), torch.from_numpy(got_kv[1]))
    width = int(got_kv[0].shape[3]) + 2
    gathered = runner.gather([(made_by_tensorrt, [0]), (got_kv, [0])], width)
    assert isinstance(gathered[0], np.ndarray) and gathered[0].shape[1] == 2
    assert np.array_equal(gathered[0][:, 0, :, 2:], got_kv[0][:, 0])
    assert not gathered[0][:, :, :, :2].any()  # right-aligned: zeros in front


@needs_broken_tensorrt
def test_build_in_auto_mode_records_why_there_is_no_engine(
    version_dir: Path, tiny_checkpoint: Path, gpu_here: None
) -> None:
    info = inspect_checkpoint(tiny_checkpoint)
    onnx_path = version_dir / "model.onnx"
    record = tensorrt_build.build_for_version(
        info, onnx_path, version_dir, 4, info.context, "auto", None, lambda _: None
    )
    assert record["built"] is False and "build failed" in record["reason"]
    assert record["attempted_key"] == tensorrt_engine.key_name(KEY)
    assert not (version_dir / tensorrt_engine.ENGINES_DIR).exists()
    with pytest.raises(tensorrt_build.TensorRTBuildError):
        tensorrt_build.build_for_version(
            info, onnx_path, version_dir, 4, info.context, "on", None, lambda _: None
        )
    skipped = tensorrt_build.build_for_version(
        info, onnx_path, version_dir, 4, info.context, "auto", "no CUDA GPU is visible"
    )
    assert skipped == {"built": False, "reason": "no CUDA GPU is visible"}


def test_profiles_split_prefill_and_decode_and_bound_prefill_memory() -> None:
    shapes = tensorrt_engine.profile_shapes(2, 4, 16, max_batch=32, context=4096)
    prefill, decode = shapes["prefill"], shapes["decode"]
    # Every layer's cache tensors, [B, H, P, D] each.
    names = {"past_key_0", "past_value_0", "past_key_1", "past_value_1"}
    assert set(decode) == set(prefill) == {"input_ids", "attention_mask", "position_ids", *names}
    # Decode: one token per row, every row, the whole context of cache.
    assert decode["input_ids"][2] == (32, 1)
    assert all(decode[name][2] == (32, 4, 4097, 16) for name in names)
    # Prefill: whole prompts, but few rows at a long context (memory ~ rows x context²).
    rows = tensorrt_engine.prefill_rows(32, 4096)
    assert prefill["input_ids"][2] == (rows, 4096) and rows * 4096 <= 8192
    assert prefill["past_value_1"][2] == (rows, 4, 1, 16)  # over the one masked dummy column
    for profile in shapes.values():
        for low, opt, high in profile.values():
            assert all(a <= b <= c for a, b, c in zip(low, opt, high, strict=True))
    assert tensorrt_engine.prefill_rows(32, 64) == 32
    # A graph of an earlier version (the layers stacked) gets its engine's profiles too.
    stacked = tensorrt_engine.profile_shapes(2, 4, 16, 32, 4096, CacheIO(2, stacked=True))
    assert stacked["decode"]["past_keys"][2] == (2, 32, 4, 4097, 16)
    assert stacked["prefill"]["past_values"][2] == (2, rows, 4, 1, 16)


def test_the_environment_can_force_onnx_runtime(
    version_dir: Path, gpu_here: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(runners.BACKEND_ENV, "onnxruntime")
    runner = runners.create_runner(
        version_dir, prefer="tensorrt", record_status=True
    )  # override wins
    assert runner.backend == "onnxruntime"
    assert status(version_dir) | {"updated": ""} == {
        "backend": "onnxruntime",
        "engine": "",
        "fallbacks": [],
        "updated": "",
        "reason": f"backend onnxruntime ({runners.BACKEND_ENV}=onnxruntime)",
        "graph": "model.onnx",
    }


def test_default_model_reuse_is_keyed_on_tensorrt_version_and_gpu(tmp_path: Path) -> None:
    from genwire_model import default

    no_engine: dict[str, Any] = {"build": {"tensorrt": {"built": False, "reason": "no GPU"}}}
    # A version built without a GPU has no engine for this GPU: not reusable here.
    assert not default._has_engine(tmp_path, no_engine, KEY)
    folder = tensorrt_engine.engine_dir(tmp_path, KEY)
    folder.mkdir(parents=True)
    (folder / "model.plan").write_bytes(b"plan")
    (folder / "tensorrt.json").write_text(json.dumps(KEY))
    assert default._has_engine(tmp_path, no_engine, KEY)
    # Another TensorRT release or another GPU architecture: a new version is built.
    assert not default._has_engine(tmp_path, no_engine, {**KEY, "tensorrt_version": "11.4.0"})
    assert not default._has_engine(tmp_path, no_engine, {**KEY, "compute_capability": "8.6"})
    # A build for this key that already failed is not retried on every `genwire up`.
    tried = {"build": {"tensorrt": {"built": False, "attempted_key": "trt11.4.0-sm86"}}}
    assert default._has_engine(
        tmp_path, tried, {"tensorrt_version": "11.4.0", "compute_capability": "8.6"}
    )
    if not REAL_TENSORRT:
        assert default.engine_key() is None  # no TensorRT here: any version is reusable


def fake_autocast(monkeypatch: pytest.MonkeyPatch, fails: int, seen: list[Any]) -> None:
    """ModelOpt's AutoCast stand-in: fails its first ``fails`` calls, then returns the graph."""
    import sys
    import types

    import onnx

    def convert_to_mixed_precision(**kwargs: Any) -> Any:
        data = kwargs["calibration_data"]
        seen.append(dict(np.load(data)) if data else None)
        if len(seen) <= fails:
            raise ValueError(f"AutoCast refused try {len(seen)}")
        return onnx.load(kwargs["onnx_path"])

    autocast = types.ModuleType("modelopt.onnx.autocast")
    autocast.convert_to_mixed_precision = convert_to_mixed_precision  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "modelopt", types.ModuleType("modelopt"))
    monkeypatch.setitem(sys.modules, "modelopt.onnx", types.ModuleType("modelopt.onnx"))
    monkeypatch.setitem(sys.modules, "modelopt.onnx.autocast", autocast)


@pytest.mark.parametrize(
    ("fails", "how"), [(0, "calibrated on a real prefill"), (1, "uncalibrated"), (2, None)]
)
def test_autocast_tries_calibrated_then_uncalibrated_then_gives_fp32(
    version_dir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    fails: int,
    how: str | None,
) -> None:
    """TensorRT 11's FP16 route: any AutoCast failure means an FP32 engine, never a failed
    build; the FP16 graph keeps its weights in a data file beside it (no 2 GB protobuf
    limit), and nothing is left behind."""
    import onnx

    seen: list[Any] = []
    fake_autocast(monkeypatch, fails, seen)
    manifest = json.loads((version_dir / "manifest.json").read_text())
    feeds = tensorrt_engine.calibration_feeds(manifest["shape"], manifest["context_length"])
    out = tmp_path / "model.fp16.onnx"
    made, note = tensorrt_engine._autocast(version_dir / "model.onnx", out, feeds, lambda _: None)
    # The calibration data is a left-padded prefill like the scheduler's.
    assert seen[0] is not None and set(seen[0]) == set(feeds)
    assert (seen[0]["attention_mask"][:, 0] == 0).all()
    if how is None:
        assert made is None and note.count("AutoCast refused") == 2
        assert sorted(p.name for p in tmp_path.iterdir()) == []
        return
    assert made == out and how in note
    assert len(seen) == fails + 1 and (fails == 0 or seen[-1] is None)
    assert tensorrt_engine.external_data(out).is_file()
    graph = onnx.load(str(out))  # loads its weights from the data file beside it
    want = CacheIO.of_shape(manifest["shape"]).input_names
    assert [i.name for i in graph.graph.input] == list(want)
    assert not list(tmp_path.glob("*.npz"))


def test_agreement_of_a_runner_with_itself_and_a_poisoned_one(version_dir: Path) -> None:
    """The build/load-time check on CPU: identical runners agree fully; NaN logits are
    refused however close the rest is."""
    manifest = json.loads((version_dir / "manifest.json").read_text())
    reference = runners.OnnxRuntimeRunner(version_dir / "model.onnx", manifest)
    vocab, context = int(manifest["shape"]["vocab_size"]), int(manifest["context_length"])
    figures = tensorrt_engine.agreement(reference, reference, vocab, context, decode_steps=4)
    assert figures["max_abs_logit_diff"] == 0.0 and figures["finite"]
    assert figures["max_abs_logprob_diff"] == 0.0
    assert figures["greedy_token_agreement"] == 1.0
    assert figures["cases"]["left_padded_prefill_rows"][-1] == 1
    tensorrt_engine.check_agreement(figures)

    class Poisoned:
        min_past = 1

        def __init__(self) -> None:
            self.inner = runners.OnnxRuntimeRunner(version_dir / "model.onnx", manifest)

        def empty(self, batch: int, width: int) -> Any:
            return self.inner.empty(batch, width)

        def forward(self, *args: Any) -> Any:
            logits, kv = self.inner.forward(*args)
            logits = logits.copy()
            logits[-1, 0] = np.nan  # the one-token row: a fully padded prefill row gone bad
            return logits, kv

    bad = tensorrt_engine.agreement(Poisoned(), reference, vocab, context, decode_steps=4)
    assert not bad["finite"]
    with pytest.raises(tensorrt_engine.TensorRTBuildError, match="disagrees"):
        tensorrt_engine.check_agreement(bad)


def test_agreement_is_judged_on_log_probabilities() -> None:
    """A shift common to a row's logits changes no probability: not a disagreement. A change
    in one token's log-probability above the bound is; so is a record without figures."""
    rng = np.random.default_rng(2)
    want = rng.standard_normal((3, 50)) * 5 - 100.0  # GPT-2-like magnitudes
    shifted = want + np.array([[0.9], [-0.7], [0.6]])  # each row moved as a whole
    lp = tensorrt_engine.log_softmax
    assert np.abs(lp(shifted) - lp(want)).max() < 1e-9
    bound = tensorrt_engine.MAX_ENGINE_LOGPROB_DIFF
    close = {"finite": True, "max_abs_logit_diff": 0.9, "max_abs_logprob_diff": 1e-9}
    tensorrt_engine.check_agreement(close)
    far = {**close, "max_abs_logprob_diff": bound * 1.5}
    with pytest.raises(tensorrt_engine.TensorRTBuildError):
        tensorrt_engine.check_agreement(far)
    # A record from before the log-probability figure: judged on its logits.
    tensorrt_engine.check_agreement({"finite": True, "max_abs_logit_diff": bound / 2})
    with pytest.raises(tensorrt_engine.TensorRTBuildError):
        tensorrt_engine.check_agreement({"finite": True, "max_abs_logit_diff": bound * 2})
    with pytest.raises(tensorrt_engine.TensorRTBuildError):
        tensorrt_engine.check_agreement({"finite": True})


def test_only_the_serving_process_writes_the_status_file(
    version_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A build's smoke test, a benchmark or a backend comparison on a served version's folder
    must not overwrite what Triton's runner recorded there."""
    import sys
    import types

    path = version_dir / runners.STATUS_FILE
    served = {"backend": "tensorrt", "engine": "trt10.13.3.9-sm90", "fallbacks": []}
    path.write_text(json.dumps(served))
    runner = runners.create_runner(version_dir, prefer="onnxruntime")  # outside Triton
    assert runner.backend == "onnxruntime" and json.loads(path.read_text()) == served
    stub = types.ModuleType("triton_python_backend_utils")
    monkeypatch.setitem(sys.modules, "triton_python_backend_utils", stub)
    runners.create_runner(version_dir, prefer="onnxruntime")  # inside Triton's stub
    assert status(version_dir)["backend"] == "onnxruntime"


def test_a_build_that_failed_for_this_key_is_not_retried_at_load(
    version_dir: Path, gpu_here: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The manifest says the build for this TensorRT and GPU failed: loading (every Triton
    restart) does not spend minutes failing it again; another key still builds at load."""
    path = version_dir / "manifest.json"
    original = path.read_text()
    manifest = json.loads(original)
    manifest["build"]["tensorrt"] = {
        "built": False,
        "reason": "TensorRT build failed: out of memory",
        "attempted_key": tensorrt_engine.key_name(KEY),
    }
    path.write_text(json.dumps(manifest))
    built: list[str] = []

    def build_on_load(*args: Any) -> Path:
        built.append("x")
        raise RuntimeError("no TensorRT here")

    monkeypatch.setattr(runners, "_build_on_load", build_on_load)
    try:
        runner = runners.create_runner(version_dir, prefer="auto", record_status=True)
        assert runner.backend == "onnxruntime" and built == []
        last = status(version_dir)["fallbacks"][-1]
        assert last["stage"] == "build" and "not retried at load" in last["reason"]
        assert "out of memory" in last["reason"]
        other = {**KEY, "compute_capability": "8.9"}
        monkeypatch.setattr(tensorrt_engine, "current_key", lambda: dict(other))
        runners.create_runner(version_dir, prefer="auto", record_status=True)
        assert built == ["x"]  # another GPU: tried (and failed here)
    finally:
        path.write_text(original)


def test_the_fallback_counter_exists_at_zero_from_the_load_on(
    version_dir: Path, gpu_here: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Inside Triton (a stand-in for its Python backend's metrics API): every stage's series
    is created at 0 when TensorRT is tried, and the fallback then adds 1 to its stage, so the
    one increase a version ever makes is visible to Prometheus."""
    import sys
    import types

    values: dict[str, float] = {}

    class Metric:
        def __init__(self, labels: dict[str, str]) -> None:
            assert labels["model"] == "tiny" and labels["version"] == "1"
            self.stage = labels["stage"]
            values[self.stage] = 0.0

        def increment(self, value: float) -> None:
            values[self.stage] += value

    class MetricFamily:
        COUNTER = "counter"

        def __init__(self, name: str, description: str, kind: str) -> None:
            assert name == "genwire_tensorrt_fallback_total" and kind == "counter"

        def Metric(self, labels: dict[str, str]) -> Any:  # Triton's method name
            return Metric(labels)

    stub = types.ModuleType("triton_python_backend_utils")
    stub.MetricFamily = MetricFamily  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "triton_python_backend_utils", stub)
    folder = tensorrt_engine.engine_dir(version_dir, KEY)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "model.plan").write_bytes(b"not an engine")
    (folder / "tensorrt.json").write_text(json.dumps(KEY))
    try:
        runner = runners.create_runner(version_dir, prefer="auto")
    finally:
        import shutil

        shutil.rmtree(version_dir / tensorrt_engine.ENGINES_DIR)
    assert runner.backend == "onnxruntime"
    assert values == {"build": 0.0, "deserialize": 1.0, "run": 0.0}
    # The runner that fell back at load does not hold the reporter: the process does, or
    # Triton would drop the collected family's series.
    assert runners._REPORTS[str(version_dir)]._metrics.keys() == values.keys()


def test_an_int8_version_never_tries_tensorrt(
    version_dir: Path, gpu_here: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """--quantize int8 leaves ONNX Runtime's INT8 graph as model.onnx: no engine is built for
    it at load (that build would fail, at every load, counted as a fallback)."""
    path = version_dir / "manifest.json"
    original = path.read_text()
    manifest = json.loads(original)
    manifest["quantization"] = {"mode": "int8"}
    path.write_text(json.dumps(manifest))

    def build_on_load(*args: Any) -> Path:
        raise AssertionError("an INT8 version must not be built by TensorRT")

    monkeypatch.setattr(runners, "_build_on_load", build_on_load)
    try:
        runner = runners.create_runner(version_dir, prefer="auto", record_status=True)
        assert runner.backend == "onnxruntime"
        assert status(version_dir)["fallbacks"] == []
        with pytest.raises(RuntimeError, match="INT8"):
            runners.create_runner(version_dir, prefer="tensorrt")
    finally:
        path.write_text(original)


def test_execution_contexts_are_sized_per_profile_where_the_release_allows() -> None:
    """ON_PROFILE_CHANGE through a runtime config (10.11+, 11), else as the strategy argument
    (10.x), else TensorRT's default: never a failed load over a missing overload."""
    import types

    strategy = types.SimpleNamespace(ON_PROFILE_CHANGE="per-profile")
    trt = types.SimpleNamespace(ExecutionContextAllocationStrategy=strategy)

    class Config:
        def set_execution_context_allocation_strategy(self, value: str) -> None:
            self.value = value

    class Engine:
        def __init__(self, accepts: set[str]) -> None:
            self.accepts = accepts

        def create_runtime_config(self) -> Config:
            if "config" not in self.accepts:
                raise AttributeError("no runtime config here")
            return Config()

        def create_execution_context(self, arg: Any = None) -> Any:
            kind = "default" if arg is None else "config" if isinstance(arg, Config) else "strategy"
            if kind not in self.accepts:
                raise TypeError(f"incompatible function arguments: {arg!r}")
            return kind, getattr(arg, "value", arg)

    make = runners._execution_context
    assert make(trt, Engine({"config", "strategy", "default"})) == ("config", "per-profile")
    assert make(trt, Engine({"strategy", "default"})) == ("strategy", "per-profile")
    assert make(trt, Engine({"default"})) == ("default", None)
    assert make(types.SimpleNamespace(), Engine({"default"})) == ("default", None)


def _version(repository: Path, version: int, checkpoint: str, runtime: str) -> None:
    folder = repository / "genwire-gpt" / str(version)
    folder.mkdir(parents=True)
    manifest = {
        "context_length": 256,
        "source": {"checkpoint_sha256": checkpoint},
        "build": {"runtime_sha256": runtime},
    }
    (folder / "manifest.json").write_text(json.dumps(manifest))


def test_default_model_reuses_an_older_version_only_where_config_names_versions(
    tmp_path: Path,
) -> None:
    # Code checked out back to an earlier runtime: version 1 fits it, version 2 is newer. With
    # the build's `latest` policy Triton serves 2 whatever is asked, so a new version is built
    # (None); with `specific` versions the bring-up can serve 1 beside them.
    from genwire_model import default
    from genwire_model.lifecycle import version_policy_line
    from genwire_model.repository import ModelRepository

    repository = ModelRepository(tmp_path)
    _version(tmp_path, 1, "ckpt", "old-runtime")
    _version(tmp_path, 2, "ckpt", "new-runtime")
    config = tmp_path / "genwire-gpt" / "config.pbtxt"
    said: list[str] = []
    config.write_text('name: "genwire-gpt"\nversion_policy: { latest: { num_versions: 1 } }\n')
    assert default.reusable_version(repository, "ckpt", "new-runtime", None) == "2"
    assert default.reusable_version(repository, "ckpt", "old-runtime", None, said.append) is None
    assert "config.pbtxt serves the newest version (2)" in said[0]
    assert default.reusable_version(repository, "ckpt", "other", None) is None
    assert default.reusable_version(repository, "other-ckpt", "new-runtime", None) is None
    config.write_text('name: "genwire-gpt"\n' + version_policy_line(["2"]) + "\n")
    assert default.reusable_version(repository, "ckpt", "old-runtime", None) == "1"
    config.unlink()  # no config yet: the build's default, the latest
    assert default.reusable_version(repository, "ckpt", "old-runtime", None) is None
