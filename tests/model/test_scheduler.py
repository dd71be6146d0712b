"""The decode loop in-process (ONNX Runtime, no Triton): batching, stops, limits, cancel."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from genwire_model.repository import ModelVersion
from genwire_model.runtime.runners import create_runner
from genwire_model.runtime.scheduler import (
    INLINE_FIRST_RESPONSES,
    LoopTimes,
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
        return bool(self.errors) or bool(self.updates and self.updates[-1].last)

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


def test_rows_join_in_place_of_rows_that_ended(make: Callable[..., Scheduler]) -> None:
    """A closed loop: every request that ends is replaced at once; the new rows go into the
    rows that ended (no batch copy), and the text is what each request gives alone."""
    jobs = [(PROMPTS[i % len(PROMPTS)], i, 3 + (i * 5) % 9) for i in range(14)]
    alone = []
    for prompt, seed, max_tokens in jobs:
        sink, single = Collect(), make()
        single.submit(request(sink, prompt, seed=seed, max_tokens=max_tokens))
        run(single, [sink])
        alone.append(sink.tokens)
    scheduler = make(max_batch=4)
    sinks = [Collect() for _ in jobs]
    started = 0
    for _ in range(10_000):
        running = sum(1 for s in sinks[:started] if not s.done)
        while started < len(jobs) and running < 4:
            prompt, seed, max_tokens = jobs[started]
            scheduler.submit(request(sinks[started], prompt, seed=seed, max_tokens=max_tokens))
            started += 1
            running += 1
        if all(s.done for s in sinks):
            break
        scheduler.run_once()
    assert [s.tokens for s in sinks] == alone
    assert scheduler.reforms_in_place > 0
    assert not scheduler.active and scheduler.kv is None


def test_the_loop_times_count_its_steps_rows_and_width(make: Callable[..., Scheduler]) -> None:
    """``Scheduler.times``: every decode step with the rows it fed and sampled and its cache
    width; its parts within the iterations' whole; a request joining mid-way counted in the
    admissions and prefill passes."""
    scheduler = make()
    scheduler.times = LoopTimes()
    first, late = Collect(), Collect()
    # Prompt of 3, 6 tokens: the first from the prefill, then 5 decode steps at widths 3..7.
    scheduler.submit(request(first, PROMPTS[0], seed=1, max_tokens=6))
    run(scheduler, [first])
    times = scheduler.times
    assert (times.steps, times.rows, times.live_rows, times.columns) == (5, 5, 5, 3 + 4 + 5 + 6 + 7)
    assert times.iterations == 5  # the first iteration prefills, then steps
    assert times.prefill_pass_s > 0 and times.pass_s > 0 and times.sampling_s > 0
    parts = times.pass_s + times.sampling_s + times.admit_s + times.reform_s
    assert times.prefill_pass_s <= times.admit_s and parts <= times.total_s
    each = times.per_step()
    assert each["rows"] == each["live_rows"] == 1.0 and each["width"] == 5.0
    assert each["step_ms"] == pytest.approx(times.total_s * 1e3 / 5, abs=1e-3)
    assert each["other_ms"] >= 0
    # Two rows, the second joining after two steps of the first: rows fed and sampled per step.
    scheduler.times = LoopTimes()
    scheduler.submit(request(first, PROMPTS[0], seed=1, max_tokens=8))
    scheduler.run_once()
    scheduler.run_once()
    scheduler.submit(request(late, PROMPTS[2], seed=2, max_tokens=3))
    run(scheduler, [first, late])
    times = scheduler.times
    # 7 steps for the first (its 8 tokens less the prefill's); the late one joins the third
    # and samples in two (its 3 tokens less the prefill's); its row stays in the batch after
    # it ended, fed and not sampled, until the first ends: 1+1+2+2+2+2+2 fed, 1+1+2+2+1+1+1.
    assert (times.steps, times.rows, times.live_rows) == (7, 12, 9)
    assert times.admit_s >= times.prefill_pass_s > 0  # its prefill counted in the admission
    assert LoopTimes().per_step()["step_ms"] == 0.0  # no step: no division by zero


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


def _fake_clock(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """The scheduler's clock (``time.monotonic``), moved by hand: ``clock[0]``."""
    import time

    clock = [100.0]
    monkeypatch.setattr(time, "monotonic", lambda: clock[0])
    return clock


