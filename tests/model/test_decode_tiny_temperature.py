"""A temperature so small that its reciprocal overflows float32 (any T >= 0 is a valid request)
is greedy in both samplers, and a row whose sampling fails anyway fails its own request only,
not the others prefilled or decoding with it.

The decode loop runs on a fake runner (deterministic logits from the last token and its
position): these are about the loop's bookkeeping, not the model.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
from genwire_model.runtime.sampling import Sampler, sample_reference
from genwire_model.runtime.scheduler import Request, Scheduler, validate

from tests.model.decode import Collect

Array = npt.NDArray[Any]
VOCAB = 64
TINY = [1e-45, 1e-40, float(np.float32(1e-40)), 2.9e-39]
"""Temperatures whose reciprocal overflows float32 (the float32-rounded one as the model's FP32
input carries it; 2.9e-39 just under the least that samples, about 2.94e-39)."""


class FakeRunner:
    """The runner interface on numpy, logits a pure function of (last token, position); with
    ``on_device`` the logits come back as torch tensors, as TensorRT's do."""

    min_past = 1
    L, H, D = 1, 1, 2

    def __init__(self, on_device: bool = False) -> None:
        self.vocab_size = VOCAB
        self.backend = "tensorrt" if on_device else "fake"
        self.host_logits = True

    def _logits(self, ids: Array, positions: Array) -> Any:
        rows = [
            np.random.default_rng(int(t) * 1000 + int(p)).standard_normal(VOCAB) * 2
            for t, p in zip(ids[:, -1], positions[:, -1], strict=True)
        ]
        logits = np.stack(rows).astype(np.float32)
        if self.host_logits:
            return logits
        import torch

        return torch.from_numpy(logits)

    def forward(self, ids: Array, mask: Array, positions: Array, kv: Any) -> tuple[Any, Any]:
        rows, width = ids.shape
        new = np.zeros((self.L, rows, self.H, width, self.D), np.float32)
        k = np.concatenate([kv[0], new], axis=3)
        return self._logits(ids, positions), (k, k.copy())

    def empty(self, rows: int, width: int) -> tuple[Array, Array]:
        z = np.zeros((self.L, rows, self.H, width, self.D), np.float32)
        return z, z.copy()

    def pad_left(self, kv: Any, columns: int) -> tuple[Array, ...]:
        return tuple(np.pad(x, ((0, 0), (0, 0), (0, 0), (columns, 0), (0, 0))) for x in kv)

    def concat(self, parts: list[Any]) -> tuple[Array, ...]:
        return tuple(np.concatenate([p[i] for p in parts], axis=1) for i in range(2))

    def take(self, kv: Any, rows: list[int]) -> tuple[Array, ...]:
        return tuple(x[:, rows] for x in kv)

    def trim_left(self, kv: Any, columns: int) -> tuple[Array, ...]:
        return tuple(x[:, :, :, columns:] for x in kv)


class Sink(Collect):
    @property
    def done(self) -> bool:  # the request's last response (every choice), not one choice's
        return bool(self.errors) or any(u.last for u in self.updates)


def _request(sink: Sink, prompt: list[int], **kw: Any) -> Request:
    args: dict[str, Any] = {
        "max_tokens": 8,
        "temperature": 0.8,
        "top_p": 1.0,
        "top_k": 0,
        "seed": 7,
        "stop_ids": frozenset(),
        "stream": False,
    }
    args.update(kw)
    request = Request(prompt=np.asarray(prompt, np.int64), sink=sink, **args)
    validate(request, VOCAB, 64)
    return request


def _generate(runner: FakeRunner, requests: list[dict[str, Any]]) -> list[Sink]:
    """Every request queued at once (one prefill pass), run to the end."""
    scheduler = Scheduler(runner, context=64, eos_ids=(0,), max_batch=8)
    sinks = [Sink() for _ in requests]
    for sink, options in zip(sinks, requests, strict=True):
        scheduler.pending.put(_request(sink, **options))
    for _ in range(200):
        if all(s.done for s in sinks):
            return sinks
        scheduler.run_once()
    raise AssertionError("generation did not finish")


# -- the samplers ------------------------------------------------------------------------------
def test_min_temperature_is_where_the_reciprocal_stops_overflowing() -> None:
    from genwire_model.runtime.sampling import MIN_TEMPERATURE

    with np.errstate(over="ignore"):
        assert np.isfinite(np.float32(1.0 / MIN_TEMPERATURE))
        assert np.isinf(np.float32(1.0 / np.nextafter(MIN_TEMPERATURE, 0.0)))


@pytest.mark.parametrize("rows", [1, 3], ids=["one-row", "batch"])
@pytest.mark.parametrize("temperature", TINY)
def test_a_tiny_temperature_is_greedy(rows: int, temperature: float) -> None:
    logits = (np.random.default_rng(0).standard_normal((rows, 512)) * 3).astype(np.float32)
    options = (
        np.full(rows, temperature),
        np.ones(rows),
        np.zeros(rows, np.int64),
        np.zeros(rows),
        np.full(rows, 0.5),
    )
    greedy = logits.argmax(axis=1).tolist()
    with np.errstate(all="raise"):  # no NaN made on the way
        assert Sampler(512, partial=True).sample(logits.copy(), *options).tolist() == greedy
        assert sample_reference(logits.copy(), *options).tolist() == greedy


