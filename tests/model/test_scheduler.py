"""The decode loop in-process (ONNX Runtime, no Triton): batching, stops, limits, cancel."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
from genwire_model.repository import ModelVersion
from genwire_model.runtime.runners import create_runner
from genwire_model.runtime.scheduler import (
    Request,
    RequestError,
    Scheduler,
    Update,
    validate,
)


class Collect:
    """A sink that keeps every update; cancels itself after ``cancel_after`` tokens."""

    def __init__(self, cancel_after: int | None = None) -> None:
        self.updates: list[Update] = []
        self.errors: list[str] = []
        self.cancel_after = cancel_after

    def send(self, update: Update) -> None:
        self.updates.append(update)

    def fail(self, message: str) -> None:
        self.errors.append(message)

    def is_cancelled(self) -> bool:
        tokens = sum(len(u.token_ids) for u in self.updates)
        return self.cancel_after is not None and tokens >= self.cancel_after

    @property
    def done(self) -> bool:
        return bool(self.errors) or bool(self.updates and self.updates[-1].finished)

    @property
    def tokens(self) -> list[int]:
        return [t for u in self.updates for t in u.token_ids]


@pytest.fixture(scope="module")
def make(tiny_version: ModelVersion) -> Callable[..., Scheduler]:
    runner = create_runner(tiny_version.path)

    def factory(
        eos: tuple[int, ...] = (), max_batch: int = 8, prefill_tokens: int = 1024
    ) -> Scheduler:
        return Scheduler(
            runner, context=64, eos_ids=eos, max_batch=max_batch, prefill_tokens=prefill_tokens
        )

    return factory


def request(sink: Collect, prompt: list[int], **kw: object) -> Request:
    args: dict[str, object] = {
        "max_tokens": 12,
        "temperature": 0.9,
        "top_p": 0.95,
        "top_k": 0,
        "seed": 1,
        "stop_ids": frozenset(),
        "stream": True,
    }
    args.update(kw)
    return Request(np.asarray(prompt, dtype=np.int64), sink=sink, **args)  # type: ignore[arg-type]


def run(scheduler: Scheduler, sinks: list[Collect]) -> None:
    for _ in range(10_000):
        if all(s.done for s in sinks):
            return
        scheduler.run_once()
    raise AssertionError("generation did not finish")


PROMPTS = [[5, 6, 7], [8, 9, 10, 11, 12, 13, 14, 15], [20], [30, 31, 32, 33, 34], [40, 41]]


def test_batched_equals_one_at_a_time(make: Callable[..., Scheduler]) -> None:
    alone = []
    for i, prompt in enumerate(PROMPTS):
        sink = Collect()
        scheduler = make()
        scheduler.submit(request(sink, prompt, seed=i, max_tokens=8 + i))
        run(scheduler, [sink])
        alone.append(sink.tokens)
    scheduler = make()
    sinks = [Collect() for _ in PROMPTS]
    for i, (prompt, sink) in enumerate(zip(PROMPTS, sinks, strict=True)):
        scheduler.submit(request(sink, prompt, seed=i, max_tokens=8 + i))
    run(scheduler, sinks)
    assert [s.tokens for s in sinks] == alone
    assert [s.updates[-1].finish_reason for s in sinks] == ["length"] * len(PROMPTS)
    assert not scheduler.active and scheduler.kv is None  # every slot freed


@pytest.mark.parametrize("prefill_tokens", [1, 16])
def test_prefill_groups_and_slot_limits_do_not_change_the_text(
    make: Callable[..., Scheduler], prefill_tokens: int
) -> None:
    reference = make()
    sinks = [Collect() for _ in PROMPTS]
    for i, (prompt, sink) in enumerate(zip(PROMPTS, sinks, strict=True)):
        reference.submit(request(sink, prompt, seed=i, max_tokens=6))
    run(reference, sinks)
    # One prompt per prefill pass (or small groups), and only two slots: requests wait.
    scheduler = make(prefill_tokens=prefill_tokens, max_batch=2)
    others = [Collect() for _ in PROMPTS]
    for i, (prompt, sink) in enumerate(zip(PROMPTS, others, strict=True)):
        scheduler.submit(request(sink, prompt, seed=i, max_tokens=6))
    run(scheduler, others)
    assert [s.tokens for s in others] == [s.tokens for s in sinks]
    assert max(s.updates[-1].queue_ms for s in others) > 0


def test_requests_joining_a_running_batch_match_too(make: Callable[..., Scheduler]) -> None:
    solo = Collect()
    s1 = make()
    s1.submit(request(solo, PROMPTS[1], seed=3, max_tokens=10))
    run(s1, [solo])
    scheduler = make()
    first, late = Collect(), Collect()
    scheduler.submit(request(first, PROMPTS[0], seed=9, max_tokens=20))
    for _ in range(5):
        scheduler.run_once()
    scheduler.submit(request(late, PROMPTS[1], seed=3, max_tokens=10))  # joins mid-way
    run(scheduler, [first, late])
    assert late.tokens == solo.tokens


def test_streaming_sends_a_response_per_token_then_a_final_one(
    make: Callable[..., Scheduler],
) -> None:
    sink, scheduler = Collect(), make()
    scheduler.submit(request(sink, [5, 6], max_tokens=6))
    run(scheduler, [sink])
    assert [len(u.token_ids) for u in sink.updates[:-1]] == [1] * 5
    final = sink.updates[-1]
    assert final.finished and final.finish_reason == "length"
    assert final.completion_tokens == 6 and final.prompt_tokens == 2
    assert not any(u.finished for u in sink.updates[:-1])
    lps = [lp for u in sink.updates for lp in u.logprobs]
    assert final.mean_logprob == pytest.approx(float(np.mean(lps)), rel=1e-5)
    assert all(lp <= 0 for lp in lps)


def test_non_streaming_sends_one_response(make: Callable[..., Scheduler]) -> None:
    streamed, single = Collect(), Collect()
    for sink, stream in ((streamed, True), (single, False)):
        scheduler = make()
        scheduler.submit(request(sink, [5, 6], max_tokens=6, seed=4, stream=stream))
        run(scheduler, [sink])
    assert len(single.updates) == 1 and single.updates[0].finished
    assert single.tokens == streamed.tokens


def test_stop_token_ends_generation_without_being_emitted(
    make: Callable[..., Scheduler],
) -> None:
    free = Collect()
    scheduler = make()
    scheduler.submit(request(free, [5, 6, 7], temperature=0.0, max_tokens=10))
    run(scheduler, [free])
    stop = free.tokens[3]
    expected = free.tokens[: free.tokens.index(stop)]
    for stop_ids, eos in ((frozenset({stop}), ()), (frozenset(), (stop,))):
        sink = Collect()
        scheduler = make(eos=eos)
        scheduler.submit(
            request(sink, [5, 6, 7], temperature=0.0, max_tokens=10, stop_ids=stop_ids)
        )
        run(scheduler, [sink])
        assert sink.tokens == expected
        assert sink.updates[-1].finish_reason == "stop"


def test_context_window_limits_the_completion(make: Callable[..., Scheduler]) -> None:
    sink, scheduler = Collect(), make()
    scheduler.submit(request(sink, list(range(1, 61)), max_tokens=50))
    run(scheduler, [sink])
    final = sink.updates[-1]
    assert final.finish_reason == "length"
    assert final.completion_tokens == 64 - 60 + 1  # the last token is sampled, never fed


def test_cancelled_request_frees_its_slot(make: Callable[..., Scheduler]) -> None:
    cancelled, other = Collect(cancel_after=3), Collect()
    scheduler = make()
    scheduler.submit(request(cancelled, [5, 6], max_tokens=40))
    scheduler.submit(request(other, [7, 8], max_tokens=20))
    run(scheduler, [cancelled, other])
    assert cancelled.updates[-1].finish_reason == "cancelled"
    assert len(cancelled.tokens) < 40
    assert other.updates[-1].finish_reason == "length" and len(other.tokens) == 20


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"prompt": []}, "input_ids is empty"),
        ({"prompt": list(range(64))}, "longer than the context window"),
        ({"prompt": [600]}, "input_ids out of range"),
        ({"max_tokens": 0}, "max_tokens must be"),
        ({"temperature": -0.5}, "temperature must be"),
        ({"temperature": float("nan")}, "temperature must be"),
        ({"top_p": 0.0}, "top_p must be"),
        ({"top_p": 1.5}, "top_p must be"),
        ({"top_k": -1}, "top_k must be"),
        ({"stop_ids": frozenset({9999})}, "stop_token_ids out of range"),
    ],
)
def test_out_of_range_parameters_are_named(change: dict[str, object], message: str) -> None:
    prompt = change.pop("prompt", [1, 2, 3])
    with pytest.raises(RequestError, match=message):
        validate(request(Collect(), prompt, **change), vocab_size=512, context=64)  # type: ignore[arg-type]