class Timed(Collect):
    """A ``Collect`` that also records the clock (``_fake_clock``) at each response."""

    def __init__(self, clock: list[float]) -> None:
        super().__init__()
        self.clock = clock
        self.times: list[float] = []

    def send(self, update: Update) -> None:
        self.times.append(self.clock[0])
        super().send(update)


def test_the_response_budget_chunks_by_time_first_and_final_at_once(
    tiny_version: ModelVersion, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``responses_per_s``: a choice's next response waits live rows / budget seconds after
    its previous one (the first token and the final response go at once); the text is the
    same as with a response per token."""
    clock = _fake_clock(monkeypatch)

    runner = create_runner(tiny_version.path)
    texts = []
    for budget in (0.0, 100.0):  # two rows: a response every 20 ms per row at most
        scheduler = Scheduler(runner, context=64, eos_ids=(), responses_per_s=budget)
        sinks = [Timed(clock), Timed(clock)]
        for i, sink in enumerate(sinks):
            scheduler.submit(request(sink, [5 + i, 6], max_tokens=20, seed=i))
        while not all(s.done for s in sinks):
            scheduler.run_once()
            clock[0] += 0.003  # a 3 ms step
        texts.append([s.tokens for s in sinks])
        for sink in sinks:
            sizes = [len(u.token_ids) for u in sink.updates]
            assert sum(sizes) == 20 and sink.updates[-1].finished
            if not budget:
                assert sizes == [1] * 20  # a response per token, the last one final
                continue
            gaps = np.diff(sink.times[:-1])  # the final response does not wait
            # 2 rows / 100 per s = 20 ms: sent at the first 3 ms step after that (the first
            # iteration prefills and steps at one time: 8 tokens in the second response).
            assert all(0.020 - 1e-9 <= g < 0.023 for g in gaps), gaps
            assert sizes == [1, 8, 7, 4]
    assert texts[0] == texts[1]


@pytest.mark.parametrize("budget", [100.0, 0.0])
def test_a_requests_least_gap_spaces_its_responses_only(
    tiny_version: ModelVersion, monkeypatch: pytest.MonkeyPatch, budget: float
) -> None:
    """``Request.min_gap_s`` (parameter ``genwire_min_response_gap_ms``): that request's
    responses at least that far apart when longer than the budget's spacing, with or without
    a budget; the other row keeps the budget's; the first and final responses go at once."""
    clock = _fake_clock(monkeypatch)

    scheduler = Scheduler(
        create_runner(tiny_version.path), context=64, eos_ids=(), responses_per_s=budget
    )
    spaced, other = Timed(clock), Timed(clock)
    scheduler.submit(request(spaced, [5, 6], max_tokens=30, seed=0, min_gap_s=0.05))
    scheduler.submit(request(other, [6, 6], max_tokens=30, seed=1))
    for _ in range(10_000):
        if spaced.done and other.done:
            break
        scheduler.run_once()
        clock[0] += 0.003  # a 3 ms step
    assert sum(len(u.token_ids) for u in spaced.updates) == 30 and spaced.updates[-1].finished
    spaced_gaps = np.diff(spaced.times[:-1])
    assert len(spaced_gaps) >= 1 and all(0.050 - 1e-9 <= g < 0.053 for g in spaced_gaps)
    other_gaps = np.diff(other.times[:-1])
    if budget:  # 2 rows / 100 per s = 20 ms
        assert all(0.020 - 1e-9 <= g < 0.023 for g in other_gaps), other_gaps
    else:  # a response per token
        assert [len(u.token_ids) for u in other.updates] == [1] * 30


def test_a_held_first_response_waits_for_the_requests_least_gap(
    tiny_version: ModelVersion, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``Request.hold_first`` (parameter ``genwire_hold_first_response``): a request that ends
    before its least gap gets one response, its final with every token; a longer one its first
    response no sooner than the gap after it was received, then one a gap; an unheld streamed
    request beside them still gets its first token at once."""
    clock = _fake_clock(monkeypatch)
    scheduler = Scheduler(create_runner(tiny_version.path), context=64, eos_ids=())
    short, long, plain = Timed(clock), Timed(clock), Timed(clock)
    start = clock[0]
    held = {"hold_first": True, "received": start}
    scheduler.submit(request(short, [5, 6], max_tokens=8, seed=0, min_gap_s=10.0, **held))
    scheduler.submit(request(long, [6, 6], max_tokens=40, seed=1, min_gap_s=0.05, **held))
    scheduler.submit(request(plain, [7, 6], max_tokens=8, seed=2, received=start))
    for _ in range(10_000):
        if short.done and long.done and plain.done:
            break
        scheduler.run_once()
        clock[0] += 0.003  # a 3 ms step
    assert len(short.updates) == 1
    assert short.updates[0].finished and len(short.updates[0].token_ids) == 8
    assert sum(len(u.token_ids) for u in long.updates) == 40 and long.updates[-1].finished
    assert len(long.updates) >= 3  # 40 tokens at 3 ms: about 120 ms, a response a 50 ms gap
    assert long.times[0] - start >= 0.050 - 1e-9, long.times
    assert all(g >= 0.050 - 1e-9 for g in np.diff(long.times[:-1]))
    assert plain.times[0] == start and len(plain.updates[0].token_ids) == 1
    assert len(plain.updates) == 8  # no budget: a response per token


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


class Handovers:
    """A ``publish`` that records each hand-over (updates, urgent, inline), then sends them."""

    def __init__(self) -> None:
        self.calls: list[tuple[list[tuple[Any, Update]], bool, bool]] = []

    def __call__(
        self, updates: list[tuple[Any, Update]], urgent: bool = False, inline: bool = False
    ) -> None:
        self.calls.append((updates, urgent, inline))
        for sink, update in updates:
            sink.send(update)

    def first_responses(self) -> list[tuple[int, bool, bool]]:
        """(responses, urgent, inline) of each hand-over of new requests' first tokens."""
        return [(len(u), urgent, inline) for u, urgent, inline in self.calls if urgent]


def test_first_tokens_go_out_inline_only_when_the_step_serves_nobody_else(
    tiny_version: ModelVersion,
) -> None:
    """A request joining an empty batch gets its first token sent in the loop's thread before
    the step (``inline``); one joining running rows, a crowd joining at once, or a request whose
    first response is its last, through the publisher (``urgent`` only). Same text."""
    handovers = Handovers()
    scheduler = Scheduler(
        create_runner(tiny_version.path), context=64, eos_ids=(), publish=handovers
    )
    alone, joining = Collect(), Collect()
    scheduler.submit(request(alone, [5, 6], max_tokens=10))
    scheduler.run_once()
    assert handovers.first_responses() == [(1, True, True)]
    scheduler.run_once()
    scheduler.submit(request(joining, [7, 8], max_tokens=4))
    run(scheduler, [alone, joining])
    assert handovers.first_responses() == [(1, True, True), (1, True, False)]
    crowd = [Collect() for _ in range(INLINE_FIRST_RESPONSES + 1)]
    for i, sink in enumerate(crowd):
        scheduler.submit(request(sink, [9, 10 + i], max_tokens=3))
    run(scheduler, crowd)
    assert handovers.first_responses()[-1] == (len(crowd), True, False)
    # Two joining an empty batch, one ending at its first token: its final response (the
    # request's last) goes through the publisher with the other's first token.
    ends, goes_on = Collect(), Collect()
    scheduler.submit(request(ends, [11, 12], max_tokens=1))
    scheduler.submit(request(goes_on, [13, 14], max_tokens=3))
    run(scheduler, [ends, goes_on])
    assert handovers.first_responses()[-1] == (2, True, False) and ends.updates[-1].last
    assert not any(inline for _, urgent, inline in handovers.calls if not urgent)

    stopping = Collect()  # a loop told to stop sends nothing itself
    scheduler._stop.set()
    scheduler.submit(request(stopping, [5, 6], max_tokens=2))
    scheduler.run_once()
    assert handovers.first_responses()[-1] == (1, True, False)
    scheduler._stop.clear()
    run(scheduler, [stopping])
    on_gpu = Collect()  # TensorRT: the send would delay the GPU step's launch instead
    scheduler.runner.backend = "tensorrt"
    scheduler.submit(request(on_gpu, [5, 6], max_tokens=2))
    scheduler.run_once()
    assert handovers.first_responses()[-1] == (1, True, False)

    reference = Collect()  # the same request through the default publisher
    plain = Scheduler(create_runner(tiny_version.path), context=64, eos_ids=())
    plain.submit(request(reference, [5, 6], max_tokens=10))
    run(plain, [reference])
    assert alone.tokens == reference.tokens


def test_submit_waits_for_an_idle_loop_to_take_the_request_only(
    tiny_version: ModelVersion,
) -> None:
    """``submit(wait_s=...)`` returns once an idle loop has taken the request; with no loop
    waiting (here: not started) it returns at once, the request queued."""
    scheduler = Scheduler(create_runner(tiny_version.path), context=64, eos_ids=())
    queued = Collect()
    started = time.monotonic()
    scheduler.submit(request(queued, [5, 6], max_tokens=2), wait_s=30.0)
    assert time.monotonic() - started < 15.0  # not the 30 s wait
    assert scheduler.pending.qsize() == 1
    scheduler.run_once()  # the queued request runs; the loop is idle after it
    scheduler.start()
    try:
        deadline = time.monotonic() + 10.0
        while not (queued.done and scheduler._idle) and time.monotonic() < deadline:
            time.sleep(0.005)
        assert scheduler._idle, "the loop never went idle"
        taken = Collect()
        started = time.monotonic()
        scheduler.submit(request(taken, [7, 8], max_tokens=2), wait_s=30.0)
        assert time.monotonic() - started < 15.0  # returned when taken, not at the timeout
        assert scheduler.pending.empty()  # the loop took it before submit returned
        while not taken.done and time.monotonic() < deadline:
            time.sleep(0.005)
        assert taken.done and taken.updates[-1].finish_reason == "length"
    finally:
        scheduler.stop()


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


# -- decode-loop options (issue 12 item 1) ---------------------------------------------------


def _greedy(make: Callable[..., Scheduler], prompt: list[int], **kw: object) -> Collect:
    sink, scheduler = Collect(), make(**{k: kw.pop(k) for k in ("eos",) if k in kw})
    kw.setdefault("temperature", 0.0)
    scheduler.submit(request(sink, prompt, **kw))
    run(scheduler, [sink])
    return sink


def test_usage_counts_the_eos_token_that_ended_the_completion(
    make: Callable[..., Scheduler],
) -> None:
    free = _greedy(make, [5, 6, 7], max_tokens=10)
    eos = free.tokens[2]
    k = free.tokens.index(eos)
    stopped = _greedy(make, [5, 6, 7], max_tokens=10, eos=(eos,))
    final = stopped.updates[-1]
    assert stopped.tokens == free.tokens[:k] and final.finish_reason == "stop"
    assert final.completion_tokens == k + 1  # the tokens of text + the eos it generated
    # An eos sampled first: nothing to send, one token generated (usage is not 0).
    first = _greedy(make, [5, 6, 7], max_tokens=10, eos=(free.tokens[0],))
    assert first.tokens == [] and first.updates[-1].completion_tokens == 1


def test_n_choices_share_one_prefill_and_choice_zero_is_the_single_request(
    make: Callable[..., Scheduler], tiny_version: ModelVersion
) -> None:
    single = Collect()
    s1 = make()
    s1.submit(request(single, PROMPTS[1], seed=21, max_tokens=10))
    run(s1, [single])
    runner = create_runner(tiny_version.path)
    prefills: list[int] = []
    forward = runner.forward

    def counting(ids: np.ndarray[Any, Any], *rest: object) -> object:
        prefills.append(int(ids.shape[0]))
        return forward(ids, *rest)  # type: ignore[arg-type]

    runner.forward = counting  # type: ignore[method-assign,assignment]
    scheduler = Scheduler(runner, context=64, eos_ids=(), max_batch=8)
    sink = Collect()
    scheduler.submit(request(sink, PROMPTS[1], seed=21, max_tokens=10, n=3))
    run(scheduler, [sink])
    assert prefills == [1]  # one prompt row for three choices
    by_choice = {
        c: [t for u in sink.updates if u.choice == c for t in u.token_ids] for c in range(3)
    }
    assert by_choice[0] == single.tokens
    assert by_choice[1] != by_choice[0] or by_choice[2] != by_choice[0]
    finals = [u for u in sink.updates if u.finished]
    assert sorted(u.choice for u in finals) == [0, 1, 2]
    assert [u.last for u in sink.updates].count(True) == 1 and sink.updates[-1].last


def test_top_logprobs_are_the_models_most_likely_tokens(make: Callable[..., Scheduler]) -> None:
    sink = _greedy(make, [5, 6, 7], max_tokens=6, top_logprobs=4)
    tops = [t for u in sink.updates for t in u.top_ids]
    values = [v for u in sink.updates for v in u.top_logprobs]
    lps = [lp for u in sink.updates for lp in u.logprobs]
    assert len(tops) == len(sink.tokens) == 6 and all(len(t) == 4 for t in tops)
    for token, lp, ids, top in zip(sink.tokens, lps, tops, values, strict=True):
        assert ids[0] == token  # greedy: the chosen token is the most likely one
        assert top == sorted(top, reverse=True) and top[0] == pytest.approx(lp, abs=1e-5)


def test_logit_bias_steers_sampling_but_logprobs_stay_the_models(
    make: Callable[..., Scheduler],
) -> None:
    free = _greedy(make, [5, 6, 7], max_tokens=5)
    target = (free.tokens[0] + 1) % 512
    biased = _greedy(make, [5, 6, 7], max_tokens=5, logit_bias={target: 100.0})
    assert biased.tokens == [target] * 5
    assert all(lp < -0.01 for u in biased.updates for lp in u.logprobs)  # unbiased figures
    banned = _greedy(make, [5, 6, 7], max_tokens=5, logit_bias={free.tokens[0]: -100.0})
    assert banned.tokens[0] != free.tokens[0]


def test_min_tokens_and_ignore_eos(make: Callable[..., Scheduler]) -> None:
    free = _greedy(make, [5, 6, 7], max_tokens=8)
    eos = free.tokens[0]
    assert _greedy(make, [5, 6, 7], max_tokens=8, eos=(eos,)).tokens == []
    held = _greedy(make, [5, 6, 7], max_tokens=8, eos=(eos,), min_tokens=3)
    assert len(held.tokens) >= 3 and eos not in held.tokens[:3]
    ignored = _greedy(make, [5, 6, 7], max_tokens=8, eos=(eos,), ignore_eos=True)
    assert ignored.tokens == free.tokens and ignored.updates[-1].finish_reason == "length"


def test_with_ignore_eos_min_tokens_holds_back_the_stop_ids_only(
    make: Callable[..., Scheduler],
) -> None:
    """Under ignore_eos an eos ends nothing, so min_tokens leaves it to the sampler (as vLLM):
    a bias toward it counts from the first token. The stop ids are still held back."""
    eos = (_greedy(make, [5, 6, 7], max_tokens=1).tokens[0] + 1) % 512  # not the greedy one
    toward = {"logit_bias": {eos: 100.0}, "min_tokens": 3, "max_tokens": 6}
    ignored = _greedy(make, [5, 6, 7], eos=(eos,), ignore_eos=True, **toward)
    assert ignored.tokens == [eos] * 6 and ignored.updates[-1].finish_reason == "length"
    stop = _greedy(
        make, [5, 6, 7], eos=(eos,), ignore_eos=True, stop_ids=frozenset({eos}), **toward
    )
    assert len(stop.tokens) == 3 and eos not in stop.tokens
    assert stop.updates[-1].finish_reason == "stop"
    # Nothing to hold back: no mask at all (the device path reads the same ``suppress``).
    from genwire_model.runtime.scheduler import _Group, _Sequence

    alone = request(Collect(), [5], min_tokens=3, ignore_eos=True)
    assert _Sequence(_Group(alone), 0, 512, frozenset({eos})).suppress is None


def test_penalties_on_a_row_of_logits() -> None:
    from genwire_model.runtime.scheduler import _Group, _Sequence

    sink = Collect()
    req = request(
        sink,
        [1, 2],
        presence_penalty=0.5,
        frequency_penalty=0.25,
        repetition_penalty=2.0,
    )
    seq = _Sequence(_Group(req), 0, 6, frozenset())
    assert seq.counts is not None
    seq.counts[3] = 2  # token 3 generated twice
    row = np.array([1.0, 4.0, -4.0, 6.0, 2.0, -2.0], np.float32)
    seq.process(row)
    # 1, 2: in the prompt (repetition only: 4 / 2, -4 * 2); 3: 6 / 2 - 0.25 * 2 - 0.5.
    np.testing.assert_allclose(row, [1.0, 2.0, -8.0, 3.0 - 0.5 - 0.5, 2.0, -2.0])


def test_a_tiny_repetition_penalty_leaves_every_logit_finite_or_masked() -> None:
    """1e-37 is a valid factor (above 0): a positive logit divided by it overflowed to +inf,
    and the sampler failed the whole batch (IndexError ranking it)."""
    from genwire_model.runtime.sampling import FLOAT32_MAX
    from genwire_model.runtime.scheduler import _Group, _Sequence

    req = request(Collect(), [1, 2], repetition_penalty=1e-37)
    seq = _Sequence(_Group(req), 0, 4, frozenset())
    row = np.array([1.0, 50.0, -4.0, -np.inf], np.float32)
    seq.process(row)
    assert row[1] == FLOAT32_MAX and row[2] == np.float32(-4e-37) and row[3] == -np.inf


def test_frequency_penalty_reduces_repetition(make: Callable[..., Scheduler]) -> None:
    plain = _greedy(make, [5, 6, 7], max_tokens=30)
    penalised = _greedy(make, [5, 6, 7], max_tokens=30, frequency_penalty=2.0)
    assert len(set(penalised.tokens)) > len(set(plain.tokens))


class _Only:
    """A constraint allowing a fixed set of tokens and ending the choice after ``stop_after``."""

    def __init__(self, allowed: set[int], vocab: int, stop_after: int) -> None:
        self.mask = np.zeros(vocab, np.bool_)
        self.mask[list(allowed)] = True
        self.seen: list[int] = []
        self.stop_after = stop_after

    def allowed(self) -> np.ndarray[Any, Any]:
        return self.mask

    def advance(self, token: int) -> str | None:
        self.seen.append(token)
        return "stop" if len(self.seen) >= self.stop_after else None


def test_the_constraint_hook_masks_and_ends_the_choice(make: Callable[..., Scheduler]) -> None:
    sink, scheduler = Collect(), make()
    only = [_Only({40, 41, 42}, 512, 4), _Only({7}, 512, 2)]
    req = request(sink, [5, 6, 7], max_tokens=10, n=2, temperature=1.0)
    req.constraints = list(only)
    scheduler.submit(req)
    run(scheduler, [sink])
    by_choice = {c: [t for u in sink.updates if u.choice == c for t in u.token_ids] for c in (0, 1)}
    assert len(by_choice[0]) == 4 and set(by_choice[0]) <= {40, 41, 42}
    assert by_choice[1] == [7, 7]  # the token that ended it is part of the completion
    finals = {u.choice: u for u in sink.updates if u.finished}
    assert finals[0].finish_reason == finals[1].finish_reason == "stop"
    assert finals[0].completion_tokens == 4 and only[0].seen == by_choice[0]


def test_options_do_not_change_neighbours_text(make: Callable[..., Scheduler]) -> None:
    options: list[dict[str, object]] = [
        {"n": 2},
        {"presence_penalty": 1.0, "min_p": 0.05},
        {"top_logprobs": 3, "logit_bias": {9: 5.0}},
        {"repetition_penalty": 1.3, "top_k": 20},
        {},
    ]
    alone = []
    for i, (prompt, kw) in enumerate(zip(PROMPTS, options, strict=True)):
        sink, scheduler = Collect(), make()
        scheduler.submit(request(sink, prompt, seed=50 + i, max_tokens=9, **kw))
        run(scheduler, [sink])
        alone.append([(u.choice, u.token_ids) for u in sink.updates])
    scheduler = make()
    sinks = [Collect() for _ in PROMPTS]
    for i, (prompt, kw, sink) in enumerate(zip(PROMPTS, options, sinks, strict=True)):
        scheduler.submit(request(sink, prompt, seed=50 + i, max_tokens=9, **kw))
    run(scheduler, sinks)

    def text(pairs: list[tuple[int, list[int]]]) -> dict[int, list[int]]:
        out: dict[int, list[int]] = {}
        for choice, ids in pairs:
            out.setdefault(choice, []).extend(ids)
        return out

    assert [text([(u.choice, u.token_ids) for u in s.updates]) for s in sinks] == [
        text(a) for a in alone
    ]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"n": 0}, "n must be"),
        ({"n": 17}, "n must be"),
        ({"top_logprobs": 21}, "top_logprobs must be"),
        ({"presence_penalty": 2.5}, "presence_penalty must be"),
        ({"frequency_penalty": float("nan")}, "frequency_penalty must be"),
        ({"repetition_penalty": 0.0}, "repetition_penalty must be"),
        ({"min_p": 1.5}, "min_p must be"),
        ({"logit_bias": {600: 1.0}}, "logit_bias token id 600"),
        ({"logit_bias": {5: 500.0}}, r"logit_bias\[5\] must be"),
        ({"min_tokens": 20}, "min_tokens .* must not exceed"),
    ],
)
def test_out_of_range_options_are_named(change: dict[str, object], message: str) -> None:
    with pytest.raises(RequestError, match=message):
        validate(request(Collect(), [1, 2, 3], **change), vocab_size=512, context=64)  # type: ignore[arg-type]


