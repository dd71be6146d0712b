"""Continuous batching: one thread steps every active sequence together, one token per step.

New requests are prefilled together (left-padded, in groups of bounded padded size) and then
join the running batch; finished or cancelled
ones leave it at once, freeing their slot. The batch's KV cache is left-padded: every row ends
at the same column (so the graph appends each step's keys and values at one index for all
rows) and the attention mask hides each row's padding. Leading columns that every row masks
are trimmed, so the cache is never wider than the longest live sequence.
"""

from __future__ import annotations

import dataclasses
import logging
import queue
import threading
import time
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from .runners import KV, Runner
from .sampling import log_softmax, sample_batch

log = logging.getLogger(__name__)

MAX_TEMPERATURE = 10.0

Array = npt.NDArray[Any]


class RequestError(ValueError):
    """A request the model refuses; the message names the problem."""


@dataclasses.dataclass
class Update:
    """What one response carries (the new tokens since the previous response)."""

    token_ids: list[int]
    logprobs: list[float]
    finished: bool
    finish_reason: str  # "" until final, then "stop" | "length" | "cancelled"
    prompt_tokens: int
    completion_tokens: int
    mean_logprob: float
    queue_ms: float
    compute_ms: float
    ttft_ms: float = 0.0
    """From the request's arrival to its first sampled token (0 before there is one)."""


class Sink(Protocol):
    """Where a request's responses go (Triton's response sender, or a test's list)."""

    def send(self, update: Update) -> None:
        """Deliver one response; the final one has ``finished`` set."""

    def fail(self, message: str) -> None:
        """Deliver a final error response."""

    def is_cancelled(self) -> bool:
        """Whether the client gave up on this request."""


class RowConstraint(Protocol):
    """Per-choice hook of constrained decoding (structured output, stop strings).

    Built per request (one per choice) outside the decode thread, by
    ``constraints.ConstraintCompiler.build``; the decode loop calls ``allowed`` before each
    sample of the row and ``advance`` with every token sampled for it (eos included).
    """

    def allowed(self) -> Array | None:
        """Tokens that may be sampled next: bool [vocab] (True = allowed), or None (any)."""

    def advance(self, token: int) -> str | None:
        """Record the sampled token; a finish reason (``"stop"``) ends the sequence now, the
        token included in the completion. None: go on."""


@dataclasses.dataclass
class Request:
    """One generation request, already decoded from Triton tensors."""

    prompt: Array  # int64 token ids
    max_tokens: int
    temperature: float
    top_p: float
    top_k: int
    seed: int
    stop_ids: frozenset[int]
    stream: bool
    sink: Sink
    n: int = 1
    """Choices, sharing one prefill; each has its own random stream (seed, choice)."""
    top_logprobs: int = 0
    """Alternatives (most likely first) returned with every token's log-probability (0-20)."""
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    repetition_penalty: float = 1.0
    min_p: float = 0.0
    logit_bias: dict[int, float] = dataclasses.field(default_factory=dict)
    min_tokens: int = 0
    ignore_eos: bool = False
    guided: str = ""
    """Structured output as received (the JSON of genwire.events.Guided), "" for none."""
    stop: tuple[str, ...] = ()
    """Stop strings (matched while decoding by the constraint hook)."""
    constraints: list[RowConstraint] | None = None
    """One per choice (``n``), from ``ConstraintCompiler.build``; None: unconstrained."""
    received: float = dataclasses.field(default_factory=time.monotonic)


