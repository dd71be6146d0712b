"""Admission of the decode loop: a request that can never fit the batch, a cancelled head of the
queue, a loop with nothing it can admit (no spinning), top_k above the vocabulary, and failure
messages that name the exception's type."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import numpy as np
import pytest
from genwire_model.repository import ModelVersion
from genwire_model.runtime import scheduler as scheduler_module
from genwire_model.runtime.runners import create_runner
from genwire_model.runtime.scheduler import Request, RequestError, Scheduler, Update, validate


class Collect:
    """A sink that keeps every update; ``cancel`` makes it cancelled."""

    def __init__(self, cancel: bool = False) -> None:
        self.updates: list[Update] = []
        self.errors: list[str] = []
        self.cancel = cancel
        self.finished = threading.Event()

    def send(self, update: Update) -> None:
        self.updates.append(update)
        if update.last:
            self.finished.set()

    def fail(self, message: str) -> None:
        self.errors.append(message)
        self.finished.set()

    def is_cancelled(self) -> bool:
        return self.cancel

    @property
    def done(self) -> bool:
        return bool(self.errors) or bool(self.updates and self.updates[-1].last)


@pytest.fixture(scope="module")
def make(tiny_version: ModelVersion) -> Callable[..., Scheduler]:
    runner = create_runner(tiny_version.path)

    def factory(max_batch: int = 8) -> Scheduler:
        return Scheduler(runner, context=64, eos_ids=(), max_batch=max_batch)

    return factory


def request(sink: Collect, prompt: list[int], **kw: object) -> Request:
    args: dict[str, object] = {
        "max_tokens": 5,
        "temperature": 0.7,
        "top_p": 1.0,
        "top_k": 0,
        "seed": 1,
        "stop_ids": frozenset(),
        "stream": True,
    }
    args.update(kw)
    return Request(np.asarray(prompt, dtype=np.int64), sink=sink, **args)  # type: ignore[arg-type]


def run_until(scheduler: Scheduler, sinks: list[Collect], most: int) -> int:
    """run_once until every sink is done; how many calls it took (at most ``most``)."""
    for calls in range(1, most + 1):
        scheduler.run_once()
        if all(s.done for s in sinks):
            return calls
    return most + 1


def test_n_over_max_batch_is_refused_naming_n_and_the_next_request_is_served(
    make: Callable[..., Scheduler],
) -> None:
    scheduler = make(max_batch=8)
    big, small = Collect(), Collect()
    with pytest.raises(RequestError, match=r"n must be at most 8 .*got 12"):
        scheduler.submit(request(big, [1, 2, 3], n=12))
    scheduler.submit(request(small, [4, 5]))
    assert run_until(scheduler, [small], most=20) <= 20
    assert small.updates[-1].last and small.updates[-1].finish_reason == "length"
    assert not scheduler.waiting and not scheduler.active


def test_a_request_over_max_batch_that_reached_the_queue_is_failed_not_left_at_its_head(
    make: Callable[..., Scheduler],
) -> None:
    """One queued without ``submit``'s check (another caller): failed at admission."""
    scheduler = make(max_batch=8)
    big, small = Collect(), Collect()
    scheduler.pending.put(request(big, [1, 2, 3], n=12))
    scheduler.submit(request(small, [4, 5]))
    assert run_until(scheduler, [big, small], most=20) <= 20
    assert len(big.errors) == 1 and "n must be at most 8" in big.errors[0] and not big.updates
    assert small.updates[-1].finish_reason == "length"


def test_a_cancelled_head_that_does_not_fit_leaves_the_queue(
    make: Callable[..., Scheduler],
) -> None:
    """The head (n=2) does not fit beside the running request; cancelled, it must leave at
    once and let the one behind it (n=1, which fits) in, instead of waiting for room."""
    scheduler = make(max_batch=2)
    running, head, behind = Collect(), Collect(), Collect()
    scheduler.submit(request(running, [1, 2], max_tokens=40))
    scheduler.run_once()
    scheduler.submit(request(head, [3, 4], n=2))
    scheduler.submit(request(behind, [5, 6], max_tokens=3))
    scheduler.run_once()
    assert not head.done and not behind.updates  # no room for the head: both wait
    head.cancel = True
    scheduler.run_once()
    assert head.done and head.updates[-1].finish_reason == "cancelled"
    assert behind.updates, "the request behind the cancelled head was not admitted"
    assert not running.done  # still running: the room came from the head leaving


