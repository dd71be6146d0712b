"""Continuous batching: one thread steps every active sequence together, one token per step.

Each iteration (``run_once``):

1. waiting requests are admitted into free slots (a request with ``n`` choices takes ``n``)
   and prefilled together, left-padded, in groups of bounded padded size; a request's prompt is
   prefilled once whatever its ``n``, and every choice samples its own first token;
2. the batch is re-formed once: rows that ended (or were cancelled) leave and the new rows
   join, every row right-aligned in one cache ``runner.gather`` builds (one copy, into the
   runner's preallocated arena when it has one), no wider than the longest live row;
3. one decode step feeds every row's last token together. Rows end at the same column, so the
   graph appends the new keys and values at one index for all of them; the attention mask
   (rebuilt from the rows' lengths) hides each row's padding; ``position_ids`` carry each
   row's true position;
4. the logits are turned into tokens for the whole batch at once: log-probabilities (and the
   ``top_logprobs`` alternatives) of the model's own distribution, then per-row options
   (logit_bias, min_tokens / ignore_eos, penalties, the constraint hook's mask), then
   ``sampling.Sampler`` (temperature, min_p, top-k, top-p). When the runner is TensorRT the
   logits stay on the GPU (``host_logits = False``) and ``sampling_torch`` does all of this
   there with the same rule; only the chosen ids and log-probabilities come back;
5. the responses due are handed over together (``publish``), once per step. New requests'
   first responses go before the step (``urgent``), and in this thread (``inline``) when
   the step would serve nobody else and they are at most ``INLINE_FIRST_RESPONSES``, none a
   request's last (``_inline_ok``): nobody else waits on the send, and it does not share the
   cores with the step (Triton on CPU: about a millisecond sooner at concurrency 1).

Usage: ``completion_tokens`` counts every token the model generated for a choice, including
an end-of-sequence or stop token it sampled (which ends the choice and is not sent, having no
text), as vLLM counts.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import queue
import threading
import time
from collections.abc import Callable
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from .runners import KV, Runner, gather_basic
from .sampling import FLOAT32_MAX, Sampler, is_sampled, logsumexp, top_logprobs

_fill_masks: Any
try:  # the constraint hook's batched masks (llguidance); optional
    from .constraints import fill_masks as _fill_masks
except ImportError:  # pragma: no cover - constraints.py ships with the runtime
    _fill_masks = None

log = logging.getLogger(__name__)

MAX_TEMPERATURE = 10.0
MAX_N = 16
MAX_TOP_LOGPROBS = 20
MAX_PENALTY = 2.0  # presence / frequency: [-2, 2] as OpenAI
MAX_REPETITION_PENALTY = 10.0
MAX_LOGIT_BIAS = 100.0

Array = npt.NDArray[Any]

STREAM_RESPONSES_PER_S = 200.0
"""The served default of config parameter ``stream_responses_per_s`` (the response budget,
``Scheduler(responses_per_s=...)``): a version's config.pbtxt may set another; 0 = off."""

INLINE_FIRST_RESPONSES = 2
"""New requests' first responses sent in the loop's own thread before the step, when the step
would serve only them: at most this many (each is a send, an IPC round trip under Triton,
that the step then waits for; more go through ``publish`` alongside the step)."""

REQUEST_OPTIONS = (
    "n",
    "logprobs",
    "top_logprobs",
    "presence_penalty",
    "frequency_penalty",
    "repetition_penalty",
    "min_p",
    "logit_bias",
    "min_tokens",
    "ignore_eos",
    "guided",
)
"""The request options (``genwire.request.MODEL_OPTIONS`` names) this decode loop honours: a
version's ``manifest.json`` lists them as ``request_options`` (``guided`` when the version
can compile constraints), and preprocess refuses the others by name."""


class RequestError(ValueError):
    """A request the model refuses; the message names the problem."""


@dataclasses.dataclass
class Update:
    """What one response carries (the new tokens of one choice since its previous response)."""

    token_ids: list[int]
    logprobs: list[float]
    finished: bool
    """This choice ended (its last response)."""
    finish_reason: str  # "" until final, then "stop" | "length" | "cancelled"
    prompt_tokens: int
    completion_tokens: int
    mean_logprob: float
    queue_ms: float
    compute_ms: float
    ttft_ms: float = 0.0
    """From the request's arrival to its first sampled token (0 before there is one)."""
    choice: int = 0
    top_ids: list[list[int]] = dataclasses.field(default_factory=list)
    """Per token of ``token_ids`` (when ``top_logprobs`` > 0): the most likely alternatives."""
    top_logprobs: list[list[float]] = dataclasses.field(default_factory=list)
    last: bool = False
    """The request's last response: every choice has ended (Triton's final flag)."""


class Sink(Protocol):
    """Where a request's responses go (Triton's response sender, or a test's list)."""

    def send(self, update: Update) -> None:
        """Deliver one response; the request's last one has ``last`` set."""

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
    min_gap_s: float = 0.0
    """The least time between two streamed responses of a choice that the client asked for
    (request parameter ``genwire_min_response_gap_ms``); the response budget's spacing applies
    when it is longer."""
    hold_first: bool = False
    """Hold the first streamed response too until ``min_gap_s`` has passed since ``received``
    (request parameter ``genwire_hold_first_response``): a request that ends sooner gets one
    response, its final; for clients that stream only to keep tokens if a deadline cancels."""
    received: float = dataclasses.field(default_factory=time.monotonic)


def _check_range(name: str, value: float, low: float, high: float) -> None:
    if not np.isfinite(value) or not low <= value <= high:
        raise RequestError(f"{name} must be in [{low:g}, {high:g}], got {value}")