def validate(request: Request, vocab_size: int, context: int) -> None:
    """Raise RequestError naming the first parameter out of range."""
    n = len(request.prompt)
    if n == 0:
        raise RequestError("input_ids is empty: the prompt needs at least one token")
    if n >= context:
        raise RequestError(
            f"prompt of {n} tokens is longer than the context window allows "
            f"(context {context} tokens, room needed for at least one new token)"
        )
    low, high = int(request.prompt.min()), int(request.prompt.max())
    if low < 0 or high >= vocab_size:
        raise RequestError(f"input_ids out of range [0, {vocab_size}): min {low}, max {high}")
    if request.max_tokens < 1:
        raise RequestError(f"max_tokens must be >= 1, got {request.max_tokens}")
    if not np.isfinite(request.temperature) or not 0.0 <= request.temperature <= MAX_TEMPERATURE:
        raise RequestError(
            f"temperature must be in [0, {MAX_TEMPERATURE}], got {request.temperature}"
        )
    if not np.isfinite(request.top_p) or not 0.0 < request.top_p <= 1.0:
        raise RequestError(f"top_p must be in (0, 1], got {request.top_p}")
    if not 0 <= request.top_k <= vocab_size:
        raise RequestError(f"top_k must be in [0, {vocab_size}] (0 = off), got {request.top_k}")
    bad = [t for t in request.stop_ids if not 0 <= t < vocab_size]
    if bad:
        raise RequestError(f"stop_token_ids out of range [0, {vocab_size}): {sorted(bad)[:5]}")


class _Sequence:
    """A request being generated, and where it stands."""

    __slots__ = (
        "admitted",
        "finish_reason",
        "first_token_at",
        "length",
        "logprobs",
        "next_token",
        "request",
        "rng",
        "sent",
        "tokens",
    )

    def __init__(self, request: Request) -> None:
        self.request = request
        self.rng = np.random.default_rng(request.seed if request.seed >= 0 else None)
        self.tokens: list[int] = []
        self.logprobs: list[float] = []
        self.sent = 0
        self.length = 0  # tokens whose keys and values are in the cache
        self.next_token = -1  # sampled, not yet fed to the model
        self.admitted = time.monotonic()
        self.first_token_at: float | None = None
        self.finish_reason = ""