def test_a_cancelled_request_behind_a_head_that_does_not_fit_is_answered_at_once(
    make: Callable[..., Scheduler],
) -> None:
    """The head (n=2) waits for room; a request behind it that is cancelled meanwhile is
    answered "cancelled" at the next cancellation check (as running rows are), not once the
    head is admitted."""
    scheduler = make(max_batch=2)
    running, head, behind = Collect(), Collect(), Collect()
    scheduler.submit(request(running, [1, 2], max_tokens=40))
    scheduler.run_once()
    scheduler.submit(request(head, [3, 4], n=2))
    scheduler.submit(request(behind, [5, 6], max_tokens=3))
    scheduler.run_once()
    assert not head.done and not behind.done  # no room for the head: both wait
    behind.cancel = True
    for _ in range(scheduler.cancel_check_interval):  # the queue is swept at the next check
        scheduler.run_once()
    assert behind.done and behind.updates[-1].finish_reason == "cancelled"
    assert not behind.errors and behind.updates[-1].token_ids == []
    assert not head.done and [r.sink for r in scheduler.waiting] == [head]  # still first
    assert not running.done


def test_the_loop_does_not_spin_while_nothing_can_be_admitted(
    make: Callable[..., Scheduler],
) -> None:
    """With the loop's thread: a request that cannot fit is answered, the next one served, and
    the loop then waits (a handful of iterations in 0.3 s, not hundreds of thousands)."""
    scheduler = make(max_batch=8)
    big, small = Collect(), Collect()
    scheduler.start()
    try:
        scheduler.pending.put(request(big, [1, 2, 3], n=12))
        scheduler.submit(request(small, [4, 5]))
        assert big.finished.wait(10.0) and small.finished.wait(10.0)
        assert big.errors and small.updates[-1].finish_reason == "length"
        assert scheduler.wait_idle(10.0)
        before = scheduler.times.iterations
        time.sleep(0.3)
        assert scheduler.times.iterations - before < 50
    finally:
        scheduler.stop()


def test_top_k_above_the_vocabulary_means_off() -> None:
    """preprocess bounds top_k by the API (1000), not by this version's vocabulary (512): the
    model reads any k >= vocab as off, as the sampler does, instead of refusing it."""
    r = request(Collect(), [1, 2, 3], top_k=600)
    validate(r, vocab_size=512, context=64)
    assert r.top_k == 0
    kept = request(Collect(), [1, 2, 3], top_k=512)
    validate(kept, vocab_size=512, context=64)
    assert kept.top_k == 512
    with pytest.raises(RequestError, match="top_k must be"):
        validate(request(Collect(), [1, 2, 3], top_k=-1), vocab_size=512, context=64)


def test_failure_messages_name_the_exceptions_type() -> None:
    """The inference service tells a passing failure (memory) from a lasting one by the message:
    a bare ``MemoryError()`` has no text of its own."""
    describe = scheduler_module.describe
    assert describe(MemoryError()) == "MemoryError"
    assert describe(MemoryError("boom gather")) == "MemoryError: boom gather"


def test_a_failed_prefill_names_the_exceptions_type(make: Callable[..., Scheduler]) -> None:
    scheduler = make()
    sink = Collect()

    def broken(*args: object) -> object:
        raise MemoryError("no room")

    scheduler._prefill_groups = broken  # type: ignore[assignment,method-assign]
    scheduler.submit(request(sink, [1, 2]))
    scheduler.run_once()
    assert sink.errors == ["prefill failed: MemoryError: no room"]