def validate(request: Request, vocab_size: int, context: int) -> None:
    """Raise RequestError naming the first parameter out of range; a ``top_k`` above the
    vocabulary is set to 0 (off: what it means). ``n`` is checked against the batch by
    ``Scheduler.submit`` (the scheduler knows its ``max_batch``)."""
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
    if request.top_k < 0:
        raise RequestError(f"top_k must be >= 0 (0 = off), got {request.top_k}")
    if request.top_k > vocab_size:
        # More than the vocabulary keeps every token, as the sampler reads any k >= vocab:
        # off. Refusing it failed requests that preprocess passed (its bound is the API's,
        # not this version's vocabulary) as model errors.
        request.top_k = 0
    bad = [t for t in request.stop_ids if not 0 <= t < vocab_size]
    if bad:
        raise RequestError(f"stop_token_ids out of range [0, {vocab_size}): {sorted(bad)[:5]}")
    if not 1 <= request.n <= MAX_N:
        raise RequestError(f"n must be in [1, {MAX_N}], got {request.n}")
    if not 0 <= request.top_logprobs <= MAX_TOP_LOGPROBS:
        raise RequestError(
            f"top_logprobs must be in [0, {MAX_TOP_LOGPROBS}], got {request.top_logprobs}"
        )
    _check_range("presence_penalty", request.presence_penalty, -MAX_PENALTY, MAX_PENALTY)
    _check_range("frequency_penalty", request.frequency_penalty, -MAX_PENALTY, MAX_PENALTY)
    if not np.isfinite(request.repetition_penalty) or not (
        0.0 < request.repetition_penalty <= MAX_REPETITION_PENALTY
    ):
        raise RequestError(
            f"repetition_penalty must be in (0, {MAX_REPETITION_PENALTY:g}], "
            f"got {request.repetition_penalty}"
        )
    _check_range("min_p", request.min_p, 0.0, 1.0)
    for token, bias in request.logit_bias.items():
        if not 0 <= token < vocab_size:
            raise RequestError(f"logit_bias token id {token} out of range [0, {vocab_size})")
        _check_range(f"logit_bias[{token}]", bias, -MAX_LOGIT_BIAS, MAX_LOGIT_BIAS)
    if request.min_tokens < 0:
        raise RequestError(f"min_tokens must be >= 0, got {request.min_tokens}")
    if request.min_tokens > request.max_tokens:
        raise RequestError(
            f"min_tokens ({request.min_tokens}) must not exceed max_tokens ({request.max_tokens})"
        )
    if request.constraints is not None and len(request.constraints) != request.n:
        raise RequestError(
            f"{len(request.constraints)} constraints for {request.n} choices (one per choice)"
        )


def describe(exc: BaseException) -> str:
    """An exception as a failure message names it: its type, then its text. The type tells a
    caller a passing failure (``MemoryError``, whose text may be empty) from a lasting one."""
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _rng(seed: int, choice: int) -> np.random.Generator:
    """Choice 0 draws what a single-choice request with this seed draws."""
    if seed < 0:
        return np.random.default_rng()
    return np.random.default_rng(seed if choice == 0 else [seed, choice])


@dataclasses.dataclass
class LoopTimes:
    """Where the loop thread's time went since ``Scheduler.times`` was last replaced: seconds
    by part (``perf_counter``, a few calls per iteration), and per decode step the rows fed,
    the rows sampled and the cache's width. ``genwire model bench --in-process`` prints them
    per level, for the static batch and the closed loop side by side (docs/model.md,
    *Round 16*). On TensorRT a pass returns once launched: the GPU's time shows where its
    results are first read (sampling, or admit for a prefill), not in ``pass_s``."""

    iterations: int = 0
    total_s: float = 0.0  # run_once, whole
    admit_s: float = 0.0  # new requests admitted: their prefill passes and first tokens
    prefill_pass_s: float = 0.0  # of admit_s: the runner's prefill passes
    reform_s: float = 0.0  # rows leaving and joining (in place or one copy)
    steps: int = 0
    pass_s: float = 0.0  # decode passes (the runner's step)
    sampling_s: float = 0.0  # decode steps' tokens: options, sampler, bookkeeping, emits
    rows: int = 0  # rows fed, summed over steps (ended rows still in the batch included)
    live_rows: int = 0  # rows sampled, summed over steps
    columns: int = 0  # the cache's width before the step, summed over steps

    def per_step(self) -> dict[str, float]:
        """Milliseconds per decode step by part (``other``: the iteration's remainder: taking
        requests, cancellation checks, the step's inputs, handing responses over), and the
        mean rows fed, rows sampled and cache width per step."""
        steps = max(self.steps, 1)
        parts = {
            "step_ms": self.total_s,
            "pass_ms": self.pass_s,
            "sampling_ms": self.sampling_s,
            "admit_ms": self.admit_s,
            "prefill_pass_ms": self.prefill_pass_s,
            "reform_ms": self.reform_s,
            "other_ms": self.total_s - self.pass_s - self.sampling_s - self.admit_s - self.reform_s,
        }
        out = {name: round(value * 1e3 / steps, 3) for name, value in parts.items()}
        out["rows"] = round(self.rows / steps, 2)
        out["live_rows"] = round(self.live_rows / steps, 2)
        out["width"] = round(self.columns / steps, 1)
        return out


class _Group:
    """What the choices of one request share: its last response waits for all of them."""

    __slots__ = ("admitted", "failed", "open", "request")

    def __init__(self, request: Request) -> None:
        self.request = request
        self.open = request.n
        self.admitted = time.monotonic()
        self.failed = False


