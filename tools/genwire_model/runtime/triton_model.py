"""Triton Python-backend model: the decode loop next to the model (copied as ``N/model.py``).

Decoupled: ``execute`` validates and queues each request (and compiles its structured-output
grammar or stop strings, ``constraints.py``) and returns (once an idle scheduler thread has
taken it: ``_HANDOFF_WAIT_S``); the scheduler thread prefills, batches every active sequence
into one forward pass per token, and hands each step's responses to the outbox thread in one
piece (a lone new request's first ones it sends itself): a response per choice per token (or
per chunk of tokens), then a final one per choice with finish reason, token counts and the
mean token log-probability; the request's last response carries Triton's final flag. The KV
cache never leaves this process.

A request with the ``genwire_cancel`` parameter is no generation but a cancel of the request
with that id (``genwire.triton_io.CANCEL_PARAMETER``): clients that share one gRPC stream among
many requests cannot cancel the call. ``execute`` flags the target, as the cancellation poll
does, and answers the cancel with one empty final response.

It runs in Triton's Python stub (the system's libpython3.11), not in genwire's virtualenv, so
the first thing it does is put that virtualenv's site-packages (written beside it at build
time, in ``genwire_env.json``) on ``sys.path``.
"""

# ruff: noqa: E402  (imports follow the sys.path set-up on purpose)
from __future__ import annotations

import json
import os
import site
import sys

_HERE = os.path.dirname(os.path.abspath(__file__))


def _setup_paths() -> None:
    paths: list[str] = []
    # Set by `genwire up` on tritonserver; the build-time record below is the fallback.
    if os.environ.get("GENWIRE_STUB_SITE_PACKAGES"):
        paths.append(os.environ["GENWIRE_STUB_SITE_PACKAGES"])
    env_file = os.path.join(_HERE, "genwire_env.json")
    if os.path.exists(env_file):
        with open(env_file, encoding="utf-8") as handle:
            paths.extend(json.load(handle).get("site_packages", []))
    for path in paths:
        if path not in sys.path and os.path.isdir(path):
            site.addsitedir(path)
    if _HERE not in sys.path:
        sys.path.insert(0, _HERE)


_setup_paths()

import collections
import logging
import math
import queue
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import triton_python_backend_utils as pb_utils
from genwire_runtime.runners import (  # type: ignore[import-not-found]
    create_runner,
    version_options,
)
from genwire_runtime.scheduler import (  # type: ignore[import-not-found]
    STREAM_RESPONSES_PER_S,
    Request,
    RequestError,
    Scheduler,
    Sink,
    Update,
    validate,
)

try:
    from genwire_runtime.constraints import (  # type: ignore[import-not-found]
        ConstraintCompiler,
        ConstraintError,
    )
except ImportError:  # a runtime without constrained decoding
    ConstraintCompiler = None
    ConstraintError = RequestError  # nothing compiles, so nothing is refused as a constraint

log = logging.getLogger("genwire.model")
# The loggers whose records go to Triton's log (``_log_to_triton``): this module's and the
# runtime's (scheduler, runners, TensorRT engine).
_LOGGERS = ("genwire.model", "genwire_runtime")


class _TritonLog(logging.Handler):
    """Python logging into Triton's own log (``pb_utils.Logger``), at the matching level.

    The stub configures no logging: without this, INFO records (the model's "ready" line, the
    sampler's ranking) went nowhere and warnings reached Triton's log file through the stub's
    stderr as the bare message (no level, time, logger or model)."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            message = self.format(record)
            if record.levelno >= logging.ERROR:
                pb_utils.Logger.log_error(message)
            elif record.levelno >= logging.WARNING:
                pb_utils.Logger.log_warn(message)
            else:
                pb_utils.Logger.log_info(message)
        except Exception:
            self.handleError(record)


def _log_to_triton(origin: str) -> None:
    """Send ``_LOGGERS``' records at INFO and above to Triton's log, each line starting with
    ``origin`` (the instance this stub serves) and the logger's name and line (Triton's own
    file:line is this handler's)."""
    handler = _TritonLog()
    # ``origin`` is a format string's literal part: a ``%`` in a model's name must not be read
    # as a placeholder (every record would fail to format).
    literal = origin.replace("%", "%%")
    handler.setFormatter(logging.Formatter(f"{literal}: %(name)s:%(lineno)d: %(message)s"))
    for name in _LOGGERS:
        logger = logging.getLogger(name)
        for old in [h for h in logger.handlers if isinstance(h, _TritonLog)]:
            logger.removeHandler(old)
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)


