"""TensorRT path on a real GPU: engine build, agreement with ONNX Runtime, the runner's checks.

Skipped with the reason where TensorRT cannot run (no tensorrt package, no CUDA GPU);
``make gpu-check`` runs these on a GPU machine (deploy/gpu/gpu_check.sh).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from genwire_model.build import BuildOptions, build_version
from genwire_model.repository import ModelVersion
from genwire_model.runtime import tensorrt_engine
from genwire_model.runtime.runners import (
    STATUS_FILE,
    OnnxRuntimeRunner,
    TensorRTRunner,
    create_runner,
    tensorrt_usable,
)

REASON = tensorrt_usable()
pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(REASON is not None, reason=f"TensorRT tests need a GPU: {REASON}"),
]


@pytest.fixture(scope="module")
def trt_version(tiny_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> ModelVersion:
    repository = tmp_path_factory.mktemp("trt-repository")
    return build_version(
        tiny_checkpoint, "trt", repository, BuildOptions(tensorrt="on", max_batch=8)
    )


def runners_of(version: ModelVersion) -> tuple[TensorRTRunner, OnnxRuntimeRunner]:
    plan = tensorrt_engine.find_engine(version.path, tensorrt_engine.current_key())
    assert plan is not None, "no engine for this TensorRT version and GPU"
    return TensorRTRunner(plan, version.manifest), OnnxRuntimeRunner(
        version.path / "model.onnx", version.manifest
    )


def test_build_records_the_key_profiles_and_agreement(trt_version: ModelVersion) -> None:
    record = trt_version.manifest["build"]["tensorrt"]
    key = tensorrt_engine.current_key()
    assert record["built"] and record["key"] == tensorrt_engine.key_name(key)
    assert record["compute_capability"] == key["compute_capability"]
    assert set(record["profiles"]) == {"prefill", "decode"}
    agreement = record["agreement"]
    assert agreement["finite"] and agreement["prefill_greedy_agree"]
    assert agreement["max_abs_logprob_diff"] < tensorrt_engine.MAX_ENGINE_LOGPROB_DIFF
    # The greedy decode ran in the runner's two device buffers (reserve, step): FP16 may part
    # from ONNX Runtime after a near tie, a wrong buffer swap from the first step.
    assert agreement["greedy_token_agreement"] >= 0.9
    on_disk = json.loads((trt_version.path / record["path"] / "tensorrt.json").read_text())
    assert on_disk["key"] == record["key"]


def test_left_padded_multi_row_prefill_matches_onnx_runtime(trt_version: ModelVersion) -> None:
    engine, reference = runners_of(trt_version)
    rng = np.random.default_rng(0)
    prompts = [rng.integers(0, engine.vocab_size, n, dtype=np.int64) for n in (17, 9, 3, 1)]
    got, _ = tensorrt_engine.greedy(engine, prompts, 1)
    want, _ = tensorrt_engine.greedy(reference, prompts, 1)
    assert np.isfinite(got).all(), "a padded row turned into NaN/inf (FP16 mask overflow?)"
    assert (got.argmax(axis=1) == want.argmax(axis=1)).all()
    diff = tensorrt_engine.log_softmax(got) - tensorrt_engine.log_softmax(want)
    assert np.abs(diff).max() < tensorrt_engine.MAX_ENGINE_LOGPROB_DIFF


def test_long_decode_keeps_the_greedy_tokens_of_onnx_runtime(trt_version: ModelVersion) -> None:
    engine, reference = runners_of(trt_version)
    context = int(trt_version.manifest["context_length"])
    rng = np.random.default_rng(1)
    prompts = [rng.integers(0, engine.vocab_size, n, dtype=np.int64) for n in (6, 2)]
    steps = context - 8
    _, got = tensorrt_engine.greedy(engine, prompts, steps)
    _, want = tensorrt_engine.greedy(reference, prompts, steps)
    # FP16 vs FP32: a near tie can flip a token late; most of the decode must agree.
    agree = sum(a == b for g, w in zip(got, want, strict=True) for a, b in zip(g, w, strict=True))
    assert agree / sum(len(w) for w in want) >= 0.9, (got, want)


def test_prefill_with_more_rows_than_its_profile_is_split(trt_version: ModelVersion) -> None:
    engine, reference = runners_of(trt_version)
    rows = engine.profiles[0]["limits"]["input_ids"][2][0] + 3
    prompts = [np.arange(1, 5, dtype=np.int64) + i for i in range(rows)]
    got, _ = tensorrt_engine.greedy(engine, prompts, 2)
    want, _ = tensorrt_engine.greedy(reference, prompts, 2)
    assert got.shape == want.shape and (got.argmax(axis=1) == want.argmax(axis=1)).all()


def test_out_of_profile_shapes_are_named(trt_version: ModelVersion) -> None:
    engine, _ = runners_of(trt_version)
    context = int(trt_version.manifest["context_length"])
    too_wide = engine.empty(1, context + 5)
    with pytest.raises(ValueError, match="profile"):
        engine.forward(
            np.array([[1]]), np.ones((1, context + 6), np.int64), np.array([[3]]), too_wide
        )


def test_sampling_on_the_device_is_greedy_at_temperature_zero(trt_version: ModelVersion) -> None:
    engine, _ = runners_of(trt_version)
    logits, _ = engine.forward(
        np.array([[5, 6, 7]]), np.array([[0, 1, 1, 1]]), np.arange(3)[None, :], engine.empty(1, 1)
    )
    tokens, logprobs = engine.sample_on_device(
        None, np.zeros(1), np.ones(1), np.zeros(1, np.int64), np.array([0.5])
    )
    assert tokens[0] == logits[0].argmax() and logprobs[0] <= 0.0


def test_create_runner_uses_the_engine_and_records_it(trt_version: ModelVersion) -> None:
    runner = create_runner(trt_version.path, prefer="auto", record_status=True)
    assert runner.backend == "tensorrt"
    status = json.loads((trt_version.path / STATUS_FILE).read_text())
    assert status["backend"] == "tensorrt" and status["engine"]


def test_a_version_without_an_engine_gets_one_at_load(
    trt_version: ModelVersion, tmp_path: Path
) -> None:
    import shutil

    copy = tmp_path / "trt" / "1"
    shutil.copytree(trt_version.path, copy)
    shutil.rmtree(copy / tensorrt_engine.ENGINES_DIR)  # as if built on a CPU machine
    runner = create_runner(copy, prefer="auto", record_status=True)
    assert runner.backend == "tensorrt"
    plan = tensorrt_engine.find_engine(copy, tensorrt_engine.current_key())
    assert plan is not None
    record = json.loads((plan.parent / "tensorrt.json").read_text())
    assert record["agreement"]["finite"] and record["agreement"]["prefill_greedy_agree"]


def test_gather_on_the_gpu_matches_onnx_runtime(trt_version: ModelVersion) -> None:
    engine, reference = runners_of(trt_version)
    rng = np.random.default_rng(4)
    shape = (engine.layers, 3, engine.heads, 5, engine.head_dim)
    host = (rng.standard_normal(shape, np.float32), rng.standard_normal(shape, np.float32))
    kind = engine.cache_dtype
    device = tuple(engine.torch.from_numpy(a).to(engine.device, kind) for a in host)
    for width in (3, 5, 8):
        got = engine.gather([(device, [2, 0]), (device, [1])], width)
        want = reference.gather([(host, [2, 0]), (host, [1])], width)
        assert np.allclose(got[0].float().cpu().numpy(), want[0], atol=1e-2)


def test_the_driving_thread_works_on_the_engines_stream(trt_version: ModelVersion) -> None:
    """The scheduler writes rows into the cache in place with plain torch indexing: after a
    pass, the calling thread's current stream must be the engine's, so those writes are
    ordered with TensorRT's reads and writes of the same tensors."""
    engine, _ = runners_of(trt_version)
    engine.forward(
        np.array([[5, 6]]), np.array([[0, 1, 1]]), np.arange(2)[None, :], engine.empty(1, 1)
    )
    assert engine.torch.cuda.current_stream(engine.device) == engine.stream


