"""The gateway's gRPC API: ``Generate`` (unary) and ``GenerateStream`` (server streaming)."""

from __future__ import annotations

import asyncio
import time

import grpc

from genwire.apikeys import auth_metadata
from genwire.gateway_tls import grpc_channel
from genwire.gateway_tls import resolve as resolve_tls
from genwire.proto.v1 import generation_pb2 as pb
from genwire.proto.v1 import generation_pb2_grpc as pb_grpc
from genwire_bench.drivers.base import Driver, RequestFailed, TraceContext
from genwire_bench.records import MODEL_MS, BenchRequest, RequestRecord


def to_proto(req: BenchRequest, request_id: str, model: str) -> pb.GenerateRequest:
    """The same prompt and sampling as every other target."""
    s = req.sampling
    return pb.GenerateRequest(
        request_id=request_id,
        prompt=req.prompt,
        max_tokens=s.max_tokens,
        temperature=s.temperature,
        top_p=s.top_p,
        top_k=s.top_k,
        seed=s.seed,
        model=model,
    )


def model_ms(timings: pb.Timings) -> float | None:
    """The model's own time for the request (its queue and compute), when the reply has it."""
    if not (timings.HasField("triton_queue") and timings.HasField("triton_compute")):
        return None
    ns = timings.triton_queue.ToNanoseconds() + timings.triton_compute.ToNanoseconds()
    return ns / 1e6


class GatewayDriver(Driver):
    """Calls the gateway over one shared gRPC channel, with ``traceparent`` in the metadata."""

    def __init__(self, address: str, model: str, *, stream: bool, timeout_s: float = 60.0) -> None:
        super().__init__(timeout_s)
        self.name = "grpc-stream" if stream else "grpc"
        self.streaming = stream
        self.baseline = "triton-stream" if stream else "triton"
        self._address = address
        self._model = model
        self._channel: grpc.aio.Channel | None = None
        self._stub: pb_grpc.GenerationServiceStub | None = None

    async def start(self) -> None:
        """Open the channel (TLS when the gateway serves it: genwire.gateway_tls) and wait
        (briefly) until it is connected."""
        self._channel = grpc_channel(self._address, resolve_tls())
        try:
            async with asyncio.timeout(10):
                await self._channel.channel_ready()
        except TimeoutError:
            raise RuntimeError(f"gateway gRPC at {self._address} is not reachable") from None
        self._stub = pb_grpc.GenerationServiceStub(self._channel)  # type: ignore[no-untyped-call]

    async def close(self) -> None:
        """Close the channel."""
        if self._channel is not None:
            await self._channel.close()

    async def _send(self, req: BenchRequest, record: RequestRecord, trace: TraceContext) -> None:
        assert self._stub is not None, "start() first"
        message = to_proto(req, record.request_id, self._model)
        metadata = (*auth_metadata(), ("traceparent", trace.traceparent))
        try:
            if self.streaming:
                await self._stream(message, metadata, record)
            else:
                response = await self._stub.Generate(message, metadata=metadata)
                record.end = time.perf_counter()
                record.output_tokens = response.usage.completion_tokens
                record.prompt_tokens = response.usage.prompt_tokens
                record.trace_id = response.trace_id or record.trace_id
                at_model = model_ms(response.timings)
                if at_model is not None:
                    record.extra[MODEL_MS] = at_model
        except grpc.aio.AioRpcError as exc:
            raise RequestFailed(exc.code().name, str(exc.details())) from None

    async def _stream(
        self,
        message: pb.GenerateRequest,
        metadata: tuple[tuple[str, str], ...],
        record: RequestRecord,
    ) -> None:
        assert self._stub is not None
        call = self._stub.GenerateStream(message, metadata=metadata)
        async for chunk in call:
            now = time.perf_counter()
            record.trace_id = chunk.trace_id or record.trace_id
            if chunk.text:
                record.chunks += 1
                if record.first_token is None:
                    record.first_token = now
            if chunk.final:
                record.end = now
                record.output_tokens = chunk.usage.completion_tokens
                record.prompt_tokens = chunk.usage.prompt_tokens
                at_model = model_ms(chunk.timings)  # (None when the message has none)
                if at_model is not None:
                    record.extra[MODEL_MS] = at_model
                if record.first_token is None:
                    record.first_token = now
                return
        raise RequestFailed("incomplete", "the stream ended without a final message")