# genwire.triton_io.CANCEL_PARAMETER (this code cannot import genwire; a test holds them equal):
# a request carrying it cancels the request with that Triton request id on the same stream.
_CANCEL_PARAMETER = "genwire_cancel"
# genwire.triton_io.RESPONSE_GAP_PARAMETER (held equal by the same test): milliseconds.
_RESPONSE_GAP_PARAMETER = "genwire_min_response_gap_ms"
# genwire.triton_io.HOLD_FIRST_RESPONSE_PARAMETER (held equal by the same test): a boolean.
_HOLD_FIRST_PARAMETER = "genwire_hold_first_response"
# What every refusal of a request (its parameters, its prompt, its constraint) starts with:
# the inference service reads an error that starts so as the request's fault, answered with a
# 4xx code (genwire_inference.handlers.MODEL_REFUSAL, held equal by a test). Failures of the
# model itself (a failed pass, a failed request set-up) never start with it.
_REFUSED = "genwire-gpt: "


def _parameters(request: Any) -> dict[str, Any]:
    """The request's genwire parameters (others, Triton's own, are not read here)."""
    try:
        raw = request.parameters()
    except Exception:  # a backend without request parameters
        return {}
    if not raw or "genwire_" not in raw:  # the common case, without parsing JSON
        return {}
    try:
        params = json.loads(raw)
    except ValueError:
        return {}
    return params if isinstance(params, dict) else {}


def _cancel_target(params: dict[str, Any]) -> str | None:
    """The request id a cancel request targets; None for a generation request.

    A present parameter that is not a string still makes a cancel (of nothing): generating for
    a request that meant to cancel would be worse than ignoring it.
    """
    if _CANCEL_PARAMETER not in params:
        return None
    target = params[_CANCEL_PARAMETER]
    return target if isinstance(target, str) else ""


def _min_gap_s(params: dict[str, Any]) -> float:
    """The request's least gap between streamed responses, in seconds (0: none asked)."""
    value = params.get(_RESPONSE_GAP_PARAMETER)
    if value is None:
        return 0.0
    try:
        ms = float(value) if not isinstance(value, bool) else math.nan
    except (TypeError, ValueError, OverflowError):
        ms = math.nan
    if not math.isfinite(ms) or ms < 0:
        raise RequestError(
            f"parameter {_RESPONSE_GAP_PARAMETER} must be a finite number of milliseconds "
            f">= 0, got {value!r}"
        )
    return ms / 1000.0


def _hold_first(params: dict[str, Any]) -> bool:
    """Whether the request's first streamed response waits for its least gap too (False: none
    asked). Triton passes a bool parameter as a JSON boolean; anything else is refused."""
    value = params.get(_HOLD_FIRST_PARAMETER, False)
    if not isinstance(value, bool):
        raise RequestError(f"parameter {_HOLD_FIRST_PARAMETER} must be a boolean, got {value!r}")
    return value


def _instances(config: dict[str, Any]) -> int | None:
    """How many instances of the model Triton runs (None: cannot be told here — a GPU group
    without its GPUs listed has ``count`` on every GPU of the machine)."""
    total = 0
    for group in config.get("instance_group", []) or [{}]:
        gpus = group.get("gpus") or []
        if str(group.get("kind", "")) == "KIND_GPU" and not gpus:
            return None
        total += int(group.get("count", 1)) * max(1, len(gpus))
    return total


def _inputs(request: Any) -> dict[str, Any]:
    """The request's input tensors by name, listed once (``pb_utils.get_input_tensor_by_name``
    lists every input of the request again for each name it looks up)."""
    return {tensor.name(): tensor for tensor in request.inputs()}


def _scalar(inputs: dict[str, Any], name: str, default: Any = None) -> Any:
    tensor = inputs.get(name)
    if tensor is None:
        if default is None:
            raise RequestError(f"required input {name!r} is missing")
        return default
    array = tensor.as_numpy()
    if array.size != 1:
        raise RequestError(f"input {name!r} must hold exactly one value, got {array.size}")
    return array.reshape(-1)[0]


_WAKE = object()  # a queue item that only wakes the outbox (urgent responses are waiting)

# How long ``execute`` waits for an idle decode loop to take a new request: the stub keeps the
# GIL after ``execute`` returns, for a round trip to the server, which would otherwise hold
# the prefill back (Scheduler.submit).
_HANDOFF_WAIT_S = 0.002