def test_the_decode_loop_samples_on_the_gpu(trt_version: ModelVersion) -> None:
    """The scheduler on the engine keeps the logits on the GPU (``host_logits`` off) and
    samples there with every option; greedy text agrees with ONNX Runtime's loop."""
    from genwire_model.runtime.scheduler import Request, Scheduler, Update

    class Sink:
        def __init__(self) -> None:
            self.updates: list[Update] = []

        def send(self, update: Update) -> None:
            self.updates.append(update)

        def fail(self, message: str) -> None:
            raise AssertionError(message)

        def is_cancelled(self) -> bool:
            return False

    def run(runner: object, **options: object) -> list[Update]:
        scheduler = Scheduler(runner, context=64, eos_ids=(), max_batch=8)  # type: ignore[arg-type]
        sink = Sink()
        args: dict[str, object] = {
            "max_tokens": 12,
            "temperature": 0.0,
            "top_p": 1.0,
            "top_k": 0,
            "seed": 3,
            "stop_ids": frozenset(),
            "stream": False,
        }
        args.update(options)
        scheduler.submit(Request(np.array([5, 6, 7], np.int64), sink=sink, **args))  # type: ignore[arg-type]
        for _ in range(200):
            if sink.updates and sink.updates[-1].last:
                break
            scheduler.run_once()
        return sink.updates

    engine, reference = runners_of(trt_version)
    greedy = run(engine)
    assert engine.host_logits is False
    assert engine.steps_in_place > 0  # decode steps ran in the reserved buffers
    want = run(reference)
    assert greedy[0].token_ids[:4] == want[0].token_ids[:4]  # FP16 may part ways later
    sampled = run(
        engine,
        temperature=0.8,
        top_p=0.9,
        top_k=50,
        min_p=0.02,
        n=2,
        top_logprobs=3,
        logit_bias={9: 2.0},
        frequency_penalty=0.5,
        repetition_penalty=1.2,
        min_tokens=4,
    )
    finals = [u for u in sampled if u.finished]
    assert len(finals) == 2 and all(u.completion_tokens >= 4 for u in finals)
    assert all(len(u.top_ids) == len(u.token_ids) for u in sampled)
    assert all(lp <= 0.0 for u in sampled for lp in u.logprobs)


