"""An echo model: the genwire model's contract and response path, no model (``N/model.py``).

``genwire model bench --floor`` writes it into a throwaway version beside ``triton_model.py``
and ``genwire_runtime``: requests are taken by the same ``execute`` path, and responses go
through the same outbox thread, tensors and response sender as the real model's. What it
measures is therefore what Triton's decoupled gRPC streaming costs per response and per
request, with the same client as ``genwire model bench``, and nothing of the model.

Each request gets ``max_tokens`` responses of one token (its prompt's first id), the last one
final. Like the decode loop, every live request gets its token in the same "step", handed to
the outbox in one piece; the next step starts once the outbox has sent the previous one (so
the figures are the response path's own pace, not a queue's).

Runs in Triton's Python stub (Python 3.10 in NGC images): no 3.11-only features.
"""

# ruff: noqa: E402  (imports follow the sys.path set-up of triton_model.py on purpose)
from __future__ import annotations

import importlib.util
import json
import os
import queue
import threading
from typing import Any

_HERE = os.path.dirname(os.path.abspath(__file__))
_spec = importlib.util.spec_from_file_location(
    "genwire_floor_triton_model", os.path.join(_HERE, "triton_model.py")
)
assert _spec is not None and _spec.loader is not None
_model = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_model)  # puts the venv and genwire_runtime on sys.path

import sys

from genwire_runtime.scheduler import Update  # type: ignore[import-not-found]

_MARK = Update(
    token_ids=[],
    logprobs=[],
    finished=False,
    finish_reason="",
    prompt_tokens=0,
    completion_tokens=0,
    mean_logprob=0.0,
    queue_ms=0.0,
    compute_ms=0.0,
)


class _StepDone:
    """Queued after a step's responses: the outbox 'delivers' it once it sent them."""

    def __init__(self) -> None:
        self.event = threading.Event()

    def deliver(self, update: Any) -> None:
        self.event.set()


class _Echo:
    __slots__ = ("prompt", "sent", "sink", "token", "tokens")

    def __init__(self, sink: Any, tokens: int, token: int, prompt: int) -> None:
        self.sink, self.tokens, self.token, self.prompt, self.sent = sink, tokens, token, prompt, 0


class TritonPythonModel:
    """Echo: one token per response, ``max_tokens`` responses per request."""

    def initialize(self, args: dict[str, str]) -> None:
        config = json.loads(args["model_config"])
        params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        sys.setswitchinterval(float(params.get("gil_switch_interval_us", "500")) * 1e-6)
        self.outbox = _model._Outbox()
        self.pending: queue.SimpleQueue[_Echo] = queue.SimpleQueue()
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._loop, name="genwire-echo", daemon=True)
        self.thread.start()

    def execute(self, requests: list[Any]) -> None:
        for request in requests:
            sink = _model._TritonSink(request, self.outbox)
            try:
                inputs = _model._inputs(request)
                tokens = int(_model._scalar(inputs, "max_tokens"))
                ids = _model._vector(inputs, "input_ids")
                if tokens < 1 or ids is None or len(ids) == 0:
                    raise _model.RequestError("needs input_ids and max_tokens >= 1")
            except (_model.RequestError, ValueError) as exc:
                sink.fail(f"genwire-floor-echo: {exc}")
                continue
            self.pending.put(_Echo(sink, tokens, int(ids[0]), len(ids)))

    def _update(self, echo: _Echo, reason: str = "") -> Update:
        final = bool(reason)
        return Update(
            token_ids=[echo.token] if reason != "cancelled" else [],
            logprobs=[-1.0] if reason != "cancelled" else [],
            finished=final,
            finish_reason=reason,
            prompt_tokens=echo.prompt,
            completion_tokens=echo.sent,
            mean_logprob=-1.0,
            queue_ms=0.0,
            compute_ms=0.0,
            last=final,
        )

    def _loop(self) -> None:
        live: list[_Echo] = []
        while not self.stopping.is_set():
            if not live:
                try:
                    live.append(self.pending.get(timeout=0.05))
                except queue.Empty:
                    continue
            while True:
                try:
                    live.append(self.pending.get_nowait())
                except queue.Empty:
                    break
            step: list[tuple[Any, Update]] = []
            running = []
            for echo in live:
                if echo.sink.is_cancelled():
                    step.append((echo.sink, self._update(echo, "cancelled")))
                    continue
                echo.sent += 1
                done = echo.sent >= echo.tokens
                step.append((echo.sink, self._update(echo, "length" if done else "")))
                if not done:
                    running.append(echo)
            live = running
            marker = _StepDone()
            step.append((marker, _MARK))
            self.outbox.publish(step)
            marker.event.wait()
        self.outbox.publish([(echo.sink, self._update(echo, "cancelled")) for echo in live])

    def finalize(self) -> None:
        self.stopping.set()
        self.thread.join(timeout=5.0)
        self.outbox.close()