def _vector(inputs: dict[str, Any], name: str) -> Any:
    """An optional input's values (None when absent)."""
    tensor = inputs.get(name)
    return None if tensor is None else tensor.as_numpy().reshape(-1)


def _text(value: Any) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


class _Outbox:
    """The thread that talks to Triton about requests: sends and cancellation checks.

    A send is an IPC round trip to the Triton process (about half a millisecond); done here,
    it overlaps the next decode step. The scheduler hands over each step's responses in one
    queue item (``publish``); this thread builds their tensors and sends them, in order, so the
    decode loop does not wait on IPC nor build a response. It also makes every other
    response-sender call (cancellation checks). A cancelled request still gets the final
    flag, as the Python backend requires. Two sends happen elsewhere: a cancel request's own
    empty final response (``execute``: that sender is nobody else's), and new requests' first
    responses when the decode loop's next step would serve only them (``inline``: the loop
    sends them itself before that step, as nobody waits on it).
    """

    def __init__(self, poll_s: float = 0.1) -> None:
        self.queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        # New requests' first tokens, sent before anything already queued (between two sends
        # of a step's responses, too): they are those requests' first responses, so no order
        # within a request changes, and time to first token does not wait for a step's sends.
        self.urgent: collections.deque[list[tuple[Sink, Update]]] = collections.deque()
        self.live: dict[int, _TritonSink] = {}
        # The live requests by Triton request id, for cancel requests (execute's thread);
        # clients may reuse an id, so each id maps to every live sink that carries it.
        self.by_request_id: dict[str, dict[int, _TritonSink]] = {}
        self.live_lock = threading.Lock()
        self.poll_s = poll_s
        self.thread = threading.Thread(target=self._run, name="genwire-outbox", daemon=True)
        self.thread.start()

    def register(self, sink: _TritonSink) -> None:
        """Watch a new request for cancellation until its final response."""
        with self.live_lock:
            self.live[id(sink)] = sink
            if sink.request_id:  # "" (a client that sets no id) is nobody's id
                self.by_request_id.setdefault(sink.request_id, {})[id(sink)] = sink

    def cancel(self, request_id: str) -> int:
        """Mark every live request with that id cancelled, as the poll does (any thread: only
        the flag; the scheduler frees the slot at its next check, the outbox sends the final
        flag alone). Returns how many there were."""
        if not request_id:
            return 0
        with self.live_lock:
            sinks = list(self.by_request_id.get(request_id, {}).values())
        for sink in sinks:
            sink.cancelled = True
        return len(sinks)

    def publish(
        self, updates: list[tuple[Sink, Update]], urgent: bool = False, inline: bool = False
    ) -> None:
        """A step's responses (the scheduler's ``publish``): one queue item; ``urgent``: the
        first tokens of requests just admitted; ``inline``: such first tokens, sent now in the
        caller's thread (the scheduler's, when its next step serves only these requests:
        nothing else is queued for them, so no order changes)."""
        if inline:
            self._deliver_all(updates)
        elif urgent:
            self.urgent.append(updates)
            self.queue.put(_WAKE)
        else:
            self.queue.put(updates)

    def put_error(self, sink: _TritonSink, message: str) -> None:
        self.queue.put((sink, message))

    def _run(self) -> None:
        next_poll = time.monotonic() + self.poll_s
        while True:
            try:
                item = self.queue.get(timeout=self.poll_s)
                if item is None:
                    self._drain()
                    return
                self._send_urgent()
                if item is not _WAKE:
                    self._handle(item)
                # Drop every reference to the requests at once: a live response sender keeps
                # the model instance alive, and an unload would wait for it forever.
                del item
            except queue.Empty:
                pass
            except Exception:  # this thread sends every final flag: it must never die
                log.exception("response delivery failed")
            if time.monotonic() >= next_poll:
                self._poll_cancelled()
                next_poll = time.monotonic() + self.poll_s

    def _handle(self, item: Any) -> None:
        if isinstance(item, tuple):
            sink, message = item
            sink.deliver_error(message)
            self._forget(sink)
            return
        for sink, update in item:
            if self.urgent:
                self._send_urgent()
            self._deliver(sink, update)

    def _send_urgent(self) -> None:
        while self.urgent:
            self._deliver_all(self.urgent.popleft())

    def _deliver_all(self, updates: list[tuple[Any, Update]]) -> None:
        for sink, update in updates:
            self._deliver(sink, update)

    def _deliver(self, sink: Any, update: Update) -> None:
        try:
            sink.deliver(update)
        except Exception:
            log.exception("response delivery failed")
        if update.last:
            self._forget(sink)

    def _forget(self, sink: Any) -> None:
        with self.live_lock:
            self.live.pop(id(sink), None)
            same_id = self.by_request_id.get(sink.request_id)
            if same_id is not None:
                same_id.pop(id(sink), None)
                if not same_id:
                    del self.by_request_id[sink.request_id]

    def _drain(self) -> None:
        """Deliver what was queued before the stop marker: final flags among it."""
        self._send_urgent()
        while True:
            try:
                item = self.queue.get_nowait()
            except queue.Empty:
                return
            if item is not None and item is not _WAKE:
                try:
                    self._handle(item)
                except Exception:
                    log.exception("response delivery failed")

    def _poll_cancelled(self) -> None:
        with self.live_lock:
            sinks = list(self.live.values())
        for sink in sinks:
            sender = sink.sender
            if sender is None:
                continue
            try:
                if sender.is_cancelled():
                    sink.cancelled = True  # the scheduler frees the slot at its next check
            except Exception:
                log.debug("cancellation check failed", exc_info=True)

    def close(self) -> None:
        self.queue.put(None)
        self.thread.join(timeout=5.0)


