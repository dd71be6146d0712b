"""The Triton model's outbox (``runtime/triton_model.py``) off the stack: who sends what.

The module imports Triton's stub-only ``triton_python_backend_utils``; a stand-in takes its
place here, and the module is loaded from a built version's folder as Triton loads it (its
``genwire_runtime`` beside it).
"""

from __future__ import annotations

import importlib.util
import logging
import re
import sys
import threading
import time
import types
from collections.abc import Iterator
from typing import Any

import pytest
from genwire_model.repository import ModelVersion


@pytest.fixture
def model_module(tiny_version: ModelVersion, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    monkeypatch.setitem(
        sys.modules, "triton_python_backend_utils", types.ModuleType("triton_python_backend_utils")
    )
    saved_path = list(sys.path)
    spec = importlib.util.spec_from_file_location(
        "genwire_test_triton_model", tiny_version.path / "model.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    try:
        yield module
    finally:
        sys.path[:] = saved_path
        for name in [n for n in sys.modules if n.split(".")[0] == "genwire_runtime"]:
            del sys.modules[name]  # its runtime copy, imported from the version's folder


class Sink:
    """What the outbox needs of a ``_TritonSink``: an id and ``deliver``; records the thread."""

    def __init__(self, request_id: str) -> None:
        self.request_id = request_id
        self.sender = None
        self.delivered: list[tuple[int, Any]] = []
        self.done = threading.Event()

    def deliver(self, update: Any) -> None:
        self.delivered.append((threading.get_ident(), update))
        if update.last:
            self.done.set()


def update(module: Any, *, last: bool) -> Any:
    return module.Update(
        token_ids=[7],
        logprobs=[-0.5],
        finished=last,
        finish_reason="length" if last else "",
        prompt_tokens=2,
        completion_tokens=1,
        mean_logprob=-0.5,
        queue_ms=0.0,
        compute_ms=0.0,
        last=last,
    )


def test_inline_first_responses_go_out_in_the_callers_thread_and_others_in_the_outbox(
    model_module: Any,
) -> None:
    outbox = model_module._Outbox(poll_s=10.0)
    try:
        inline, urgent, queued = Sink("a"), Sink("b"), Sink("c")
        for sink in (inline, urgent, queued):
            outbox.register(sink)
        me = threading.get_ident()

        outbox.publish([(inline, update(model_module, last=False))], urgent=True, inline=True)
        assert [thread for thread, _ in inline.delivered] == [me]  # sent before publish returned
        outbox.publish([(inline, update(model_module, last=True))])
        outbox.publish([(urgent, update(model_module, last=True))], urgent=True)
        outbox.publish([(queued, update(model_module, last=True))])
        for sink in (inline, urgent, queued):
            assert sink.done.wait(10.0)
        assert inline.delivered[1][0] != me  # the outbox thread
        assert urgent.delivered[0][0] != me and queued.delivered[0][0] != me

        outbox.register(last := Sink("d"))
        outbox.publish([(last, update(model_module, last=True))], urgent=True, inline=True)
        assert last.delivered[0][0] == me
        deadline = time.monotonic() + 10.0
        while outbox.live and time.monotonic() < deadline:
            time.sleep(0.01)
        assert not outbox.live and not outbox.by_request_id  # every final forgotten
    finally:
        outbox.close()


def test_execute_hands_requests_to_the_loop_with_the_bounded_wait(model_module: Any) -> None:
    """``execute`` submits the last request of its batch with ``_HANDOFF_WAIT_S`` (short, so a
    stalled loop cannot hold Triton's request intake for long) and the others without a wait
    (the loop then takes the batch together)."""
    calls: list[float] = []

    class Scheduler:
        def submit(self, request: Any, wait_s: float = 0.0) -> None:
            calls.append(wait_s)

    instance = model_module.TritonPythonModel.__new__(model_module.TritonPythonModel)
    instance.scheduler = Scheduler()
    instance.constraints = None
    instance.vocab_size, instance.context = 512, 64
    instance.outbox = model_module._Outbox(poll_s=10.0)
    request = types.SimpleNamespace(request_id=lambda: "r", parameters=lambda: "{}")
    decoded = types.SimpleNamespace(guided="", stop=())
    try:
        instance._decode = lambda req, sink, params: decoded
        request.get_response_sender = lambda: None
        model_module.validate = lambda *args: None
        instance.execute([request])
        assert calls == [model_module._HANDOFF_WAIT_S]
        calls.clear()
        instance.execute([request, request, request])
    finally:
        instance.outbox.close()
    assert calls == [0.0, 0.0, model_module._HANDOFF_WAIT_S]
    assert 0 < model_module._HANDOFF_WAIT_S <= 0.005


def test_the_models_and_the_runtimes_logs_go_to_tritons_log(model_module: Any) -> None:
    """Records of ``genwire.model`` and ``genwire_runtime.*`` reach ``pb_utils.Logger`` at
    their level, prefixed with the instance's model and version (the stub configures no
    logging of its own: INFO went nowhere); DEBUG stays out."""
    lines: list[tuple[str, str]] = []
    model_module.pb_utils.Logger = types.SimpleNamespace(
        **{
            f"log_{level}": lambda message, level=level: lines.append((level, message))
            for level in ("info", "warn", "error")
        }
    )
    loggers = [logging.getLogger(name) for name in model_module._LOGGERS]
    saved = [(lg, list(lg.handlers), lg.level) for lg in loggers]
    try:
        model_module._log_to_triton("m_0_0 version 3")
        model_module._log_to_triton("m_0_0 version 3")  # again: still one line per record
        logging.getLogger("genwire_runtime.scheduler").info("sampler: %s", "selection")
        logging.getLogger("genwire_runtime.runners").warning("fell back")
        logging.getLogger("genwire_runtime.runners").debug("noise")
        try:
            raise ValueError("boom")
        except ValueError:
            logging.getLogger("genwire.model").exception("response delivery failed")
    finally:
        for lg, handlers, level in saved:
            lg.handlers[:] = handlers
            lg.setLevel(level)
    assert [(level, re.sub(r":\d+:", ":N:", line)) for level, line in lines[:2]] == [
        ("info", "m_0_0 version 3: genwire_runtime.scheduler:N: sampler: selection"),
        ("warn", "m_0_0 version 3: genwire_runtime.runners:N: fell back"),
    ]
    level, message = lines[2]
    assert level == "error" and re.match(r"m_0_0 version 3: genwire\.model:\d+: response", message)
    assert "ValueError: boom" in message  # the traceback comes along
    assert len(lines) == 3


def test_a_percent_sign_in_the_instance_name_is_logged_as_it_is(model_module: Any) -> None:
    """Model names may hold ``%`` (Triton allows it): the prefix is text, not a format."""
    lines: list[str] = []
    model_module.pb_utils.Logger = types.SimpleNamespace(
        log_info=lines.append, log_warn=lines.append, log_error=lines.append
    )
    loggers = [logging.getLogger(name) for name in model_module._LOGGERS]
    saved = [(lg, list(lg.handlers), lg.level) for lg in loggers]
    try:
        model_module._log_to_triton("m%d_0 %(name)s version 1")
        logging.getLogger("genwire.model").info("ready")
    finally:
        for lg, handlers, level in saved:
            lg.handlers[:] = handlers
            lg.setLevel(level)
    assert len(lines) == 1
    assert re.fullmatch(r"m%d_0 %\(name\)s version 1: genwire\.model:\d+: ready", lines[0])


def test_a_request_the_model_cannot_take_is_answered_at_once(model_module: Any) -> None:
    """A request no sink could be made for (here its id cannot be read) gets one final error
    response on its own sender, a model failure (``request failed:``), instead of leaving its
    caller waiting out its deadline; the batch's other requests still run."""
    sent: list[tuple[Any, int]] = []
    submitted: list[Any] = []

    class Sender:
        def send(self, response: Any = None, flags: int = 0) -> None:
            sent.append((response, flags))

    class Scheduler:
        def submit(self, request: Any, wait_s: float = 0.0) -> None:
            submitted.append(request)

    def unreadable() -> str:
        raise RuntimeError("no id")

    pb = model_module.pb_utils
    pb.TRITONSERVER_RESPONSE_COMPLETE_FINAL = 1
    pb.TritonError = lambda message: ("error", message)
    pb.InferenceResponse = lambda error=None, output_tensors=None: error
    instance = model_module.TritonPythonModel.__new__(model_module.TritonPythonModel)
    instance.scheduler = Scheduler()
    instance.constraints = None
    instance.vocab_size, instance.context = 512, 64
    instance.outbox = model_module._Outbox(poll_s=10.0)
    broken = types.SimpleNamespace(
        request_id=unreadable, parameters=lambda: "{}", get_response_sender=Sender
    )
    good = types.SimpleNamespace(
        request_id=lambda: "r", parameters=lambda: "{}", get_response_sender=Sender
    )
    try:
        instance._decode = lambda req, sink, params: types.SimpleNamespace(guided="", stop=())
        model_module.validate = lambda *args: None
        instance.execute([broken, good])
    finally:
        instance.outbox.close()
    assert sent == [(("error", "request failed: RuntimeError: no id"), 1)]
    assert len(submitted) == 1