class Scheduler:
    """Owns the runner, the batch and its cache; a daemon thread drives it."""

    def __init__(
        self,
        runner: Runner,
        context: int,
        eos_ids: tuple[int, ...],
        max_batch: int = 32,
        stream_interval: int = 1,
        cancel_check_interval: int = 4,
        chunk_batch: int = 16,
        prefill_tokens: int = 1024,
    ) -> None:
        self.runner = runner
        self.context = context
        self.eos_ids = frozenset(eos_ids)
        self.max_batch = max_batch
        self.stream_interval = max(1, stream_interval)
        self.chunk_batch = max(1, chunk_batch)
        self.prefill_tokens = max(1, prefill_tokens)
        self.cancel_check_interval = max(1, cancel_check_interval)
        self.pending: queue.Queue[Request] = queue.Queue()
        self.active: list[_Sequence] = []
        self.kv: KV | None = None
        self.mask = np.zeros((0, 0), dtype=np.int64)
        self.steps = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- lifecycle -------------------------------------------------------------------------
    def start(self) -> None:
        """Start the scheduling thread."""
        self._thread = threading.Thread(target=self._loop, name="genwire-scheduler", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop the thread; requests still running or waiting end as cancelled."""
        self._stop.set()
        if self._thread is not None:
            # No timeout: touching ``active`` while the thread still steps would race it, and
            # a request finished after the outbox closed would never get its final flag.
            self._thread.join()
        for seq in self.active:
            self._finish(seq, "cancelled")
        self.active = []
        while True:
            try:
                request = self.pending.get_nowait()
            except queue.Empty:
                break
            self._finish(_Sequence(request), "cancelled")

    def submit(self, request: Request) -> None:
        """Queue a validated request (thread-safe)."""
        self.pending.put(request)

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                first = None
                if not self.active:
                    try:
                        first = self.pending.get(timeout=0.05)
                    except queue.Empty:
                        continue
                self.run_once(first)
            except Exception as exc:  # keep serving: fail the batch, not the model
                log.exception("generation step failed")
                self._fail_all(f"generation failed: {exc}")

    # -- one iteration ---------------------------------------------------------------------
    def run_once(self, first: Request | None = None) -> None:
        """Admit waiting requests into free slots, then decode one token for the batch."""
        waiting = [first] if first is not None else []
        while len(self.active) + len(waiting) < self.max_batch:
            try:
                waiting.append(self.pending.get_nowait())
            except queue.Empty:
                break
        if waiting:
            self._admit(waiting)
        if self.active:
            self._step()

    def _admit(self, requests: list[Request]) -> None:
        """Prefill new requests, several per pass when their padded size stays small."""
        seqs = []
        for request in requests:
            seq = _Sequence(request)
            if request.sink.is_cancelled():
                self._finish(seq, "cancelled")
            else:
                seqs.append(seq)
        seqs.sort(key=lambda s: len(s.request.prompt))
        group: list[_Sequence] = []
        for seq in seqs:
            # Sorted by length, so the newest is the longest: padded size = count x its length.
            if group and (len(group) + 1) * len(seq.request.prompt) > self.prefill_tokens:
                self._prefill(group)
                group = []
            group.append(seq)
        if group:
            self._prefill(group)

    def _prefill(self, group: list[_Sequence]) -> None:
        try:
            self._prefill_group(group)
        except Exception as exc:  # this group fails; the running batch goes on
            log.exception("prefill failed")
            for seq in group:
                seq.request.sink.fail(f"prefill failed: {exc}")

    def _prefill_group(self, group: list[_Sequence]) -> None:
        lengths = [len(s.request.prompt) for s in group]
        rows, width, pad = len(group), max(lengths), self.runner.min_past
        ids = np.zeros((rows, width), np.int64)
        positions = np.zeros((rows, width), np.int64)
        mask = np.zeros((rows, pad + width), np.int64)
        for row, (seq, n) in enumerate(zip(group, lengths, strict=True)):
            # Left padding: every prompt ends at the last column, where the logits are read.
            ids[row, width - n :] = seq.request.prompt
            positions[row, width - n :] = np.arange(n)
            mask[row, pad + width - n :] = 1
        logits, kv = self.runner.forward(ids, mask, positions, self.runner.empty(rows, pad))
        logprobs = log_softmax(logits)
        tokens = self._sample(group, logprobs)
        keep = []
        for row, seq in enumerate(group):
            seq.length = lengths[row]
            token = int(tokens[row])
            if not self._accept(seq, token, float(logprobs[row, token])):
                keep.append(row)
        if not keep:
            return
        if len(keep) < rows:
            kv, mask = self.runner.take(kv, keep), mask[keep]
        joined = [group[row] for row in keep]
        self._join(joined, kv, mask)
        for seq in joined:
            self._emit(seq)

    def _join(self, seqs: list[_Sequence], kv: KV, mask: Array) -> None:
        if self.kv is None or not self.active:
            self.kv, self.mask, self.active = kv, mask, list(seqs)
            return
        width, new_width = self.mask.shape[1], mask.shape[1]
        if new_width < width:
            kv = self.runner.pad_left(kv, width - new_width)
            mask = np.pad(mask, ((0, 0), (width - new_width, 0)))
        elif new_width > width:
            self.kv = self.runner.pad_left(self.kv, new_width - width)
            self.mask = np.pad(self.mask, ((0, 0), (new_width - width, 0)))
        self.kv = self.runner.concat([self.kv, kv])
        self.mask = np.concatenate([self.mask, mask], axis=0)
        self.active.extend(seqs)

    def _step(self) -> None:
        assert self.kv is not None
        self.steps += 1
        if self.steps % self.cancel_check_interval == 0:
            self._drop(
                [i for i, s in enumerate(self.active) if s.request.sink.is_cancelled()], "cancelled"
            )
            if not self.active:
                return
        batch = len(self.active)
        ids = np.fromiter((s.next_token for s in self.active), np.int64, batch)[:, None]
        positions = np.fromiter((s.length for s in self.active), np.int64, batch)[:, None]
        mask = np.concatenate([self.mask, np.ones((batch, 1), np.int64)], axis=1)
        logits, self.kv = self.runner.forward(ids, mask, positions, self.kv)
        self.mask = mask
        logprobs = log_softmax(logits)
        tokens = self._sample(self.active, logprobs)
        done: list[int] = []
        for row, seq in enumerate(self.active):
            seq.length += 1
            token = int(tokens[row])
            if self._accept(seq, token, float(logprobs[row, token])):
                done.append(row)
            else:
                self._emit(seq)
        self._drop(done, None)

    @staticmethod
    def _sample(seqs: list[_Sequence], logprobs: Array) -> Array:
        n = len(seqs)
        return sample_batch(
            logprobs,
            np.fromiter((s.request.temperature for s in seqs), np.float64, n),
            np.fromiter((s.request.top_p for s in seqs), np.float64, n),
            np.fromiter((s.request.top_k for s in seqs), np.int64, n),
            [s.rng for s in seqs],
        )

    def _accept(self, seq: _Sequence, token: int, logprob: float) -> bool:
        """Record a sampled token; True (and the final response sent) if the sequence ended."""
        r = seq.request
        if seq.first_token_at is None:
            seq.first_token_at = time.monotonic()
        if token in self.eos_ids or token in r.stop_ids:
            self._finish(seq, "stop")  # the stop token itself is not part of the completion
            return True
        seq.tokens.append(token)
        seq.logprobs.append(logprob)
        seq.next_token = token
        if len(seq.tokens) >= r.max_tokens or seq.length >= self.context:
            self._finish(seq, "length")
            return True
        return False

    def _drop(self, rows: list[int], reason: str | None) -> None:
        """Remove rows from the batch (finishing them with ``reason`` if given)."""
        if not rows:
            return
        gone = set(rows)
        if reason is not None:
            for row in rows:
                self._finish(self.active[row], reason)
        keep = [i for i in range(len(self.active)) if i not in gone]
        self.active = [self.active[i] for i in keep]
        if not keep:
            self.kv, self.mask = None, np.zeros((0, 0), dtype=np.int64)
            return
        assert self.kv is not None
        self.kv = self.runner.take(self.kv, keep)
        self.mask = self.mask[keep]
        used = self.mask.any(axis=0)
        first = int(np.argmax(used))
        if first > 0:
            self.kv = self.runner.trim_left(self.kv, first)
            self.mask = np.ascontiguousarray(self.mask[:, first:])

    def _fail_all(self, message: str) -> None:
        for seq in self.active:
            try:
                seq.request.sink.fail(message)
            except Exception:
                log.exception("could not deliver an error response")
        self.active, self.kv = [], None
        self.mask = np.zeros((0, 0), dtype=np.int64)

    # -- responses -------------------------------------------------------------------------
    def _update(self, seq: _Sequence, final: bool) -> Update:
        now = time.monotonic()
        new = seq.tokens[seq.sent :]
        lps = seq.logprobs[seq.sent :]
        seq.sent = len(seq.tokens)
        mean = float(np.mean(seq.logprobs)) if seq.logprobs else 0.0
        return Update(
            token_ids=new,
            logprobs=lps,
            finished=final,
            finish_reason=seq.finish_reason if final else "",
            prompt_tokens=len(seq.request.prompt),
            completion_tokens=len(seq.tokens),
            mean_logprob=mean,
            queue_ms=(seq.admitted - seq.request.received) * 1e3,
            compute_ms=(now - seq.admitted) * 1e3,
            ttft_ms=(
                (seq.first_token_at - seq.request.received) * 1e3
                if seq.first_token_at is not None
                else 0.0
            ),
        )

    def _emit(self, seq: _Sequence) -> None:
        if not seq.request.stream:
            return
        # The first token goes out at once (time to first token); later ones in chunks that
        # grow with the batch, since each response costs the backend about as much as a
        # sequence's share of a decode step.
        interval = max(self.stream_interval, len(self.active) // self.chunk_batch)
        if seq.sent and len(seq.tokens) - seq.sent < interval:
            return
        try:
            seq.request.sink.send(self._update(seq, final=False))
        except Exception:
            # The client is gone (stream closed): the next cancel check frees the slot.
            log.debug("streaming response not delivered", exc_info=True)

    def _finish(self, seq: _Sequence, reason: str) -> None:
        seq.finish_reason = reason
        try:
            seq.request.sink.send(self._update(seq, final=True))
        except Exception:
            log.debug("final response not delivered", exc_info=True)