def _answer_untaken(request: Any, exc: Exception) -> None:
    """A final error response to a request no sink was made for, on its own sender when it has
    one: its caller is told at once (a model failure, ``request failed:``) instead of waiting
    out its deadline."""
    try:
        request.get_response_sender().send(
            pb_utils.InferenceResponse(
                error=pb_utils.TritonError(f"request failed: {type(exc).__name__}: {exc}")
            ),
            flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL,
        )
    except Exception:  # no sender either, or the client is gone: nobody to tell
        log.debug("untaken request not answered", exc_info=True)


class _TritonSink:
    """One request's response sender; the outbox thread builds and sends its responses (the
    decode thread its first ones, when it sends them inline)."""

    def __init__(self, request: Any, outbox: _Outbox) -> None:
        self.outbox = outbox
        self.sender = request.get_response_sender()
        self.request = request
        self.request_id: str = request.request_id()
        self.cancelled = False
        self.closed = False
        outbox.register(self)

    def release(self) -> None:
        """Forget the request and its sender once the final flag went out."""
        self.sender = None
        self.request = None

    @staticmethod
    def _tensors(update: Update) -> list[Any]:
        tensors = [
            pb_utils.Tensor("token_ids", np.asarray(update.token_ids, dtype=np.int32)),
            pb_utils.Tensor("logprobs", np.asarray(update.logprobs, dtype=np.float32)),
            pb_utils.Tensor("finished", np.asarray([update.finished], dtype=np.bool_)),
            pb_utils.Tensor("choice", np.asarray([update.choice], dtype=np.int32)),
        ]
        if update.top_ids:
            tensors.append(
                pb_utils.Tensor("top_token_ids", np.asarray(update.top_ids, dtype=np.int32))
            )
            tensors.append(
                pb_utils.Tensor(
                    "top_token_logprobs", np.asarray(update.top_logprobs, dtype=np.float32)
                )
            )
        if not update.finished:
            return tensors  # the totals ride on the final response only
        return [
            *tensors,
            pb_utils.Tensor(
                "finish_reason", np.asarray([update.finish_reason.encode()], dtype=np.object_)
            ),
            pb_utils.Tensor("prompt_tokens", np.asarray([update.prompt_tokens], dtype=np.int32)),
            pb_utils.Tensor(
                "completion_tokens", np.asarray([update.completion_tokens], dtype=np.int32)
            ),
            pb_utils.Tensor("mean_logprob", np.asarray([update.mean_logprob], dtype=np.float32)),
            pb_utils.Tensor("queue_ms", np.asarray([update.queue_ms], dtype=np.float32)),
            pb_utils.Tensor("compute_ms", np.asarray([update.compute_ms], dtype=np.float32)),
            pb_utils.Tensor("ttft_ms", np.asarray([update.ttft_ms], dtype=np.float32)),
        ]

    def deliver(self, update: Update) -> None:
        """Build and send one response (outbox thread; or decode thread, inline)."""
        sender = self.sender
        if self.closed or sender is None:
            return
        final = pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL
        flags = final if update.last else 0
        self.closed = update.last
        try:
            if self.cancelled:
                # Nobody listens any more: only complete the request (a final flag alone).
                if update.last:
                    sender.send(flags=final)
            else:
                response = pb_utils.InferenceResponse(output_tensors=self._tensors(update))
                sender.send(response, flags=flags)
        except Exception:
            self.cancelled = True  # the stream is gone; the next check frees the slot
            log.debug("response not delivered", exc_info=True)
            if update.last:
                # Triton keeps a request in flight until it sees the final flag.
                try:
                    sender.send(flags=final)
                except Exception:
                    log.debug("request already completed", exc_info=True)
        if update.last:
            self.release()

    def deliver_error(self, message: str) -> None:
        """Send a final error response (outbox thread)."""
        sender = self.sender
        if self.closed or sender is None:
            return
        self.closed = True
        try:
            sender.send(
                pb_utils.InferenceResponse(error=pb_utils.TritonError(message)),
                flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL,
            )
        except Exception:
            log.debug("error response not delivered", exc_info=True)
        self.release()

    # -- the scheduler's Sink (tests and in-process use send; Triton goes through publish) --
    def send(self, update: Update) -> None:
        self.outbox.publish([(self, update)])

    def fail(self, message: str) -> None:
        self.outbox.put_error(self, message)

    def is_cancelled(self) -> bool:
        # Set by a failed send or the outbox's periodic check: no IPC here.
        return self.cancelled or self.sender is None