def test_decode_steps_swap_two_device_buffers_and_allocate_nothing(
    trt_version: ModelVersion,
) -> None:
    """``reserve`` then steps: each step writes the grown cache into the other buffer, the
    caching allocator sees no allocation from the second step on (logits on the device or
    copied to the host), and the logits are ``forward``'s on the same inputs."""
    torch = pytest.importorskip("torch")
    engine, _ = runners_of(trt_version)
    plain, _ = runners_of(trt_version)
    engine.reserve(4, 65)
    bases = [int(pair[0].data_ptr()) for pair in engine._arenas]
    prompts = [[5, 6, 7], [8, 9, 10, 11, 12], [20]]
    rows, width = len(prompts), max(len(p) for p in prompts)
    ids = np.zeros((rows, width), np.int64)
    positions = np.zeros((rows, width), np.int64)
    mask = np.zeros((rows, width + 1), np.int64)
    for row, prompt in enumerate(prompts):
        n = len(prompt)
        ids[row, width - n :] = prompt
        positions[row, width - n :] = np.arange(n)
        mask[row, 1 + width - n :] = 1
    logits, kv = engine.forward(ids, mask, positions, engine.empty(rows, 1))
    lengths = np.array([len(p) for p in prompts])
    kv = engine.gather([(kv, [0, 1, 2])], width)
    other = kv
    tokens = logits.argmax(axis=1)
    allocated = []  # the caching allocator's allocations during each step
    for n in range(8):
        engine.host_logits = n % 2 == 0
        step_ids = tokens[:, None].astype(np.int64)
        step_mask = (np.arange(width + 1)[None, :] >= (width - lengths)[:, None]).astype(np.int64)
        torch.cuda.synchronize()
        before = torch.cuda.memory_stats().get("allocation.all.allocated", 0)
        got, kv = engine.step(step_ids, step_mask, lengths[:, None], kv)
        torch.cuda.synchronize()
        allocated.append(torch.cuda.memory_stats().get("allocation.all.allocated", 0) - before)
        want, other = plain.forward(step_ids, step_mask, lengths[:, None], other)
        assert int(kv[0].data_ptr()) == bases[(n + 1) % 2]
        host = got if isinstance(got, np.ndarray) else got.float().cpu().numpy()
        assert np.allclose(host, want, rtol=1e-3, atol=1e-3)  # one engine, one profile
        tokens, width, lengths = host.argmax(axis=1), width + 1, lengths + 1
    assert engine.steps_in_place == 8
    assert allocated[1:] == [0] * 7, allocated
