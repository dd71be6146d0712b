"""An asyncio Python client of the gateway's gRPC API.

from genwire_gateway.client import GenwireClient

async with GenwireClient("127.0.0.1:50051") as client:
    result = await client.generate("Once upon a time", max_tokens=32, seed=7)
    print(result.text)
    async for chunk in client.stream("Once upon a time"):
        print(chunk.text, end="", flush=True)
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Literal

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from genwire.apikeys import auth_metadata
from genwire.gateway_tls import GatewayTLS, grpc_channel
from genwire.gateway_tls import resolve as resolve_tls
from genwire.proto.v1 import generation_pb2 as pb
from genwire.proto.v1 import generation_pb2_grpc as pb_grpc

DEFAULT_TARGET = "127.0.0.1:50051"


class GenwireClientError(Exception):
    """A failed call: the gRPC status name (e.g. ``INVALID_ARGUMENT``) and the gateway's message."""

    def __init__(self, status: str, message: str) -> None:
        super().__init__(f"{status}: {message}")
        self.status = status
        self.message = message


@dataclass(frozen=True)
class Generation:
    """A finished generation."""

    request_id: str
    text: str
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int
    model: str
    model_version: str
    trace_id: str


@dataclass(frozen=True)
class StreamChunk:
    """A piece of streamed text; the last has ``final`` set (and the token counts)."""

    request_id: str
    index: int
    text: str
    final: bool
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int
    trace_id: str
    model: str = ""
    """The model, as ``Generation.model`` (empty from a gateway older than the field)."""


@dataclass(frozen=True)
class ResultInfo:
    """What ``get_result`` found: ``status`` is pending, done, failed or not_found."""

    status: str
    result: Generation | None = None
    error_code: str = ""
    error_message: str = ""


_STATUS = {
    pb.GetResultResponse.STATUS_PENDING: "pending",
    pb.GetResultResponse.STATUS_DONE: "done",
    pb.GetResultResponse.STATUS_FAILED: "failed",
    pb.GetResultResponse.STATUS_NOT_FOUND: "not_found",
}


def _generation(r: pb.GenerateResponse) -> Generation:
    return Generation(
        request_id=r.request_id,
        text=r.text,
        finish_reason=r.finish_reason,
        prompt_tokens=r.usage.prompt_tokens,
        completion_tokens=r.usage.completion_tokens,
        model=r.model,
        model_version=r.model_version,
        trace_id=r.trace_id,
    )


def _error(exc: grpc.aio.AioRpcError) -> GenwireClientError:
    return GenwireClientError(exc.code().name, exc.details() or "")


def build_request(
    prompt: str | None = None,
    *,
    messages: Sequence[Mapping[str, str]] | None = None,
    max_tokens: int | None = None,
    temperature: float | None = None,
    top_p: float | None = None,
    top_k: int | None = None,
    seed: int | None = None,
    stop: Sequence[str] = (),
    model: str = "",
    metadata: Mapping[str, str] | None = None,
    request_id: str = "",
    ignore_eos: bool | None = None,
) -> pb.GenerateRequest:
    """A ``GenerateRequest``; unset sampling fields take the pipeline's defaults."""
    optional: dict[str, Any] = {
        k: v
        for k, v in (
            ("max_tokens", max_tokens),
            ("temperature", temperature),
            ("top_p", top_p),
            ("top_k", top_k),
            ("seed", seed),
            ("ignore_eos", ignore_eos),
        )
        if v is not None
    }
    return pb.GenerateRequest(
        request_id=request_id,
        prompt=prompt or "",
        messages=[pb.ChatMessage(role=m["role"], content=m["content"]) for m in messages or ()],
        stop=list(stop),
        model=model,
        metadata=dict(metadata or {}),
        **optional,
    )