class TritonPythonModel:
    """genwire's generative model: continuous batching, streaming, cancellation."""

    def initialize(self, args: dict[str, str]) -> None:
        _log_to_triton(f"{args['model_instance_name']} version {args['model_version']}")
        config = json.loads(args["model_config"])
        params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        # A cancel request reaches one instance, its target may run in another: with several
        # instances cancels are refused (an error), so clients keep a call per request.
        self.cancel_messages = _instances(config) == 1
        # Three threads share the GIL here (Triton's execute, the decode loop, the outbox): with
        # Python's default 5 ms switch interval a new request or a response waits up to 5 ms
        # for the decode thread to let go of it, whatever the step costs.
        sys.setswitchinterval(float(params.get("gil_switch_interval_us", "500")) * 1e-6)
        version_dir = Path(args["model_repository"]) / args["model_version"]
        self.manifest = json.loads((version_dir / "manifest.json").read_text(encoding="utf-8"))
        options = version_options(params, self.manifest)
        self.runner = create_runner(
            version_dir,
            threads=options["intra_op_threads"],
            prefer=params.get("backend", "auto"),
            allow_spinning=params.get("ort_allow_spinning", "0") == "1",
        )
        shape = self.manifest["shape"]
        self.vocab_size = int(shape["vocab_size"])
        self.context = int(self.manifest["context_length"])
        self.outbox = _Outbox()
        self.scheduler = Scheduler(
            self.runner,
            context=self.context,
            eos_ids=tuple(self.manifest["eos_token_ids"]),
            max_batch=options["max_batch"],
            stream_interval=options["stream_interval"],
            cancel_check_interval=int(params.get("cancel_check_interval", "4")),
            chunk_batch=int(params.get("stream_chunk_batch", "16")),
            publish=self.outbox.publish,
            responses_per_s=float(
                params.get("stream_responses_per_s", str(STREAM_RESPONSES_PER_S))
            ),
        )
        self.constraints: Any = None
        if ConstraintCompiler is not None:
            try:
                self.constraints = ConstraintCompiler(
                    version_dir, self.vocab_size, tuple(self.manifest["eos_token_ids"])
                )
            except Exception:  # structured output refused per request, the model serves
                log.exception("constrained decoding unavailable")
        self.scheduler.start()
        log.info(
            "genwire model %s version %s ready on %s",
            args["model_name"],
            args["model_version"],
            self.runner.backend,
        )

    def _decode(self, request: Any, sink: _TritonSink, params: dict[str, Any]) -> Request:
        inputs = _inputs(request)
        ids = _vector(inputs, "input_ids")
        if ids is None:
            raise RequestError("required input 'input_ids' is missing")
        stop = _vector(inputs, "stop_token_ids")
        stop_ids: frozenset[int] = frozenset()
        if stop is not None:
            stop_ids = frozenset(int(t) for t in stop)
        bias_ids = _vector(inputs, "logit_bias_ids")
        bias_values = _vector(inputs, "logit_bias_values")
        if (bias_ids is None) != (bias_values is None) or (
            bias_ids is not None and len(bias_ids) != len(bias_values)
        ):
            raise RequestError("logit_bias_ids and logit_bias_values must have the same length")
        guided = _vector(inputs, "guided")
        stops = _vector(inputs, "stop")
        return Request(
            prompt=ids.astype(np.int64),
            max_tokens=int(_scalar(inputs, "max_tokens")),
            temperature=float(_scalar(inputs, "temperature", 1.0)),
            top_p=float(_scalar(inputs, "top_p", 1.0)),
            top_k=int(_scalar(inputs, "top_k", 0)),
            seed=int(_scalar(inputs, "seed", -1)),
            stop_ids=stop_ids,
            stream=bool(_scalar(inputs, "stream", True)),
            sink=sink,
            n=int(_scalar(inputs, "n", 1)),
            top_logprobs=int(_scalar(inputs, "top_logprobs", 0)),
            presence_penalty=float(_scalar(inputs, "presence_penalty", 0.0)),
            frequency_penalty=float(_scalar(inputs, "frequency_penalty", 0.0)),
            repetition_penalty=float(_scalar(inputs, "repetition_penalty", 1.0)),
            min_p=float(_scalar(inputs, "min_p", 0.0)),
            logit_bias=(
                {int(t): float(v) for t, v in zip(bias_ids, bias_values, strict=True)}
                if bias_ids is not None
                else {}
            ),
            min_tokens=int(_scalar(inputs, "min_tokens", 0)),
            ignore_eos=bool(_scalar(inputs, "ignore_eos", False)),
            guided=_text(guided[0]) if guided is not None and len(guided) else "",
            stop=tuple(_text(s) for s in stops) if stops is not None else (),
            min_gap_s=_min_gap_s(params),
            hold_first=_hold_first(params),
        )

    def _cancel(self, request: Any, target: str) -> None:
        """A cancel request: flag the target's sinks, answer with one empty final response."""
        if not self.cancel_messages:
            _TritonSink(request, self.outbox).fail(
                "genwire-gpt: cancel requests need a single model instance"
            )
            return
        cancelled = self.outbox.cancel(target)
        log.debug("cancel of request %r: %d live", target, cancelled)
        try:
            # Its own sender, used only here; the targets' senders stay the outbox's.
            request.get_response_sender().send(flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
        except Exception:  # the client is gone: nothing else depends on this response
            log.debug("cancel response not delivered", exc_info=True)

    def execute(self, requests: list[Any]) -> None:
        last = len(requests) - 1
        for index, request in enumerate(requests):
            try:
                params = _parameters(request)
                target = _cancel_target(params)
                if target is not None:
                    self._cancel(request, target)
                    continue
                sink = _TritonSink(request, self.outbox)
            except Exception as exc:  # no sink: the batch's other requests go on
                log.exception("request not taken")
                _answer_untaken(request, exc)
                continue
            try:
                decoded = self._decode(request, sink, params)
                validate(decoded, self.vocab_size, self.context)
                if decoded.guided and self.constraints is None:
                    raise RequestError("this model version cannot enforce structured output")
                if self.constraints is not None and (decoded.guided or decoded.stop):
                    decoded.constraints = self.constraints.build(
                        decoded.guided, decoded.stop, decoded.n
                    )
                # (Stop strings without a compiler: postprocess still cuts the text at them.)
                # Only the last waits: the loop then takes the whole batch together. (It
                # refuses a request with more choices than its batch: RequestError.)
                self.scheduler.submit(decoded, wait_s=_HANDOFF_WAIT_S if index == last else 0.0)
            except (RequestError, ConstraintError) as exc:
                # The request's own fault, and only that (a ValueError from a bug is not):
                # the inference service answers it with a 4xx.
                sink.fail(f"{_REFUSED}{exc}")
            except Exception as exc:
                # Anything else (RecursionError, MemoryError, a bug) fails this request only:
                # escaping, it left the batch's later requests never queued and this one's
                # sink registered (never answered). Not a refusal: the message says so.
                log.exception("request failed before it was queued (%s)", type(exc).__name__)
                sink.fail(f"request failed: {type(exc).__name__}: {exc}")

    def finalize(self) -> None:
        self.scheduler.stop()  # sends the final "cancelled" responses through the outbox
        self.outbox.close()
