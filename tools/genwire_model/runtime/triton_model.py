"""Triton Python-backend model: the decode loop next to the model (copied as ``N/model.py``).

Decoupled: ``execute`` validates and queues each request and returns at once; the scheduler
thread prefills, batches every active sequence into one forward pass per token, and sends a
response per token (or per ``stream_interval`` tokens) and a final one with finish reason,
token counts and the mean token log-probability. The KV cache never leaves this process.

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

import logging
import queue
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import triton_python_backend_utils as pb_utils
from genwire_runtime.runners import create_runner  # type: ignore[import-not-found]
from genwire_runtime.scheduler import (  # type: ignore[import-not-found]
    Request,
    RequestError,
    Scheduler,
    Update,
    validate,
)

log = logging.getLogger("genwire.model")


def _scalar(request: Any, name: str, default: Any = None) -> Any:
    tensor = pb_utils.get_input_tensor_by_name(request, name)
    if tensor is None:
        if default is None:
            raise RequestError(f"required input {name!r} is missing")
        return default
    array = tensor.as_numpy()
    if array.size != 1:
        raise RequestError(f"input {name!r} must hold exactly one value, got {array.size}")
    return array.reshape(-1)[0]


class _Outbox:
    """The one thread that talks to Triton about requests: sends and cancellation checks.

    A send is an IPC round trip to the Triton process (about half a millisecond); done here,
    it overlaps the next decode step. One thread keeps each request's responses in order and
    makes every response-sender call (sends and cancellation checks), so the decode loop never
    waits on IPC. A cancelled request still gets the final flag, as the Python backend requires.
    """

    def __init__(self, poll_s: float = 0.1) -> None:
        self.queue: queue.SimpleQueue[tuple[_TritonSink, Any | None, int] | None] = (
            queue.SimpleQueue()
        )
        self.live: dict[int, _TritonSink] = {}
        self.live_lock = threading.Lock()
        self.poll_s = poll_s
        self.thread = threading.Thread(target=self._run, name="genwire-outbox", daemon=True)
        self.thread.start()

    def register(self, sink: _TritonSink) -> None:
        """Watch a new request for cancellation until its final response."""
        with self.live_lock:
            self.live[id(sink)] = sink

    def put(self, sink: _TritonSink, response: Any, flags: int) -> None:
        self.queue.put((sink, response, flags))

    def _run(self) -> None:
        final = pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL
        next_poll = time.monotonic() + self.poll_s
        while True:
            try:
                item = self.queue.get(timeout=self.poll_s)
                if item is None:
                    self._drain(final)
                    return
                self._deliver(*item, final=final)
                # Drop every reference to the request at once: a live response sender keeps
                # the model instance alive, and an unload would wait for it forever.
                del item
            except queue.Empty:
                pass
            except Exception:  # this thread sends every final flag: it must never die
                log.exception("response delivery failed")
            if time.monotonic() >= next_poll:
                self._poll_cancelled()
                next_poll = time.monotonic() + self.poll_s

    def _drain(self, final: int) -> None:
        """Deliver what was queued before the stop marker: final flags among it."""
        while True:
            try:
                item = self.queue.get_nowait()
            except queue.Empty:
                return
            if item is not None:
                try:
                    self._deliver(*item, final=final)
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

    def _deliver(self, sink: _TritonSink, response: Any | None, flags: int, final: int) -> None:
        sender = sink.sender
        if sender is None:
            return
        try:
            if response is None:
                sender.send(flags=flags)
            else:
                sender.send(response, flags=flags)
        except Exception:
            sink.cancelled = True  # the stream is gone; the next check frees the slot
            log.debug("response not delivered", exc_info=True)
            if flags & final and response is not None:
                # Triton keeps a request in flight until it sees the final flag.
                try:
                    sender.send(flags=final)
                except Exception:
                    log.debug("request already completed", exc_info=True)
        if flags & final:
            sink.release()
            with self.live_lock:
                self.live.pop(id(sink), None)

    def close(self) -> None:
        self.queue.put(None)
        self.thread.join(timeout=5.0)


class _TritonSink:
    """Turns updates into responses for one request; the outbox sends them."""

    def __init__(self, request: Any, outbox: _Outbox) -> None:
        self.outbox = outbox
        self.sender = request.get_response_sender()
        self.request = request
        self.cancelled = False
        self.closed = False
        self._lock = threading.Lock()
        outbox.register(self)

    def release(self) -> None:
        """Forget the request and its sender once the final flag went out."""
        self.sender = None
        self.request = None

    def _tensors(self, update: Update) -> list[Any]:
        return [
            pb_utils.Tensor("token_ids", np.asarray(update.token_ids, dtype=np.int32)),
            pb_utils.Tensor("logprobs", np.asarray(update.logprobs, dtype=np.float32)),
            pb_utils.Tensor("finished", np.asarray([update.finished], dtype=np.bool_)),
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

    def send(self, update: Update) -> None:
        with self._lock:
            if self.closed:
                return
            flags = pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL if update.finished else 0
            self.closed = update.finished
            if self.cancelled:
                # Nobody listens any more: only complete the request (a final flag alone).
                if update.finished:
                    self.outbox.put(self, None, flags)
                return
            response = pb_utils.InferenceResponse(output_tensors=self._tensors(update))
            self.outbox.put(self, response, flags)

    def fail(self, message: str) -> None:
        with self._lock:
            if self.closed:
                return
            self.closed = True
            self.outbox.put(
                self,
                pb_utils.InferenceResponse(error=pb_utils.TritonError(message)),
                pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL,
            )

    def is_cancelled(self) -> bool:
        # Set by the outbox thread (a failed send or its periodic check): no IPC here.
        return self.cancelled or self.sender is None


class TritonPythonModel:
    """genwire's generative model: continuous batching, streaming, cancellation."""

    def initialize(self, args: dict[str, str]) -> None:
        config = json.loads(args["model_config"])
        params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        version_dir = Path(args["model_repository"]) / args["model_version"]
        self.manifest = json.loads((version_dir / "manifest.json").read_text(encoding="utf-8"))
        self.runner = create_runner(
            version_dir,
            threads=int(params.get("intra_op_threads", "2")),
            prefer=params.get("backend", "auto"),
            allow_spinning=params.get("ort_allow_spinning", "0") == "1",
        )
        shape = self.manifest["shape"]
        self.vocab_size = int(shape["vocab_size"])
        self.context = int(self.manifest["context_length"])
        self.scheduler = Scheduler(
            self.runner,
            context=self.context,
            eos_ids=tuple(self.manifest["eos_token_ids"]),
            max_batch=int(params.get("max_batch", "32")),
            stream_interval=int(params.get("stream_interval", "1")),
            cancel_check_interval=int(params.get("cancel_check_interval", "4")),
            chunk_batch=int(params.get("stream_chunk_batch", "16")),
        )
        self.outbox = _Outbox()
        self.scheduler.start()
        log.info(
            "genwire model %s version %s ready on %s",
            args["model_name"],
            args["model_version"],
            self.runner.backend,
        )

    def _decode(self, request: Any, sink: _TritonSink) -> Request:
        ids = pb_utils.get_input_tensor_by_name(request, "input_ids")
        if ids is None:
            raise RequestError("required input 'input_ids' is missing")
        stop = pb_utils.get_input_tensor_by_name(request, "stop_token_ids")
        stop_ids: frozenset[int] = frozenset()
        if stop is not None:
            stop_ids = frozenset(int(t) for t in stop.as_numpy().reshape(-1))
        return Request(
            prompt=ids.as_numpy().reshape(-1).astype(np.int64),
            max_tokens=int(_scalar(request, "max_tokens")),
            temperature=float(_scalar(request, "temperature", 1.0)),
            top_p=float(_scalar(request, "top_p", 1.0)),
            top_k=int(_scalar(request, "top_k", 0)),
            seed=int(_scalar(request, "seed", -1)),
            stop_ids=stop_ids,
            stream=bool(_scalar(request, "stream", True)),
            sink=sink,
        )

    def execute(self, requests: list[Any]) -> None:
        for request in requests:
            sink = _TritonSink(request, self.outbox)
            try:
                decoded = self._decode(request, sink)
                validate(decoded, self.vocab_size, self.context)
            except (RequestError, ValueError, TypeError) as exc:
                sink.fail(f"genwire-gpt: {exc}")
                continue
            self.scheduler.submit(decoded)

    def finalize(self) -> None:
        self.scheduler.stop()  # sends the final "cancelled" responses through the outbox
        self.outbox.close()