class GenwireClient:
    """Calls genwire.v1.GenerationService; use as ``async with`` or call ``close()``."""

    def __init__(
        self,
        target: str = DEFAULT_TARGET,
        *,
        timeout_s: float | None = 60.0,
        channel: grpc.aio.Channel | None = None,
        api_key: str | None = None,
        tls: GatewayTLS | Literal[False] | None = None,
    ) -> None:
        """``api_key``: default ``GENWIRE_API_KEY``, else the key ``genwire up`` saved.
        ``tls``: default from the ``GENWIRE_GATEWAY_*`` client settings, else the secure stack
        of ``GENWIRE_HOME`` (genwire.gateway_tls); ``False``: plaintext."""
        self._auth = auth_metadata(api_key)
        if channel is None:
            chosen = resolve_tls() if tls is None else (tls or None)
            channel = grpc_channel(target, chosen)
        self._channel = channel
        self._stub = pb_grpc.GenerationServiceStub(self._channel)  # type: ignore[no-untyped-call]
        self._health = health_pb2_grpc.HealthStub(self._channel)
        self._timeout_s = timeout_s

    async def __aenter__(self) -> GenwireClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        """Close the channel."""
        await self._channel.close()

    def _timeout(self, timeout_s: float | None) -> float | None:
        return self._timeout_s if timeout_s is None else timeout_s

    def _metadata(self, traceparent: str | None = None) -> tuple[tuple[str, str], ...]:
        return self._auth + ((("traceparent", traceparent),) if traceparent else ())

    async def generate(
        self,
        prompt: str | None = None,
        *,
        timeout_s: float | None = None,
        traceparent: str | None = None,
        **params: Any,
    ) -> Generation:
        """Generate and wait for the whole text. ``params``: see ``build_request``."""
        request = build_request(prompt, **params)
        try:
            response = await self._stub.Generate(
                request, timeout=self._timeout(timeout_s), metadata=self._metadata(traceparent)
            )
        except grpc.aio.AioRpcError as exc:
            raise _error(exc) from None
        return _generation(response)

    async def stream(
        self,
        prompt: str | None = None,
        *,
        timeout_s: float | None = None,
        traceparent: str | None = None,
        **params: Any,
    ) -> AsyncIterator[StreamChunk]:
        """Generate and yield text chunks as they are produced; the last one is final."""
        request = build_request(prompt, **params)
        call = self._stub.GenerateStream(
            request, timeout=self._timeout(timeout_s), metadata=self._metadata(traceparent)
        )
        try:
            async for m in call:
                yield StreamChunk(
                    request_id=m.request_id,
                    index=m.index,
                    text=m.text,
                    final=m.final,
                    finish_reason=m.finish_reason,
                    prompt_tokens=m.usage.prompt_tokens,
                    completion_tokens=m.usage.completion_tokens,
                    trace_id=m.trace_id,
                    model=m.model,
                )
        except grpc.aio.AioRpcError as exc:
            raise _error(exc) from None
        finally:
            call.cancel()  # no-op once finished; stops the generation if the caller broke off

    async def submit(
        self, prompt: str | None = None, *, timeout_s: float | None = None, **params: Any
    ) -> str:
        """Queue a request; returns its id at once (fetch the result with ``get_result``)."""
        try:
            response = await self._stub.Submit(
                build_request(prompt, **params),
                timeout=self._timeout(timeout_s),
                metadata=self._metadata(),
            )
        except grpc.aio.AioRpcError as exc:
            raise _error(exc) from None
        return str(response.request_id)

    async def get_result(self, request_id: str, *, wait_s: float = 0.0) -> ResultInfo:
        """The state of a request; waits up to ``wait_s`` for a pending one."""
        timeout = wait_s + 10.0
        try:
            r = await self._stub.GetResult(
                pb.GetResultRequest(request_id=request_id, wait_ms=int(wait_s * 1000)),
                timeout=timeout,
                metadata=self._metadata(),
            )
        except grpc.aio.AioRpcError as exc:
            raise _error(exc) from None
        status = _STATUS.get(r.status, "unknown")
        return ResultInfo(
            status=status,
            result=_generation(r.result) if status == "done" else None,
            error_code=r.error_code,
            error_message=r.error_message,
        )

    async def cancel(self, request_id: str, reason: str = "") -> bool:
        """Ask the pipeline to stop generating ``request_id``."""
        try:
            r = await self._stub.Cancel(
                pb.CancelRequest(request_id=request_id, reason=reason),
                timeout=10.0,
                metadata=self._metadata(),
            )
        except grpc.aio.AioRpcError as exc:
            raise _error(exc) from None
        return bool(r.accepted)

    async def healthy(self, timeout_s: float = 2.0) -> bool:
        """Whether the gateway reports SERVING on the standard gRPC health service."""
        try:
            r = await self._health.Check(health_pb2.HealthCheckRequest(), timeout=timeout_s)
        except grpc.aio.AioRpcError:
            return False
        return bool(r.status == health_pb2.HealthCheckResponse.SERVING)