class _Sequence:
    """One choice of a request being generated, and where it stands."""

    __slots__ = (
        "bias_ids",
        "bias_values",
        "choice",
        "constraint",
        "counts",
        "finish_reason",
        "first_token_at",
        "generated",
        "group",
        "last_sent",
        "length",
        "logprobs",
        "next_token",
        "processed",
        "prompt_seen",
        "request",
        "rng",
        "sent",
        "suppress",
        "tokens",
        "top_ids",
        "top_lps",
    )

    def __init__(self, group: _Group, choice: int, vocab: int, eos: frozenset[int]) -> None:
        request = group.request
        self.group = group
        self.request = request
        self.choice = choice
        self.rng = _rng(request.seed, choice)
        self.tokens: list[int] = []
        self.logprobs: list[float] = []
        self.top_ids: list[list[int]] = []
        self.top_lps: list[list[float]] = []
        self.generated = 0  # every sampled token, an ending eos/stop token included
        self.sent = 0
        self.last_sent = 0.0
        self.length = 0  # tokens whose keys and values are in the cache
        self.next_token = -1  # sampled, not yet fed to the model
        self.first_token_at: float | None = None
        self.finish_reason = ""
        self.constraint = request.constraints[choice] if request.constraints else None
        if request.min_tokens and hasattr(self.constraint, "min_tokens"):
            # No stop string ends the choice before min_tokens tokens (as vLLM).
            setattr(self.constraint, "min_tokens", request.min_tokens)  # noqa: B010
        self.bias_ids: Array | None = None
        self.bias_values: Array | None = None
        if request.logit_bias:
            self.bias_ids = np.fromiter(request.logit_bias, np.int64)
            self.bias_values = np.fromiter(request.logit_bias.values(), np.float32)
        penalised = (
            request.presence_penalty != 0.0
            or request.frequency_penalty != 0.0
            or request.repetition_penalty != 1.0
        )
        self.counts: Array | None = np.zeros(vocab, np.int32) if penalised else None
        self.prompt_seen: Array | None = None
        if request.repetition_penalty != 1.0:
            self.prompt_seen = np.zeros(vocab, np.bool_)
            self.prompt_seen[request.prompt] = True
        # Tokens that may not be sampled before min_tokens: the stop ids, and eos unless
        # ignore_eos (then eos ends nothing, and a bias toward it must count: as vLLM).
        self.suppress: Array | None = None
        blocked = (frozenset() if request.ignore_eos else eos) | request.stop_ids
        if request.min_tokens > 0 and blocked:
            self.suppress = np.fromiter(sorted(blocked), np.int64)
        self.processed = (
            self.bias_ids is not None or self.counts is not None or self.suppress is not None
        )

    def process(self, row: Array) -> None:
        """The request's options on its row of logits (in place): bias, min_tokens, penalties."""
        request = self.request
        if self.bias_ids is not None and self.bias_values is not None:
            row[self.bias_ids] += self.bias_values
        if self.suppress is not None and self.generated < request.min_tokens:
            row[self.suppress] = -np.inf
        if self.counts is not None:
            if request.repetition_penalty != 1.0:
                seen = self.counts > 0
                if self.prompt_seen is not None:
                    seen |= self.prompt_seen
                factor = np.float32(request.repetition_penalty)
                # A tiny factor (1e-37 is a valid request) overflows a positive logit to +inf,
                # which no sampler can rank: the largest finite float32 instead.
                with np.errstate(over="ignore"):  # overflow is the case handled here
                    raised = np.minimum(row[seen] / factor, FLOAT32_MAX)
                row[seen] = np.where(row[seen] > 0, raised, row[seen] * factor)
            if request.frequency_penalty != 0.0:
                row -= np.float32(request.frequency_penalty) * self.counts
            if request.presence_penalty != 0.0:
                row -= np.float32(request.presence_penalty) * (self.counts > 0)


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
        publish: Callable[..., None] | None = None,
        responses_per_s: float = 0.0,
    ) -> None:
        self.runner = runner
        self.context = context
        self.eos_ids = frozenset(eos_ids)
        self.max_batch = max_batch
        self.stream_interval = max(1, stream_interval)
        self.chunk_batch = max(1, chunk_batch)
        # The response budget: a streamed choice's next response waits ``live rows / budget``
        # seconds after its previous one (0: no time rule), so the model sends at most about
        # that many responses per second whatever the batch (first tokens and final responses
        # aside). Each response costs the Triton path about half a core-millisecond (the
        # stub's send, the server, the client), which the decode step would otherwise lose.
        if not math.isfinite(responses_per_s) or responses_per_s < 0:
            raise ValueError(
                "stream_responses_per_s must be a finite number >= 0 (0 = off), "
                f"got {responses_per_s}"
            )
        self.response_gap_s = 1.0 / responses_per_s if responses_per_s > 0 else 0.0
        self.prefill_tokens = max(1, prefill_tokens)
        self.cancel_check_interval = max(1, cancel_check_interval)
        self.publish = publish or _send_each
        self.pending: queue.Queue[Request] = queue.Queue()
        self.waiting: list[Request] = []  # taken from the queue, no room for all choices yet
        self.active: list[_Sequence] = []
        self.leaving: set[int] = set()  # rows of ``active`` that ended: gone at the next re-form
        self.kv: KV | None = None
        self.width = 0  # cache columns
        self.lengths = np.zeros(0, np.int64)
        self.width_slack = 16
        self._dead = 0
        self.reforms_in_place = 0
        self.rebuilds = 0
        self.steps = 0
        self.times = LoopTimes()  # replaced by whoever reads it (the in-process benchmark)
        self._times = self.times  # the one the current iteration counts in
        self.sampler = Sampler(runner.vocab_size)
        log.info(
            "sampler: a row's head ranked by %s (the faster here)",
            "selection" if self.sampler.partial else "a full sort",
        )
        self.outgoing: list[tuple[Sink, Update]] = []
        # Optional runner operations (ONNX Runtime has them; others use the basic ones).
        self._step_pass = getattr(runner, "step", None) or runner.forward
        self._gather = getattr(runner, "gather", None)
        # TensorRT keeps the logits on the GPU and the loop samples them there
        # (sampling_torch); after a fallback to ONNX Runtime they are numpy again.
        if getattr(runner, "backend", "") == "tensorrt" and hasattr(runner, "host_logits"):
            runner.host_logits = False
        reserve = getattr(runner, "reserve", None)
        if reserve is not None:
            reserve(max_batch, context + 1)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        # ``submit(wait_s=...)``: the loop waits on an empty ``pending`` (``_idle``); requests
        # put on ``pending`` and taken from it, counted under one lock (FIFO: the loop took a
        # request once it has taken as many as had been put up to it).
        self._idle = False
        self._handoff = threading.Condition(threading.Lock())
        self._put = 0
        self._took = 0

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
        for row, seq in enumerate(self.active):
            if row not in self.leaving:
                self._finish(seq, "cancelled")
        self.active, self.leaving = [], set()
        waiting = list(self.waiting)
        self.waiting = []
        while True:
            try:
                waiting.append(self._take(block=False))
            except queue.Empty:
                break
        for request in waiting:
            group = _Group(request)
            for choice in range(request.n):
                self._finish(self._sequence(group, choice), "cancelled")
        self._flush()

    def submit(self, request: Request, wait_s: float = 0.0) -> None:
        """Queue a validated request (thread-safe).

        ``wait_s``: when the loop is idle, return only once it has taken the request (at most
        that long). Triton's Python stub holds the GIL after ``execute`` returns, for a round
        trip to the server: waiting here lets the loop start the prefill first, so the round
        trip overlaps it instead of delaying it (about 0.3 ms at concurrency 1). A busy loop
        takes the request at its next iteration: no wait then.

        Raises RequestError for a request with more choices than the batch holds: its ``n``
        rows never fit, so it would wait at the head of the queue for ever (and hold every
        request behind it).
        """
        self.check_fits(request)
        with self._handoff:
            wait = wait_s > 0 and self._idle
            self.pending.put(request)
            self._put += 1
            mine = self._put
        if wait:
            with self._handoff:
                self._handoff.wait_for(lambda: self._took >= mine, wait_s)

    def check_fits(self, request: Request) -> None:
        """Raise RequestError when the request's ``n`` choices can never be in the batch
        together (``max_batch``, config parameter ``max_batch``)."""
        if request.n > self.max_batch:
            raise RequestError(
                f"n must be at most {self.max_batch} on this model (its max_batch: every "
                f"choice decodes in the same batch), got {request.n}"
            )

    def wait_idle(self, timeout_s: float) -> bool:
        """Wait until the loop thread has nothing to do, its last iteration over (``times``
        complete): True, or False after ``timeout_s``. A request's last response is handed
        over inside an iteration, so its caller can get it before the iteration ends."""
        deadline = time.monotonic() + timeout_s
        while not self._idle:
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.001)
        return True

    def _take(self, block: bool) -> Request:
        """The next pending request (blocking at most 50 ms, else ``queue.Empty`` at once),
        counted as taken for ``submit``."""
        request = self.pending.get(timeout=0.05) if block else self.pending.get_nowait()
        with self._handoff:
            self._took += 1
            self._idle = False  # busy from here: a submit now need not wait
            self._handoff.notify_all()
        return request

    def _loop(self) -> None:
        try:
            while not self._stop.is_set():
                try:
                    first = None
                    if not self.active and not self.waiting:
                        self._idle = True  # until a request comes (not between timeouts)
                        try:
                            first = self._take(block=True)
                        except queue.Empty:
                            continue
                    self.run_once(first)
                except Exception as exc:  # keep serving: fail the batch, not the model
                    log.exception("generation step failed")
                    self._fail_all(f"generation failed: {describe(exc)}")
        finally:
            self._idle = False

    # -- one iteration ---------------------------------------------------------------------
    def run_once(self, first: Request | None = None) -> None:
        """Admit waiting requests into free slots, re-form the batch, decode one token."""
        started = time.perf_counter()
        self._times = times = self.times
        times.iterations += 1
        try:
            self._iterate(first, times)
        finally:
            times.total_s += time.perf_counter() - started

    def _iterate(self, first: Request | None, times: LoopTimes) -> None:
        if first is not None:
            self.waiting.append(first)
        while True:
            try:
                self.waiting.append(self._take(block=False))
            except queue.Empty:
                break
        self.steps += 1
        others = len(self.active) - len(self.leaving)  # live rows before any joins
        if self.steps % self.cancel_check_interval == 0:
            for row, seq in enumerate(self.active):
                if row not in self.leaving and seq.request.sink.is_cancelled():
                    self._end(row, "cancelled")
            self._flush()  # (in order: only new requests' responses may overtake)
        joining: list[tuple[KV, list[int], list[_Sequence]]] = []
        if self.waiting:
            mark = time.perf_counter()
            joining = self._admit()
            times.admit_s += time.perf_counter() - mark
        # A cache as wide as the context is trimmed before the next step: rows that ended stay
        # (fed, at their length's position) and the width outgrows the longest live row, and
        # the graph's positions and the runners' buffers (TensorRT's profile) end at the
        # context (+ 1 column).
        if joining or len(self.leaving) > self._dead or self.width >= self.context:
            mark = time.perf_counter()
            self._reform(joining)
            times.reform_s += time.perf_counter() - mark
        self._dead = len(self.leaving)  # rows left free after it (fed, not sampled)
        if joining:
            # The new requests' first tokens go out before the step; in this thread when the
            # step serves nobody else and they are few (each send is an IPC round trip).
            self._flush(urgent=True, inline=others == 0 and self._inline_ok())
        if self.active:
            self._step()
        self._flush()

    def _inline_ok(self) -> bool:
        """Whether the new requests' first responses (``outgoing``) may be sent in this thread:
        few, none of them a request's last (a final response releases the request, and the
        outbox's cancellation checks must not race that), not while stopping, and not on
        TensorRT: the gain is the send not sharing the CPU cores with a step on them; on a
        GPU it would hold the step's launch back instead (not measured)."""
        return (
            len(self.outgoing) <= INLINE_FIRST_RESPONSES
            and not any(update.last for _, update in self.outgoing)
            and not self._stop.is_set()
            and getattr(self.runner, "backend", "") != "tensorrt"
        )

    def _sequence(self, group: _Group, choice: int) -> _Sequence:
        return _Sequence(group, choice, self.runner.vocab_size, self.eos_ids)

    def _admit(self) -> list[tuple[KV, list[int], list[_Sequence]]]:
        """Prefill the waiting requests that fit, several per pass when their padded size
        stays small; their choices join at the next re-form."""
        free = self.max_batch - (len(self.active) - len(self.leaving))
        admitted: list[_Group] = []
        while self.waiting:
            request = self.waiting[0]
            # Cancelled or never fitting: out of the queue before the room is looked at, else
            # a head that does not fit now would keep them (and everything behind) waiting.
            if request.sink.is_cancelled():
                self.waiting.pop(0)
                self._cancel_waiting(request)
                continue
            try:
                self.check_fits(request)  # submit refuses it; this one came another way
            except RequestError as exc:
                self.waiting.pop(0)
                try:
                    request.sink.fail(str(exc))
                except Exception:
                    log.exception("could not deliver an error response")
                continue
            if request.n > free:
                if self.steps % self.cancel_check_interval == 0:  # as often as running rows
                    self._drop_cancelled()
                break
            self.waiting.pop(0)
            admitted.append(_Group(request))
            free -= request.n
        admitted.sort(key=lambda g: len(g.request.prompt))
        joining = []
        batch: list[_Group] = []
        for group in admitted:
            # Sorted by length, so the newest is the longest: padded size = count x its length.
            if batch and (len(batch) + 1) * len(group.request.prompt) > self.prefill_tokens:
                joining.extend(self._prefill(batch))
                batch = []
            batch.append(group)
        if batch:
            joining.extend(self._prefill(batch))
        return joining

    def _cancel_waiting(self, request: Request) -> None:
        """Answer a request cancelled before it was admitted: every choice "cancelled"."""
        group = _Group(request)
        for choice in range(request.n):
            self._finish(self._sequence(group, choice), "cancelled")

    def _drop_cancelled(self) -> None:
        """Answer and drop the cancelled requests queued behind the head: behind a head that
        does not fit they would otherwise hold their answer (and the caller) until the head is
        admitted."""
        kept = self.waiting[:1]
        for request in self.waiting[1:]:
            if request.sink.is_cancelled():
                self._cancel_waiting(request)
            else:
                kept.append(request)
        self.waiting = kept

    def _prefill(self, groups: list[_Group]) -> list[tuple[KV, list[int], list[_Sequence]]]:
        try:
            return self._prefill_groups(groups)
        except Exception as exc:  # these requests fail; the running batch goes on
            log.exception("prefill failed")
            for group in groups:
                group.failed = True
                group.request.sink.fail(f"prefill failed: {describe(exc)}")
            return []

    def _prefill_groups(self, groups: list[_Group]) -> list[tuple[KV, list[int], list[_Sequence]]]:
        lengths = [len(g.request.prompt) for g in groups]
        rows, width, pad = len(groups), max(lengths), self.runner.min_past
        ids = np.zeros((rows, width), np.int64)
        positions = np.zeros((rows, width), np.int64)
        mask = np.zeros((rows, pad + width), np.int64)
        for row, (group, n) in enumerate(zip(groups, lengths, strict=True)):
            # Left padding: every prompt ends at the last column, where the logits are read.
            ids[row, width - n :] = group.request.prompt
            positions[row, width - n :] = np.arange(n)
            mask[row, pad + width - n :] = 1
        mark = time.perf_counter()
        try:
            logits, kv = self.runner.forward(ids, mask, positions, self.runner.empty(rows, pad))
        finally:
            self._times.prefill_pass_s += time.perf_counter() - mark
        # Every choice of a request samples from its prompt's logits row.
        seqs, source = [], []
        for row, group in enumerate(groups):
            for choice in range(group.request.n):
                seq = self._sequence(group, choice)
                seq.length = lengths[row]
                seqs.append(seq)
                source.append(row)
        rows_logits = (
            logits[source] if len(source) != rows or source != list(range(rows)) else logits
        )
        if isinstance(rows_logits, np.ndarray):
            rows_logits = np.array(rows_logits, dtype=np.float32, copy=True)
        else:  # a torch tensor on the GPU (TensorRT): sampled there
            rows_logits = rows_logits.float().clone()
        tokens = self._tokens(seqs, rows_logits)
        ended = [self._accept(seq, tokens[i]) for i, seq in enumerate(seqs)]
        # A request that failed (one choice's sampling or grammar) joins with none of its
        # choices, also those accepted before the failure.
        stay = [i for i, seq in enumerate(seqs) if not ended[i] and not seq.group.failed]
        keep_rows, keep = [source[i] for i in stay], [seqs[i] for i in stay]
        return [(kv, keep_rows, keep)] if keep else []

    def _reform(self, joining: list[tuple[KV, list[int], list[_Sequence]]]) -> None:
        """Rows that ended leave and new rows join: in place when the new rows fit the free
        rows (each copied into one), else one copy of the whole batch (``_rebuild``)."""
        if self._in_place(joining):
            return
        self._rebuild(joining)

    def _in_place(self, joining: list[tuple[KV, list[int], list[_Sequence]]]) -> bool:
        """Put the new rows into rows that ended, in the cache the batch already has.

        Rows left free stay in the batch ("dead": fed, never sampled) until too many are, or
        the cache is ``width_slack`` columns wider than the longest live row: then the whole
        batch is rebuilt (trimmed) in one copy. Only for runners with ``gather`` (their cache is
        writable host memory).
        """
        if self._gather is None or self.kv is None or not self.active:
            return False
        new = [
            (kv, row, seq)
            for kv, rows, seqs in joining
            for row, seq in zip(rows, seqs, strict=True)
        ]
        free = sorted(self.leaving)
        if len(new) > len(free) or any(seq.length > self.width for _, _, seq in new):
            return False
        live = [row for row in range(len(self.active)) if row not in self.leaving]
        dead = len(free) - len(new)
        if dead > max(1, len(self.active) // 8):
            return False
        longest = max(
            [int(self.lengths[row]) for row in live] + [seq.length for _, _, seq in new],
            default=0,
        )
        if self.width - longest > self.width_slack or self.width >= self.context:
            return False
        width = self.width
        for (kv, source, seq), row in zip(new, free, strict=False):
            have = int(kv[0].shape[3])
            n = seq.length
            for dst, src in zip(self.kv, kv, strict=True):
                # Right-aligned; the columns before it are masked (their stale values unused).
                dst[:, row, :, width - n :] = src[:, source, :, have - n :]
            self.active[row] = seq
            self.lengths[row] = n
            self.leaving.discard(row)
        self.reforms_in_place += 1
        return True

    def _rebuild(self, joining: list[tuple[KV, list[int], list[_Sequence]]]) -> None:
        """One copy: the rows still running, then the new ones, right-aligned."""
        self.rebuilds += 1
        stay = [row for row in range(len(self.active)) if row not in self.leaving]
        seqs = [self.active[row] for row in stay]
        parts: list[tuple[KV, list[int]]] = []
        if stay and self.kv is not None:
            parts.append((self.kv, stay))
        for kv, rows, new in joining:
            parts.append((kv, rows))
            seqs.extend(new)
        self.leaving = set()
        self.active = seqs
        if not seqs:
            self.kv, self.width, self.lengths = None, 0, np.zeros(0, np.int64)
            return
        lengths = np.fromiter((s.length for s in seqs), np.int64, len(seqs))
        width = int(lengths.max())
        self.kv = self._gather_parts(parts, width)
        self.width, self.lengths = width, lengths

    def _gather_parts(self, parts: list[tuple[KV, list[int]]], width: int) -> KV:
        if self._gather is not None:
            gathered: KV = self._gather(parts, width)
            return gathered
        return gather_basic(self.runner, parts, width)  # TensorRT's runner

    def _step(self) -> None:
        assert self.kv is not None
        batch, width = len(self.active), self.width
        ids = np.fromiter((s.next_token for s in self.active), np.int64, batch)[:, None]
        positions = self.lengths[:, None]
        # Row i's cache holds its last lengths[i] columns; the new token is the last column.
        columns = np.arange(width + 1)
        mask = (columns[None, :] >= (width - self.lengths)[:, None]).astype(np.int64)
        times = self._times
        mark = time.perf_counter()
        logits, self.kv = self._step_pass(ids, mask, positions, self.kv)
        sampled = time.perf_counter()
        times.pass_s += sampled - mark
        times.steps += 1
        times.rows += batch
        times.live_rows += batch - len(self.leaving)
        times.columns += width
        self.width = width + 1
        self.lengths = self.lengths + 1
        for seq in self.active:
            seq.length += 1
        if self.leaving:  # rows that ended earlier are fed, not sampled
            rows = [row for row in range(batch) if row not in self.leaving]
            tokens = self._tokens([self.active[row] for row in rows], logits[rows])
        else:
            rows = list(range(batch))
            tokens = self._tokens(self.active, logits)
        for i, row in enumerate(rows):
            if self._accept(self.active[row], tokens[i]):
                self.leaving.add(row)
        mark = time.perf_counter()
        times.sampling_s += mark - sampled
        if len(self.leaving) == len(self.active):
            self._rebuild([])  # every row ended: free the cache now
            self._dead = 0
            times.reform_s += time.perf_counter() - mark

    # -- tokens ----------------------------------------------------------------------------
    def _tokens(self, seqs: list[_Sequence], logits: Array) -> list[tuple[int, float, Any]]:
        """Sample one token per row; (token, its log-probability, top alternatives or None).

        ``logits`` [B, V] float32 is modified in place (the options are applied to it). A
        torch tensor (the TensorRT runner's logits, still on the GPU) is sampled where it is,
        by ``sampling_torch`` (the same rule).
        """
        if not isinstance(logits, np.ndarray):
            return self._tokens_on_device(seqs, logits)
        rows = len(seqs)
        lse = logsumexp(logits)
        tops: list[Any] = [None] * rows
        wanted = [i for i, s in enumerate(seqs) if s.request.top_logprobs > 0]
        if wanted:
            k = max(seqs[i].request.top_logprobs for i in wanted)
            ids, lps = top_logprobs(logits[wanted], lse[wanted], k)
            for j, i in enumerate(wanted):
                kk = seqs[i].request.top_logprobs
                tops[i] = (ids[j, :kk].tolist(), lps[j, :kk].tolist())
        raw = None
        processed = [i for i, s in enumerate(seqs) if s.processed]
        constrained = [i for i, s in enumerate(seqs) if s.constraint is not None]
        if processed or constrained:
            # The log-probabilities reported are the model's: keep what the options change.
            raw = logits.copy()
            for i in processed:
                seqs[i].process(logits[i])
            if constrained:
                self._mask(seqs, constrained, logits, raw)
        options = self._options(seqs)
        try:
            chosen = self.sampler.sample(logits, *options)
        except Exception:
            log.exception("sampling a batch of %d rows failed: each row alone", rows)
            chosen = self._sample_each(
                seqs,
                np.argmax(logits, axis=1),
                lambda i: self.sampler.sample(logits[i : i + 1], *(o[i : i + 1] for o in options)),
            )
        source = raw if raw is not None else logits
        token_lps = source[np.arange(rows), chosen] - lse
        return [(int(chosen[i]), float(token_lps[i]), tops[i]) for i in range(rows)]

    def _sample_each(
        self, seqs: list[_Sequence], chosen: Any, sample_row: Callable[[int], Any]
    ) -> Any:
        """After a batch's sampling failed: each row sampled alone (with its own draw, so the
        token it would have had), so that one row's failure fails its own request only, not
        every request prefilled or decoding with it. A row failing alone fails its request;
        its entry of ``chosen`` (the placeholder) is never accepted (``_accept``)."""
        for i, seq in enumerate(seqs):
            try:
                chosen[i] = sample_row(i)[0]
            except Exception as exc:
                log.exception("sampling failed for one row")
                self._fail(seq, f"sampling failed: {describe(exc)}")
        return chosen

    def _options(self, seqs: list[_Sequence]) -> tuple[Array, Array, Array, Array, Array]:
        """Per row: temperature, top_p, top_k, min_p and the uniform draw (from the request's
        own generator, only for sampled rows)."""
        n = len(seqs)
        draws = np.fromiter(
            (
                s.rng.random() if is_sampled(s.request.temperature, s.request.top_k) else 0.0
                for s in seqs
            ),
            np.float64,
            n,
        )
        return (
            np.fromiter((s.request.temperature for s in seqs), np.float64, n),
            np.fromiter((s.request.top_p for s in seqs), np.float64, n),
            np.fromiter((s.request.top_k for s in seqs), np.int64, n),
            np.fromiter((s.request.min_p for s in seqs), np.float64, n),
            draws,
        )

    def _tokens_on_device(self, seqs: list[_Sequence], logits: Any) -> list[tuple[int, float, Any]]:
        """``_tokens`` on a torch tensor, on its device: the options and the draws go up, the
        chosen ids and their log-probabilities (and the ``top_logprobs`` rows asked) come back
        in one copy; the logits stay where they are."""
        from . import sampling_torch as st

        logits = logits.float()
        rows = len(seqs)
        lse = st.logsumexp(logits)
        torch = st._torch()
        tops: list[Any] = [None] * rows
        wanted = [i for i, s in enumerate(seqs) if s.request.top_logprobs > 0]
        k = max((seqs[i].request.top_logprobs for i in wanted), default=0)
        alternatives = []  # copied back with the chosen ids, once
        if wanted:
            index = torch.tensor(wanted, device=logits.device)
            ids, lps = st.top_logprobs(logits[index], lse[index], k)
            k = int(ids.shape[1])
            alternatives = [ids.double().reshape(-1), lps.double().reshape(-1)]
        raw = None
        processed = [i for i, s in enumerate(seqs) if s.processed]
        constrained = [i for i, s in enumerate(seqs) if s.constraint is not None]
        if processed or constrained:
            raw = logits.clone()  # the log-probabilities reported are the model's
            self._process_on_device(seqs, processed, logits)
            if constrained:
                masks = self._allowed(seqs, constrained, int(logits.shape[1]))
                if masks:
                    vocab = int(logits.shape[1])
                    st.apply_masks(
                        logits,
                        raw,
                        np.fromiter(masks, np.int64, len(masks)),
                        np.stack([m[:vocab] for m in masks.values()]),
                    )
        options = self._options(seqs)
        try:
            chosen = st.sample(logits, *options)
        except Exception:
            log.exception("sampling a batch of %d rows failed: each row alone", rows)
            chosen = self._sample_each(
                seqs,
                logits.argmax(dim=1),
                lambda i: st.sample(logits[i : i + 1], *(o[i : i + 1] for o in options)),
            )
        source = raw if raw is not None else logits
        token_lps = source.gather(1, chosen[:, None])[:, 0] - lse
        out = torch.cat([chosen.double(), token_lps.double(), *alternatives]).cpu().numpy()
        if wanted:
            width = len(wanted) * k
            ids_host = out[2 * rows : 2 * rows + width].reshape(len(wanted), k).astype(np.int64)
            lps_host = out[2 * rows + width :].reshape(len(wanted), k).astype(np.float32)
            for j, i in enumerate(wanted):
                kk = seqs[i].request.top_logprobs
                tops[i] = (ids_host[j, :kk].tolist(), lps_host[j, :kk].tolist())
        token_ids = out[:rows].astype(np.int64)
        logprobs = out[rows : 2 * rows].astype(np.float32)
        return [(int(token_ids[i]), float(logprobs[i]), tops[i]) for i in range(rows)]

    def _process_on_device(self, seqs: list[_Sequence], rows: list[int], logits: Any) -> None:
        """``_Sequence.process`` for every listed row at once, on the logits' device."""
        from . import sampling_torch as st

        bias_rows, bias_ids, bias_values, sup_rows, sup_ids, pen = [], [], [], [], [], []
        for i in rows:
            seq = seqs[i]
            if seq.bias_ids is not None and seq.bias_values is not None:
                bias_rows.append(np.full(len(seq.bias_ids), i, np.int64))
                bias_ids.append(seq.bias_ids)
                bias_values.append(seq.bias_values)
            if seq.suppress is not None and seq.generated < seq.request.min_tokens:
                sup_rows.append(np.full(len(seq.suppress), i, np.int64))
                sup_ids.append(seq.suppress)
            if seq.counts is not None:
                pen.append(i)
        if bias_rows:
            st.add_bias(
                logits,
                np.concatenate(bias_rows),
                np.concatenate(bias_ids),
                np.concatenate(bias_values),
            )
        if sup_rows:
            st.suppress(logits, np.concatenate(sup_rows), np.concatenate(sup_ids))
        if pen:
            counts = np.stack([seqs[i].counts for i in pen])  # type: ignore[misc]
            seen = np.zeros(counts.shape, np.bool_)
            for j, i in enumerate(pen):
                if seqs[i].request.repetition_penalty != 1.0:
                    seen[j] = counts[j] > 0
                    prompt = seqs[i].prompt_seen
                    if prompt is not None:
                        seen[j] |= prompt
            st.penalise(
                logits,
                np.asarray(pen, np.int64),
                counts,
                seen,
                np.array([seqs[i].request.repetition_penalty for i in pen], np.float64),
                np.array([seqs[i].request.frequency_penalty for i in pen], np.float64),
                np.array([seqs[i].request.presence_penalty for i in pen], np.float64),
            )

    def _mask(self, seqs: list[_Sequence], rows: list[int], logits: Array, raw: Array) -> None:
        """The constraint hook: disallowed tokens to -inf. Where that and min_tokens leave
        nothing, the constraint's mask alone applies."""
        vocab = logits.shape[1]
        for i, mask in self._allowed(seqs, rows, vocab).items():
            allowed = mask[:vocab]
            row = logits[i]
            row[~allowed] = -np.inf
            if not np.isfinite(row).any():  # min_tokens forbade all the grammar allows
                row[allowed] = raw[i][allowed]

    def _allowed(self, seqs: list[_Sequence], rows: list[int], vocab: int) -> dict[int, Array]:
        """The constraint hook's allowed tokens (bool, True = allowed) of the rows that have a
        mask now (a row whose constraint allows everything has none)."""
        masks: dict[int, Array] = {}
        batched = None
        if _fill_masks is not None and all(hasattr(seqs[i].constraint, "matcher") for i in rows):
            batched = _fill_masks([seqs[i].constraint for i in rows], vocab)
        if batched is not None:
            for j, allowed in zip(batched[0].tolist(), batched[1], strict=True):
                masks[rows[j]] = allowed
        else:
            for i in rows:
                constraint = seqs[i].constraint
                assert constraint is not None
                allowed = constraint.allowed()
                if allowed is not None:
                    masks[i] = allowed
        return masks

    def _accept(self, seq: _Sequence, sample: tuple[int, float, Any]) -> bool:
        """Record a sampled token; True (and the final response queued) if the choice ended."""
        token, logprob, top = sample
        r = seq.request
        if seq.group.failed:  # its sampling (or another choice's) failed: it leaves
            return True
        if seq.first_token_at is None:
            seq.first_token_at = time.monotonic()
        seq.generated += 1
        reason = None
        if seq.constraint is not None:
            try:
                reason = seq.constraint.advance(token)
            except Exception as exc:  # the grammar refused the token: the request cannot go on
                log.warning("constraint failed: %s", exc)
                self._fail(seq, f"constrained decoding failed: {exc}")
                return True
        stop_token = (token in self.eos_ids and not r.ignore_eos) or token in r.stop_ids
        # Before min_tokens nothing stops a choice (as vLLM): eos and the stop ids are masked
        # then, and a stop string is not looked for (``RowConstraint.min_tokens``). Only a
        # grammar that is complete (its constraint's reason) ends it earlier.
        if stop_token and (seq.generated > r.min_tokens or reason is not None):
            # The stop token is counted (generated) but not part of the text.
            self._finish(seq, "stop")
            return True
        seq.tokens.append(token)
        seq.logprobs.append(logprob)
        if top is not None:
            seq.top_ids.append(top[0])
            seq.top_lps.append(top[1])
        if seq.counts is not None:
            seq.counts[token] += 1
        seq.next_token = token
        if reason is not None:
            self._finish(seq, reason)
            return True
        if len(seq.tokens) >= r.max_tokens or seq.length >= self.context:
            self._finish(seq, "length")
            return True
        self._emit(seq)
        return False

    def _end(self, row: int, reason: str) -> None:
        self._finish(self.active[row], reason)
        self.leaving.add(row)

    def _fail_all(self, message: str) -> None:
        failed: set[int] = set()
        for row, seq in enumerate(self.active):
            if row in self.leaving or id(seq.group) in failed:
                continue
            failed.add(id(seq.group))
            self._fail(seq, message)
        # Responses of this step not handed over yet: those of the requests failed are
        # dropped; a request prefilled this step (not in the batch yet) gets its responses if
        # every choice of it ended, else the error (it would otherwise wait for ever).
        out, self.outgoing = self.outgoing, []
        failed_sinks = {id(seq.request.sink) for seq in self.active if seq.group.failed}
        ended = {id(sink) for sink, update in out if update.last}
        keep = []
        for sink, update in out:
            if id(sink) in failed_sinks:
                continue
            if id(sink) in ended:  # every choice of it ended: its responses, in order
                keep.append((sink, update))
                continue
            failed_sinks.add(id(sink))
            try:
                sink.fail(message)
            except Exception:
                log.exception("could not deliver an error response")
        self.outgoing = keep
        self._flush()
        self.active, self.leaving, self.kv = [], set(), None
        self.width, self.lengths, self._dead = 0, np.zeros(0, np.int64), 0

    def _fail(self, seq: _Sequence, message: str) -> None:
        group = seq.group
        if group.failed:
            return
        group.failed = True
        # Its other choices leave at the next re-form; nothing more is sent for them.
        for row, other in enumerate(self.active):
            if other.group is group:
                self.leaving.add(row)
        try:
            group.request.sink.fail(message)
        except Exception:
            log.exception("could not deliver an error response")

    # -- responses -------------------------------------------------------------------------
    def _update(self, seq: _Sequence, final: bool) -> Update:
        now = time.monotonic()
        start = seq.sent
        seq.sent = len(seq.tokens)
        seq.last_sent = now
        mean = float(np.mean(seq.logprobs)) if seq.logprobs else 0.0
        last = False
        if final:
            seq.group.open -= 1
            last = seq.group.open <= 0
        return Update(
            token_ids=seq.tokens[start:],
            logprobs=seq.logprobs[start:],
            finished=final,
            finish_reason=seq.finish_reason if final else "",
            prompt_tokens=len(seq.request.prompt),
            completion_tokens=seq.generated,
            mean_logprob=mean,
            queue_ms=(seq.group.admitted - seq.request.received) * 1e3,
            compute_ms=(now - seq.group.admitted) * 1e3,
            ttft_ms=(
                (seq.first_token_at - seq.request.received) * 1e3
                if seq.first_token_at is not None
                else 0.0
            ),
            choice=seq.choice,
            top_ids=seq.top_ids[start:] if seq.top_ids else [],
            top_logprobs=seq.top_lps[start:] if seq.top_lps else [],
            last=last,
        )

    def _emit(self, seq: _Sequence) -> None:
        if not seq.request.stream or seq.group.failed:
            return
        # The first token goes out at once (time to first token), unless the request holds it
        # (``hold_first``: not before its least gap has passed since it was received); later
        # ones in chunks that grow with the batch (at most ``chunk_batch`` responses per step)
        # and, with a response budget, no sooner than live rows / budget seconds after the
        # previous one (or the request's own least gap, when longer): a response costs the
        # Triton path about as much as a token of the decode step.
        live = len(self.active) - len(self.leaving)
        if not seq.sent:
            r = seq.request
            if r.hold_first and time.monotonic() - r.received < r.min_gap_s:
                return
        else:
            interval = max(self.stream_interval, -(-live // self.chunk_batch))
            if len(seq.tokens) - seq.sent < interval:
                return
            gap = max(live * self.response_gap_s, seq.request.min_gap_s)
            if gap and time.monotonic() - seq.last_sent < gap:
                return
        self.outgoing.append((seq.request.sink, self._update(seq, final=False)))

    def _finish(self, seq: _Sequence, reason: str) -> None:
        if seq.group.failed:
            return
        seq.finish_reason = reason
        self.outgoing.append((seq.request.sink, self._update(seq, final=True)))

    def _flush(self, urgent: bool = False, inline: bool = False) -> None:
        """Hand this step's responses over, all at once (``urgent``: only new requests' first
        responses, which may overtake what was handed over before; ``inline``: send them in
        this thread, before returning)."""
        if self.outgoing:
            out, self.outgoing = self.outgoing, []
            if inline:
                self.publish(out, urgent=urgent, inline=True)
            else:
                self.publish(out, urgent=urgent)


def _send_each(
    updates: list[tuple[Sink, Update]], urgent: bool = False, inline: bool = False
) -> None:
    for sink, update in updates:
        try:
            sink.send(update)
        except Exception:
            # The client is gone (stream closed): the next cancel check frees the slot.
            log.debug("response not delivered", exc_info=True)