def test_the_least_sampled_temperature_still_samples() -> None:
    """At ``MIN_TEMPERATURE`` the row is sampled (a draw between two tied maxima decides)."""
    from genwire_model.runtime.sampling import MIN_TEMPERATURE, sampled_rows

    logits = np.array([[1.0, 3.0, 3.0, 0.0]], np.float32)
    options = (np.full(1, MIN_TEMPERATURE), np.ones(1), np.zeros(1, np.int64), np.zeros(1))
    with np.errstate(over="ignore"):  # the other logits' scaled gaps overflow to -inf: 0
        assert Sampler(4).sample(logits.copy(), *options, np.full(1, 0.9)).tolist() == [2]
        assert sample_reference(logits.copy(), *options, np.full(1, 0.9)).tolist() == [2]
    assert sampled_rows(np.array([0.0, MIN_TEMPERATURE]), np.zeros(2)).tolist() == [
        False,
        True,
    ]


@pytest.mark.parametrize("temperature", TINY)
def test_a_tiny_temperature_is_greedy_on_the_device_sampler(temperature: float) -> None:
    torch = pytest.importorskip("torch", reason="torch is not installed")
    from genwire_model.runtime import sampling_torch as st

    logits = (np.random.default_rng(1).standard_normal((3, 512)) * 3).astype(np.float32)
    chosen = st.sample(
        torch.from_numpy(logits),
        np.full(3, temperature),
        np.ones(3),
        np.zeros(3, np.int64),
        np.zeros(3),
        np.full(3, 0.5),
    )
    assert chosen.tolist() == logits.argmax(axis=1).tolist()


# -- the decode loop ---------------------------------------------------------------------------
@pytest.mark.parametrize("on_device", [False, True], ids=["numpy", "torch"])
def test_a_tiny_temperature_neither_fails_nor_harms_its_prefill_neighbours(
    on_device: bool,
) -> None:
    if on_device:
        pytest.importorskip("torch", reason="torch is not installed")
    innocent = {"prompt": [1, 2, 3]}
    tiny = {"prompt": [4, 5], "temperature": float(np.float32(1e-40))}
    alone = _generate(FakeRunner(on_device), [innocent])[0]
    greedy = _generate(FakeRunner(on_device), [{**tiny, "temperature": 0.0}])[0]
    both = _generate(FakeRunner(on_device), [innocent, tiny])
    assert [s.errors for s in both] == [[], []]
    assert both[0].tokens == alone.tokens
    assert both[1].tokens == greedy.tokens  # the limit T -> 0


def _failing_on(sample: Callable[..., Any], poison: float, armed: list[bool]) -> Callable[..., Any]:
    """``sample`` that raises for any batch holding a row of temperature ``poison`` (once
    ``armed``), as a sampler bug on one row's values would."""

    def wrapped(logits: Any, temperature: Array, *rest: Any) -> Any:
        if armed[0] and (np.asarray(temperature) == poison).any():
            raise IndexError("index -1 is out of bounds for axis 0 with size 0")
        return sample(logits, temperature, *rest)

    return wrapped


POISON = 0.625


@pytest.mark.parametrize("on_device", [False, True], ids=["numpy", "torch"])
@pytest.mark.parametrize("when", ["prefill", "decode"])
def test_one_rows_sampling_failure_fails_its_request_only(
    monkeypatch: pytest.MonkeyPatch, on_device: bool, when: str
) -> None:
    if on_device:
        pytest.importorskip("torch", reason="torch is not installed")
    requests = [
        {"prompt": [1, 2, 3]},
        {"prompt": [4, 5], "temperature": POISON, "n": 2},
        {"prompt": [6], "seed": 3, "stream": True},
    ]
    expected = [_generate(FakeRunner(on_device), [r])[0].tokens for r in (requests[0], requests[2])]
    scheduler = Scheduler(FakeRunner(on_device), context=64, eos_ids=(0,), max_batch=8)
    armed = [when == "prefill"]
    if on_device:
        from genwire_model.runtime import sampling_torch as st

        monkeypatch.setattr(st, "sample", _failing_on(st.sample, POISON, armed))
    else:
        monkeypatch.setattr(
            scheduler.sampler, "sample", _failing_on(scheduler.sampler.sample, POISON, armed)
        )
    sinks = [Sink() for _ in requests]
    for sink, options in zip(sinks, requests, strict=True):
        scheduler.pending.put(_request(sink, **options))
    scheduler.run_once()  # the prefill pass, and the batch's first step
    armed[0] = True
    for _ in range(50):
        if all(s.done for s in sinks):
            break
        scheduler.run_once()
    message = "sampling failed: IndexError: index -1 is out of bounds for axis 0 with size 0"
    assert sinks[1].errors == [message] and not [u for u in sinks[1].updates if u.last]
    assert [sinks[0].errors, sinks[2].errors] == [[], []]
    assert [sinks[0].tokens, sinks[2].tokens] == expected  # the same draws: the same text
    assert not scheduler.active  # the failed request's choices left the batch