def test_the_basic_cache_operations_give_the_same_text(make: Callable[..., Scheduler]) -> None:
    """A runner without ``gather`` (TensorRT's) re-forms the batch with take / trim / pad /
    concat (``runners.gather_basic``): rows leaving and joining, the same text."""
    texts = []
    for basic in (False, True):
        scheduler = make()
        if basic:
            scheduler._gather = None
        sinks = [Collect() for _ in PROMPTS]
        for i, (prompt, sink) in enumerate(zip(PROMPTS[:2], sinks[:2], strict=True)):
            scheduler.submit(request(sink, prompt, seed=i, max_tokens=4 + 6 * i))
        for _ in range(6):
            scheduler.run_once()
        for i, (prompt, sink) in enumerate(zip(PROMPTS[2:], sinks[2:], strict=True)):
            scheduler.submit(request(sink, prompt, seed=10 + i, max_tokens=5 + i))
        run(scheduler, sinks)
        assert scheduler.rebuilds > 0
        texts.append([s.tokens for s in sinks])
    assert texts[0] == texts[1]


def test_the_response_budget_keeps_every_token_logprob_and_alternative_in_place(
    tiny_version: ModelVersion, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Tokens the budget holds back go out later, once and in order, with their own
    log-probabilities and alternatives (several tokens per response), for ``n`` choices, a stop
    token after ``min_tokens``, a request that ends while tokens are held and one cancelled
    while they are: what the client gets is what it gets with a response per token."""
    import time

    clock = [100.0]
    monkeypatch.setattr(time, "monotonic", lambda: clock[0])
    runner = create_runner(tiny_version.path)

    def generate(budget: float, stop: frozenset[int], cancel: int | None = 7) -> list[Collect]:
        scheduler = Scheduler(runner, context=64, eos_ids=(), responses_per_s=budget)
        sinks = [Collect(), Collect(), Collect(cancel_after=cancel)]
        scheduler.submit(request(sinks[0], [5, 6], max_tokens=24, n=2, top_logprobs=3, seed=3))
        scheduler.submit(request(sinks[1], [8, 9], max_tokens=24, stop_ids=stop, min_tokens=4))
        scheduler.submit(request(sinks[2], [7], max_tokens=40, top_logprobs=2, seed=5))
        for _ in range(1000):
            if all(s.done for s in sinks):
                break
            scheduler.run_once()
            clock[0] += 0.003
        assert all(s.done and not s.errors for s in sinks)
        return sinks

    def choices(sink: Collect) -> dict[int, list[tuple[int, float, list[int], list[float]]]]:
        out: dict[int, list[tuple[int, float, list[int], list[float]]]] = {}
        for u in sink.updates:
            assert len(u.logprobs) == len(u.token_ids)
            if u.top_ids or u.top_logprobs:
                assert len(u.top_ids) == len(u.top_logprobs) == len(u.token_ids)
            tops = u.top_ids or [[]] * len(u.token_ids)
            top_lps = u.top_logprobs or [[]] * len(u.token_ids)
            out.setdefault(u.choice, []).extend(
                zip(u.token_ids, u.logprobs, tops, top_lps, strict=True)
            )
        return out

    first = generate(0.0, frozenset(), cancel=None)  # request 2 runs to its max_tokens
    stop = frozenset({first[1].tokens[6]})  # a token request 1 samples after min_tokens
    plain, budgeted = generate(0.0, stop), generate(50.0, stop)
    for a, b in zip(plain[:2], budgeted[:2], strict=True):
        assert choices(b) == choices(a)  # every token once, in order, with its own figures
        assert [u.finish_reason for u in b.updates if u.finished] == [
            u.finish_reason for u in a.updates if u.finished
        ]
        assert len(b.updates) < len(a.updates)  # the budget held tokens back
        for c in choices(b):  # each choice's first token alone, at once
            assert len(next(u for u in b.updates if u.choice == c).token_ids) == 1
    assert plain[1].updates[-1].finish_reason == "stop"  # ended by the stop token (not sent)
    assert len(plain[1].tokens) >= 4 and not stop & set(plain[1].tokens)
    # Cancelled while tokens were held: its final response carries them, nothing twice.
    cancelled, reference = budgeted[2], first[2]
    assert cancelled.updates[-1].finish_reason == "cancelled"
    assert 7 <= len(cancelled.tokens) < len(reference.tokens) == 40
    assert cancelled.tokens == reference.tokens[: len(cancelled.tokens)]
    assert cancelled.updates[-1].token_ids  # the held tokens rode on the final response
    assert choices(cancelled)[0] == choices(reference)[0][: len(cancelled.tokens)]


@pytest.mark.parametrize("budget", [-1.0, float("nan"), float("inf")])
def test_a_response_budget_out_of_range_is_refused(
    tiny_version: ModelVersion, budget: float
) -> None:
    runner = create_runner(tiny_version.path)
    with pytest.raises(ValueError, match="stream_responses_per_s"):
        Scheduler(runner, context=64, eos_ids=(), responses_per_s=budget)


def test_a_failed_step_answers_every_request_it_holds(make: Callable[..., Scheduler]) -> None:
    """A step that fails after new requests were prefilled (their first responses queued, not
    yet handed over): each request gets its last response or an error, none is left waiting —
    the running one, one that ended at its first token, one that was joining."""
    scheduler = make()
    running, ended, joining = Collect(), Collect(), Collect()
    scheduler.submit(request(running, [5, 6], max_tokens=20))
    scheduler.run_once()
    scheduler.run_once()
    scheduler.submit(request(ended, [7, 8], max_tokens=1, n=2))
    scheduler.submit(request(joining, [9], max_tokens=20, n=2))

    def broken(joining: object) -> None:
        raise RuntimeError("gather failed")

    scheduler._reform = broken  # type: ignore[method-assign]
    try:
        scheduler.run_once()
    except RuntimeError as exc:  # as the scheduling thread does
        scheduler._fail_all(f"generation failed: {exc}")
    assert running.errors == ["generation failed: gather failed"]
    assert ended.done and not ended.errors
    assert sorted(u.choice for u in ended.updates if u.finish_reason == "length") == [0, 1]
    assert joining.errors == ["generation failed: gather failed"]
    assert all(not u.finished for u in joining.updates)
    assert not scheduler.active and not scheduler.outgoing
