"""Inference: a version that is not loaded is answered at once (model_not_loaded); shadow
copies run beside their request and carry arm/shadow to their chunks."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping

import pytest
from genwire_inference.handlers import Inference
from stages.test_inference import ErrorBackend, FakeBackend, FakeStream, _collect, _req

from genwire.errors import Rejection, RetryableError
from genwire.events import PreparedRequest
from genwire.request import ErrorCode


@pytest.mark.parametrize("state", ["UNAVAILABLE", "", "UNLOADING"])
async def test_a_version_that_is_not_loaded_is_answered_at_once(state: str) -> None:
    asked: list[tuple[str, str]] = []

    async def model_state(model: str, version: str) -> str | None:
        asked.append((model, version))
        return state

    backend = ErrorBackend([False, False], server_ready=True)
    inf = Inference(backend, triton_wait_s=30.0, model_state=model_state)
    request = _req().model_copy(update={"model_version": "2"})
    with pytest.raises(Rejection) as caught:
        await asyncio.wait_for(_collect(inf, request), 5.0)
    assert caught.value.code == ErrorCode.MODEL_NOT_LOADED
    assert "genwire model load genwire-gpt:2" in caught.value.message
    assert asked == [("genwire-gpt", "2")]
    assert backend.waited == [0.0]  # never waited for it


async def test_a_loading_version_is_waited_for() -> None:
    async def model_state(model: str, version: str) -> str | None:
        return "LOADING"

    backend = ErrorBackend([False, True], server_ready=True)
    inf = Inference(backend, triton_wait_s=0.01, model_state=model_state)
    with pytest.raises(RetryableError):
        await _collect(inf, _req())


async def test_shadow_copy_runs_beside_its_request() -> None:
    backend = FakeBackend(n=6, delay_s=0.01)
    inf = Inference(backend, chunk_max_tokens=1)
    primary = _req("same").model_copy(update={"arm": "champion", "model_version": "1"})
    shadow = _req("same").model_copy(update={"arm": "shadow", "shadow": True, "model_version": "2"})
    a, b = await asyncio.gather(_collect(inf, primary), _collect(inf, shadow))
    assert a and b  # neither was dropped as a duplicate of the other
    assert all(c.arm == "champion" and not c.shadow for c in a)
    assert all(c.arm == "shadow" and c.shadow and c.model_version == "2" for c in b)
    assert a[-1].final and b[-1].final
    # The caller's request streams; its shadow copy is one final chunk from one model response
    # (postprocess reads nothing else of it), with every token.
    assert len(a) > 1 and len(b) == 1 and b[0].output_ids == a[-1].output_ids
    assert sorted(backend.stream_flags) == [False, True]


class UnavailableBackend(ErrorBackend):
    """Triton refusing the call with UNAVAILABLE (a version it lists but does not serve)."""

    async def failure(self, request: PreparedRequest) -> Exception:
        return RetryableError("triton: UNAVAILABLE: not at ready state", dependency="triton")


async def test_an_unloaded_version_refused_with_unavailable_is_not_waited_for() -> None:
    async def model_state(model: str, version: str) -> str | None:
        return "UNAVAILABLE"

    backend = UnavailableBackend([False], server_ready=True)
    inf = Inference(backend, triton_wait_s=30.0, model_state=model_state)
    with pytest.raises(Rejection) as caught:
        await asyncio.wait_for(_collect(inf, _req()), 5.0)
    assert caught.value.code == ErrorCode.MODEL_NOT_LOADED
    assert backend.waited == []


async def test_triton_down_is_still_waited_out() -> None:
    async def model_state(model: str, version: str) -> str | None:
        return None  # the index cannot be read

    backend = UnavailableBackend([False], server_ready=False)
    inf = Inference(backend, triton_wait_s=0.01, model_state=model_state)
    with pytest.raises(RetryableError):
        await _collect(inf, _req())
    assert backend.waited  # it waited for the model


async def test_the_generate_span_names_version_and_arm() -> None:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from genwire.policy import ARM_ATTRIBUTE, SHADOW_ATTRIBUTE
    from genwire.telemetry import semconv as sc

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    inf = Inference(FakeBackend(n=3), tracer=provider.get_tracer("t"))
    request = _req().model_copy(update={"model_version": "2", "arm": "challenger"})
    await _collect(inf, request)
    (span,) = [s for s in exporter.get_finished_spans() if s.name == sc.SPAN_TRITON_GENERATE]
    assert span.attributes is not None
    assert span.attributes[sc.MODEL_VERSION] == "2"
    assert span.attributes[ARM_ATTRIBUTE] == "challenger"
    assert span.attributes[SHADOW_ATTRIBUTE] is False


class RestartingBackend(FakeBackend):
    """Serves, then Triton restarts: refused with UNAVAILABLE until the stack loads it again."""

    def __init__(self) -> None:
        super().__init__(n=3)
        self.restarted = False

    async def open(
        self,
        request: PreparedRequest,
        headers: Mapping[str, str],
        *,
        stream: bool = True,
        min_gap_s: float = 0.0,
        hold_first: bool = False,
    ) -> FakeStream:
        if self.restarted:
            raise RetryableError("triton: UNAVAILABLE: not at ready state", dependency="triton")
        return await super().open(
            request, headers, stream=stream, min_gap_s=min_gap_s, hold_first=hold_first
        )

    async def wait_ready(self, model: str, version: str, timeout_s: float) -> bool:
        self.waited.append(timeout_s)
        return False


async def test_a_version_served_here_and_lost_by_a_triton_restart_is_waited_for() -> None:
    """After a restart Triton lists the version with no state until it is loaded again: a
    version this process served is waited for (retried), one it never served is not."""

    async def model_state(model: str, version: str) -> str | None:
        return ""  # listed, never loaded since Triton started

    backend = RestartingBackend()
    inf = Inference(backend, triton_wait_s=0.01, model_state=model_state)
    served = _req("a").model_copy(update={"model_version": "2"})
    assert (await _collect(inf, served))[-1].final
    backend.restarted = True
    with pytest.raises(RetryableError):
        await _collect(inf, _req("b").model_copy(update={"model_version": "2"}))
    assert backend.waited == [0.01]
    with pytest.raises(Rejection) as caught:  # never served here: nobody will load it
        await _collect(inf, _req("c").model_copy(update={"model_version": "3"}))
    assert caught.value.code == ErrorCode.MODEL_NOT_LOADED
