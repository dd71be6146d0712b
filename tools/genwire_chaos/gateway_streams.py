"""The gateway-kill scenario's streams: one gRPC GenerateStream or HTTP SSE call each, named
(an idempotency key) or not, and what became of it (:mod:`genwire_chaos.gateway_kill`)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from dataclasses import dataclass, field

from genwire_stack.catalog import GATEWAY_GRPC_PORT, SERVICE_PORTS

from genwire.gateway_tls import grpc_channel, resolve

PROMPT = "Once upon a time"
LABEL = "chaos_stream"
"""Metadata key carrying each stream's label to its result."""


@dataclass
class Stream:
    """One stream and what became of it."""

    transport: str
    named: bool
    seed: int
    phase: str
    """``streaming`` (generating at the kill) or ``queued`` (behind the backlog)."""
    label: str = field(default_factory=lambda: uuid.uuid4().hex[:16])
    request_id: str = ""
    first_chunk_at: float | None = None
    finished_before_kill: bool = False
    ended: str = ""
    chunks: int = 0
    started: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def kind(self) -> str:
        """``queued grpc/anonymous`` and the like."""
        return f"{self.phase} {self.transport}/{'named' if self.named else 'anonymous'}"


async def _grpc_stream(stream: Stream, target: str, max_tokens: int, timeout_s: float) -> None:
    import grpc

    from genwire.apikeys import auth_metadata
    from genwire.proto.v1 import generation_pb2 as pb
    from genwire.proto.v1 import generation_pb2_grpc as pb_grpc

    metadata: tuple[tuple[str, str], ...] = auth_metadata()
    if stream.named:
        stream.request_id = f"chaos-gw-{uuid.uuid4().hex[:12]}"
        metadata = (*metadata, ("idempotency-key", stream.request_id))
    async with grpc_channel(target, resolve()) as channel:
        stub = pb_grpc.GenerationServiceStub(channel)  # type: ignore[no-untyped-call]
        request = pb.GenerateRequest(
            prompt=PROMPT,
            max_tokens=max_tokens,
            temperature=1.0,
            seed=stream.seed,
            metadata={LABEL: stream.label},
        )
        call = stub.GenerateStream(request, timeout=timeout_s, metadata=metadata)
        try:
            async for message in call:
                stream.chunks += 1
                if not stream.request_id:
                    stream.request_id = message.request_id
                if stream.first_chunk_at is None:
                    stream.first_chunk_at = time.monotonic()
                    stream.started.set()
                if message.final:
                    stream.finished_before_kill = True
                    stream.ended = f"final ({message.finish_reason})"
                    return
            stream.ended = "ended without a final chunk"
        except grpc.aio.AioRpcError as exc:
            stream.ended = f"gRPC {exc.code().name}"
        finally:
            stream.started.set()
            call.cancel()


async def _http_stream(stream: Stream, base: str, max_tokens: int, timeout_s: float) -> None:
    import httpx

    from genwire.apikeys import auth_headers

    headers = auth_headers()
    if stream.named:
        stream.request_id = f"chaos-gw-{uuid.uuid4().hex[:12]}"
        headers["Idempotency-Key"] = stream.request_id
    body = {
        "prompt": PROMPT,
        "max_tokens": max_tokens,
        "temperature": 1.0,
        "seed": stream.seed,
        "stream": True,
        "metadata": {LABEL: stream.label},
    }
    try:
        async with (
            httpx.AsyncClient(base_url=base, timeout=timeout_s, trust_env=False) as client,
            client.stream("POST", "/v1/completions", json=body, headers=headers) as response,
        ):
            stream.request_id = stream.request_id or response.headers.get("x-request-id", "")
            if response.status_code != 200:
                stream.ended = f"HTTP {response.status_code}"
                return
            async for line in response.aiter_lines():
                if not line.startswith("data: "):
                    continue
                data = line[len("data: ") :]
                if data == "[DONE]":
                    stream.finished_before_kill = True
                    stream.ended = "final ([DONE])"
                    return
                stream.chunks += 1
                if stream.first_chunk_at is None:
                    stream.first_chunk_at = time.monotonic()
                    stream.started.set()
                with contextlib.suppress(ValueError, KeyError, IndexError, TypeError):
                    if json.loads(data)["choices"][0].get("finish_reason"):
                        stream.finished_before_kill = True
            stream.ended = "ended without [DONE]"
    except httpx.HTTPError as exc:
        stream.ended = f"HTTP error {type(exc).__name__}"
    finally:
        stream.started.set()


def open_streams(streams: list[Stream], max_tokens: int) -> list[asyncio.Task[None]]:
    grpc_target = f"127.0.0.1:{GATEWAY_GRPC_PORT}"
    http_base = f"http://127.0.0.1:{SERVICE_PORTS['gateway']}"
    timeout_s = 120.0
    return [
        asyncio.create_task(
            _grpc_stream(s, grpc_target, max_tokens, timeout_s)
            if s.transport == "grpc"
            else _http_stream(s, http_base, max_tokens, timeout_s)
        )
        for s in streams
    ]


def make_streams(phase: str, per_kind: int, seeds: list[int]) -> list[Stream]:
    return [
        Stream(transport, named, seeds[i % len(seeds)], phase)
        for transport in ("grpc", "http")
        for named in (False, True)
        for i in range(per_kind)
    ]
