"""The torch sampler (``sampling_torch``, the TensorRT runner's GPU path) against the numpy one.

Same logits, same options, same draws: the same token ids, filter boundaries, masks and
options; log-probabilities equal within float tolerance. numpy's float32 ``exp`` is not
correctly rounded (an ulp off for ~40 % of inputs with AVX-512), the torch sampler's is: the
exact comparisons replace numpy's exponential with the correctly rounded one (the rule is the
same, the probabilities then bit for bit the same); one test keeps numpy's own and bounds the
disagreement. On a CPU torch build here; the ``cuda`` variants run where a GPU is (skipped
otherwise, saying so).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest

torch = pytest.importorskip("torch", reason="torch is not installed (the device sampler needs it)")

from genwire_model.runtime import sampling  # noqa: E402
from genwire_model.runtime import sampling_torch as st  # noqa: E402
from genwire_model.runtime.sampling import Sampler, logsumexp, sample_reference  # noqa: E402

Array = npt.NDArray[Any]

NO_GPU = "no CUDA GPU here (CPU torch build or no device): `make gpu-check` runs these on a GPU"
DEVICES = [
    "cpu",
    pytest.param(
        "cuda",
        marks=[
            pytest.mark.gpu,
            pytest.mark.skipif(not torch.cuda.is_available(), reason=NO_GPU),
        ],
    ),
]


def _rounded_probabilities(logits: Array, temperature: Array) -> Array:
    """``sampling._probabilities`` with the correctly rounded exponential (as sampling_torch)."""
    result: Array = np.subtract(logits, logits.max(axis=1, keepdims=True))
    np.multiply(result, (1.0 / temperature).astype(np.float32)[:, None], out=result)
    rounded: Array = np.exp(result.astype(np.float64)).astype(np.float32)
    return rounded


@pytest.fixture
def rounded_exp(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setattr(sampling, "_probabilities", _rounded_probabilities)
    yield


def _case(
    rng: np.random.Generator, rows: int, vocab: int
) -> tuple[Array, Array, Array, Array, Array, Array]:
    """Random logits (some rows with ties, some masked tokens) and mixed options per row."""
    logits = (rng.standard_normal((rows, vocab)) * rng.uniform(0.5, 6.0)).astype(np.float32)
    for r in range(rows):
        if rng.random() < 0.3:  # coarse values: long runs of equal probabilities
            logits[r] = np.round(logits[r])
        if rng.random() < 0.3:
            logits[r, rng.choice(vocab, vocab // 3, replace=False)] = -np.inf
    temperature = rng.choice([0.0, 0.3, 0.7, 1.0, 1.5], rows)
    top_p = rng.choice([1.0, 1.0, 0.9, 0.5, 0.95, 0.1], rows)
    top_k = rng.choice([0, 0, 1, 5, 40, vocab - 1, vocab], rows).astype(np.int64)
    min_p = rng.choice([0.0, 0.0, 0.05, 0.2], rows)
    draws = rng.random(rows)
    return logits, temperature, top_p, top_k, min_p, draws


def _torch_sample(device: str, logits: Array, *options: Array) -> Array:
    tokens = st.sample(torch.from_numpy(logits.copy()).to(device), *options)
    result: Array = tokens.cpu().numpy()
    return result


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("vocab", [50, 1000, 4096])
def test_same_tokens_as_the_numpy_sampler(rounded_exp: None, device: str, vocab: int) -> None:
    rng = np.random.default_rng(vocab)
    sampler = Sampler(vocab)
    compared = 0
    for _ in range(60):
        logits, t, p, k, m, u = _case(rng, 16, vocab)
        fast = sampler.sample(logits.copy(), t, p, k, m, u)
        reference = sample_reference(logits.copy(), t, p, k, m, u)
        assert (fast == reference).all()  # the numpy paths agree (their own tests say so)
        got = _torch_sample(device, logits, t, p, k, m, u)
        if device == "cpu":
            np.testing.assert_array_equal(got, fast)
        else:  # a GPU's float64 scans may round differently in the last bit
            assert (got != fast).mean() <= 0.01
        compared += len(got)
    assert compared == 60 * 16


def test_with_numpys_own_exp_the_tokens_differ_only_rarely() -> None:
    rng = np.random.default_rng(7)
    sampler = Sampler(4096)
    same = total = 0
    for _ in range(40):
        logits, t, p, k, m, u = _case(rng, 32, 4096)
        fast = sampler.sample(logits.copy(), t, p, k, m, u)
        got = _torch_sample("cpu", logits, t, p, k, m, u)
        same += int((got == fast).sum())
        total += len(got)
    assert same / total >= 0.995, (same, total)


@pytest.mark.parametrize("device", DEVICES)
def test_walk_is_numpys_walk_bit_for_bit(device: str) -> None:
    rng = np.random.default_rng(3)
    for vocab in (1, 63, 64, 65, 1000, 4096):
        weights = rng.random((8, vocab)).astype(np.float32)
        weights[weights < 0.3] = 0.0
        weights[:, 0] = np.maximum(weights[:, 0], 0.5)
        draws = rng.random(8)
        draws[0] = 0.0
        draws[1] = np.nextafter(1.0, 0.0)
        expected = sampling.walk(weights, draws)
        got = st.walk(torch.from_numpy(weights).to(device), torch.from_numpy(draws).to(device))
        np.testing.assert_array_equal(got.cpu().numpy(), expected)


def test_greedy_rows_take_the_first_maximum() -> None:
    logits = np.array([[1.0, 3.0, 3.0, 0.0], [2.0, 2.0, -np.inf, 1.0]], np.float32)
    ones = np.ones(2)
    tokens = _torch_sample(
        "cpu", logits, np.zeros(2), ones, np.zeros(2, np.int64), np.zeros(2), np.full(2, 0.99)
    )
    assert tokens.tolist() == [1, 0]
    top_k_one = _torch_sample(
        "cpu", logits, ones, ones, np.ones(2, np.int64), np.zeros(2), np.full(2, 0.99)
    )
    assert top_k_one.tolist() == [1, 0]


def _kept(logits: Array, t: float, p: float, k: int, m: float) -> Array:
    probs = st.probabilities(torch.from_numpy(logits), np.array([t]))
    kept = st.keep(probs, np.array([p]), np.array([k], np.int64), np.array([m]))
    result: Array = kept.numpy()[0]
    return result


def test_top_k_cut_inside_a_tie_keeps_the_lower_ids() -> None:
    logits = np.array([[0.0, 2.0, 1.0, 2.0, 1.0, 1.0, 2.0]], np.float32)
    # Ranking: 1, 3, 6 (2.0), then 2, 4, 5 (1.0); top_k 4 keeps 1, 3, 6 and token 2 only.
    assert np.flatnonzero(_kept(logits, 1.0, 1.0, 4, 0.0)).tolist() == [1, 2, 3, 6]
    assert np.flatnonzero(_kept(logits, 1.0, 1.0, 2, 0.0)).tolist() == [1, 3]


def test_top_p_boundary_is_exact() -> None:
    # Probabilities 0.5, 0.25, 0.125, 0.125 (exact in float32): top_p 0.75 reaches the mass
    # with two tokens exactly; a hair more needs the third.
    logits = np.log(np.array([[0.5, 0.25, 0.125, 0.125]])).astype(np.float32)
    kept = _kept(logits, 1.0, 0.75, 0, 0.0)
    assert np.flatnonzero(kept).tolist() == [0, 1]
    assert np.flatnonzero(_kept(logits, 1.0, 0.7501, 0, 0.0)).tolist() == [0, 1, 2]
    # The fourth ties the third: the lower id is kept; 0.875 < 0.9 needs both.
    assert np.flatnonzero(_kept(logits, 1.0, 0.8, 0, 0.0)).tolist() == [0, 1, 2]
    assert np.flatnonzero(_kept(logits, 1.0, 0.9, 0, 0.0)).tolist() == [0, 1, 2, 3]


def test_min_p_keeps_at_least_that_fraction_of_the_best() -> None:
    logits = np.log(np.array([[0.4, 0.2, 0.1, 0.3]])).astype(np.float32)
    assert np.flatnonzero(_kept(logits, 1.0, 1.0, 0, 0.5)).tolist() == [0, 1, 3]
    assert np.flatnonzero(_kept(logits, 1.0, 1.0, 0, 0.76)).tolist() == [0]


def test_masked_tokens_are_never_sampled() -> None:
    rng = np.random.default_rng(5)
    logits = rng.standard_normal((64, 100)).astype(np.float32)
    logits[:, ::2] = -np.inf
    n = len(logits)
    tokens = _torch_sample(
        "cpu",
        logits,
        np.full(n, 2.0),
        np.ones(n),
        np.zeros(n, np.int64),
        np.zeros(n),
        rng.random(n),
    )
    assert (tokens % 2 == 1).all()


@pytest.mark.parametrize("device", DEVICES)
def test_logsumexp_and_top_logprobs_match_numpy(device: str) -> None:
    rng = np.random.default_rng(11)
    logits = (rng.standard_normal((6, 300)) * 4).astype(np.float32)
    logits[2] = np.round(logits[2])  # ties: lower ids first
    lse = logsumexp(logits)
    ids, lps = sampling.top_logprobs(logits, lse, 7)
    tensor = torch.from_numpy(logits).to(device)
    got_lse = st.logsumexp(tensor)
    got_ids, got_lps = st.top_logprobs(tensor, got_lse, 7)
    np.testing.assert_allclose(got_lse.cpu().numpy(), lse, rtol=1e-6, atol=1e-5)
    np.testing.assert_array_equal(got_ids.cpu().numpy(), ids)
    np.testing.assert_allclose(got_lps.cpu().numpy(), lps, rtol=1e-6, atol=1e-5)


def _sequence(vocab: int, prompt: list[int], **options: Any) -> Any:
    from genwire_model.runtime.scheduler import Request, _Group, _Sequence

    class Sink:
        def send(self, update: object) -> None: ...
        def fail(self, message: str) -> None: ...
        def is_cancelled(self) -> bool:
            return False

    request = Request(
        np.asarray(prompt, np.int64),
        max_tokens=8,
        temperature=1.0,
        top_p=1.0,
        top_k=0,
        seed=1,
        stop_ids=frozenset({9}),
        stream=False,
        sink=Sink(),
        **options,
    )
    return _Sequence(_Group(request), 0, vocab, frozenset({0}))


def test_options_are_the_numpy_options_bit_for_bit() -> None:
    """Bias, min_tokens suppression, repetition / frequency / presence penalties, batched on
    the tensor, equal ``_Sequence.process`` row by row."""
    from genwire_model.runtime.scheduler import Scheduler

    vocab, rng = 40, np.random.default_rng(2)
    seqs = [
        _sequence(vocab, [1, 2], logit_bias={3: 2.5, 7: -100.0}),
        _sequence(vocab, [4], min_tokens=2),
        _sequence(
            vocab, [5, 6], repetition_penalty=1.7, frequency_penalty=0.3, presence_penalty=-0.4
        ),
        _sequence(vocab, [8]),  # no options
        _sequence(vocab, [1], frequency_penalty=1.1, logit_bias={1: 0.7}, min_tokens=1),
    ]
    for seq in seqs:
        if seq.counts is not None:
            seq.counts[rng.integers(0, vocab, 12)] += rng.integers(1, 4, 12).astype(np.int32)
    logits = (rng.standard_normal((len(seqs), vocab)) * 3).astype(np.float32)
    expected = logits.copy()
    for i, seq in enumerate(seqs):
        if seq.processed:
            seq.process(expected[i])
    got = torch.from_numpy(logits.copy())
    rows = [i for i, s in enumerate(seqs) if s.processed]
    Scheduler._process_on_device(None, seqs, rows, got)  # type: ignore[arg-type]
    np.testing.assert_array_equal(got.numpy(), expected)
    assert np.isneginf(expected[1, [0, 9]]).all()  # eos and the stop id held back


def test_masks_and_the_all_forbidden_fallback() -> None:
    logits = np.array([[1.0, 2.0, 3.0, 4.0], [1.0, 2.0, 3.0, 4.0]], np.float32)
    raw = torch.from_numpy(logits.copy())
    work = raw.clone()
    work[1, 2] = float("-inf")  # min_tokens forbade the only token the grammar allows
    allowed = np.array([[True, False, True, False], [False, False, True, False]])
    st.apply_masks(work, raw, np.array([0, 1]), allowed)
    inf = float("-inf")
    assert work.tolist() == [[1.0, inf, 3.0, inf], [inf, inf, 3.0, inf]]


# -- the decode loop on a device: the same text as on numpy ------------------------------------
class TorchLogits:
    """The ONNX Runtime runner, dressed as TensorRT's: logits come back as torch tensors when
    ``host_logits`` is False (here on the CPU)."""

    backend = "tensorrt"

    def __init__(self, inner: Any, device: str = "cpu") -> None:
        self.inner = inner
        self.device = device
        self.host_logits = True
        self.passes = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def _wrap(self, result: tuple[Array, Any]) -> tuple[Any, Any]:
        logits, kv = result
        self.passes += 1
        if self.host_logits:
            return logits, kv
        return torch.from_numpy(np.array(logits, np.float32)).to(self.device), kv

    def forward(self, *args: Any) -> tuple[Any, Any]:
        return self._wrap(self.inner.forward(*args))

    def step(self, *args: Any) -> tuple[Any, Any]:
        return self._wrap(self.inner.step(*args))


def _scheduler_run(runner: Any, requests: list[dict[str, Any]]) -> list[Any]:
    from genwire_model.runtime.scheduler import Request, Scheduler

    class Sink:
        def __init__(self) -> None:
            self.updates: list[Any] = []

        def send(self, update: Any) -> None:
            self.updates.append(update)

        def fail(self, message: str) -> None:
            raise AssertionError(message)

        def is_cancelled(self) -> bool:
            return False

    scheduler = Scheduler(runner, context=64, eos_ids=(0,), max_batch=8)
    sinks = []
    for options in requests:
        sink = Sink()
        args: dict[str, Any] = {
            "max_tokens": 10,
            "temperature": 0.9,
            "top_p": 0.95,
            "top_k": 0,
            "seed": 1,
            "stop_ids": frozenset(),
            "stream": True,
        }
        args.update(options)
        prompt = np.asarray(args.pop("prompt"), np.int64)
        scheduler.submit(Request(prompt, sink=sink, **args))
        sinks.append(sink)
    for _ in range(1000):
        if all(s.updates and s.updates[-1].last for s in sinks):
            break
        scheduler.run_once()
    return [
        sorted(
            (u.choice, t, lp, tuple(top))
            for u in s.updates
            for t, lp, top in zip(
                u.token_ids, u.logprobs, u.top_ids or [[]] * len(u.token_ids), strict=True
            )
        )
        for s in sinks
    ]


REQUESTS: list[dict[str, Any]] = [
    {"prompt": [5, 6, 7]},
    {"prompt": [8, 9], "temperature": 0.0, "top_logprobs": 3},
    {"prompt": [20, 21, 22, 23], "top_k": 5, "min_p": 0.05, "seed": 4},
    {"prompt": [30], "n": 3, "seed": 9, "top_p": 0.5},
    {"prompt": [40, 41], "logit_bias": {7: 5.0, 11: -100.0}, "presence_penalty": 0.5},
    {
        "prompt": [5, 9, 5],
        "repetition_penalty": 1.3,
        "frequency_penalty": 0.4,
        "min_tokens": 4,
        "top_logprobs": 2,
    },
]


@pytest.fixture(scope="module")
def onnx_runner(tiny_version: Any) -> Any:
    from genwire_model.runtime.runners import create_runner

    return create_runner(tiny_version.path)


@pytest.mark.parametrize("device", DEVICES)
def test_the_decode_loop_on_a_device_writes_the_numpy_loops_text(
    onnx_runner: Any, device: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sampling, "_probabilities", _rounded_probabilities)
    on_host = _scheduler_run(onnx_runner, REQUESTS)
    runner = TorchLogits(onnx_runner, device)
    on_device = _scheduler_run(runner, REQUESTS)
    assert runner.host_logits is False and runner.passes > 0  # the loop asked for device logits
    for host, dev in zip(on_host, on_device, strict=True):
        assert [(c, t, top) for c, t, _, top in dev] == [(c, t, top) for c, t, _, top in host]
        np.testing.assert_allclose([x[2] for x in dev], [x[2] for x in host], atol=1e-4)
    assert sum(len(x) for x in on_host) > 30
    assert any(top for x in on_host for *_, top in x)  # top_logprobs compared too


def test_after_a_fallback_the_loop_samples_numpy_logits_again(
    onnx_runner: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A FallbackRunner that switched to ONNX Runtime returns numpy logits: the numpy path."""
    called: list[int] = []
    original = Sampler.sample

    def counting(self: Sampler, logits: Array, *rest: Any) -> Array:
        called.append(len(logits))
        result: Array = original(self, logits, *rest)
        return result

    monkeypatch.setattr(Sampler, "sample", counting)
    runner = TorchLogits(onnx_runner)
    runner.backend = "onnxruntime"  # what a FallbackRunner reports after switching
    _scheduler_run(runner, REQUESTS[:2])
    assert runner.host_logits is True and called


def test_a_built_version_carries_the_device_sampler(tiny_version: Any) -> None:
    package = tiny_version.path / "genwire_runtime"
    assert (package / "sampling_torch.py").read_bytes() == (Path(st.__file__).read_bytes())
