"""Test harness: gateways run in-process (uvicorn + gRPC) and a scripted stand-in pipeline.

The stand-in reads the gateway's requests from a private topic (so a running pipeline never
sees them) and answers on the real ``genwire.tokens`` / ``genwire.results`` topics, the reply
partition the request names (``genwire_reply_to``: the test gateways' private reply topic) and
the real Redis result key, exactly as postprocess does; request ids are unique per test, so
nothing else reacts to them.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import uvicorn
from aiokafka import AIOKafkaConsumer
from aiokafka.structs import RecordMetadata
from fastapi import FastAPI
from genwire_gateway.app import create_app
from genwire_gateway.config import GatewaySettings
from genwire_stack.health import free_port
from opentelemetry import context as otel_context
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from redis.asyncio import Redis

from genwire.events import (
    ControlEvent,
    ErrorInfo,
    GenerationResult,
    OutputLogprob,
    ResultChoice,
    Timings,
    TokenEvent,
    TopLogprob,
    Usage,
    dump,
)
from genwire.kafka import EventProducer
from genwire.request import GenerationRequest
from genwire.results import ResultStore
from genwire.service.http import uvicorn_config
from genwire.settings import CommonSettings
from genwire.telemetry import semconv as sc
from genwire.telemetry.propagation import extract
from genwire.topics import ReplyTo, Topic
from tests.stack.support import serve_in_task


@dataclass
class Script:
    """How the stand-in pipeline answers one request."""

    chunks: list[str] = field(default_factory=lambda: ["Hello", ",", " world"])
    chunk_delay_s: float = 0.0
    delay_s: float = 0.0
    """Wait this long before answering at all."""
    finish_reason: str = "length"
    error: ErrorInfo | None = None
    silent: bool = False
    """Answer nothing (a lost or very slow request)."""
    at_deadline: bool = False
    """Answer at the request's ``deadline_ms`` (as inference stops there), not before."""
    redis_only: bool = False
    """Store the result in Redis without publishing it (no reply reaches the gateway)."""
    duplicate_tokens: bool = False
    """Publish every token twice (an at-least-once redelivery)."""
    choices: int = 1
    """Answer this many choices (choice ``c``'s pieces are ``chunks`` suffixed with ``c``)."""
    logprobs: bool = False
    """Give each piece a logprob (one "token" per piece), as postprocess would."""


@dataclass
class Seen:
    """A request the stand-in received."""

    request: GenerationRequest
    headers: dict[str, bytes]

    @property
    def reply_to(self) -> ReplyTo | None:
        raw = self.headers.get(sc.HEADER_REPLY_TO)
        return ReplyTo.parse(raw) if raw is not None else None


class FakePipeline:
    """Answers requests from ``topic`` as preprocess → inference → postprocess would."""

    def __init__(self, settings: CommonSettings, topic: str) -> None:
        self.settings = settings
        self.topic = topic
        self.script: Callable[[GenerationRequest], Script] = lambda _: Script()
        self.seen: list[Seen] = []
        self.cancels: list[ControlEvent] = []
        self.finished: dict[str, float] = {}  # request id → loop time its result was published
        self.replied: dict[str, RecordMetadata] = {}  # request id → where its result reply went
        self._producer = EventProducer(settings.kafka_bootstrap_servers)
        self._redis: Redis[bytes] = Redis.from_url(settings.redis_url)
        self._results = ResultStore(self._redis, ttl_s=300)
        self._requests = AIOKafkaConsumer(
            topic,
            bootstrap_servers=settings.kafka_bootstrap_servers,
            group_id=None,
            auto_offset_reset="earliest",
            fetch_max_wait_ms=50,
        )
        self._control = AIOKafkaConsumer(
            Topic.CONTROL.value,
            bootstrap_servers=settings.kafka_bootstrap_servers,
            group_id=None,
            auto_offset_reset="latest",
            fetch_max_wait_ms=50,
        )
        self._tasks: list[asyncio.Task[None]] = []
        self._answers: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        await self._producer.start()
        await self._requests.start()
        await self._control.start()
        for tp in self._control.assignment():  # pin "latest" now, not at the first fetch
            await self._control.position(tp)
        self._tasks = [
            asyncio.create_task(self._serve()),
            asyncio.create_task(self._watch_control()),
        ]

    async def stop(self) -> None:
        everything = [*self._tasks, *self._answers]
        for task in everything:
            task.cancel()
        for task in everything:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        await self._requests.stop()
        await self._control.stop()
        await self._producer.stop()
        await self._redis.aclose()  # type: ignore[attr-defined]

    def requests_for(self, request_id: str) -> list[GenerationRequest]:
        return [s.request for s in self.seen if s.request.request_id == request_id]

    async def _watch_control(self) -> None:
        while True:
            batch = await self._control.getmany(timeout_ms=200)
            for records in batch.values():
                for record in records:
                    event = ControlEvent.model_validate_json(record.value or b"")
                    if event.action == "cancel":  # not the gateways' heartbeats
                        self.cancels.append(event)

    async def _serve(self) -> None:
        while True:
            batch = await self._requests.getmany(timeout_ms=200)
            for records in batch.values():
                for record in records:
                    request = GenerationRequest.model_validate_json(record.value or b"")
                    headers = {k: v for k, v in record.headers or ()}
                    self.seen.append(Seen(request, headers))
                    self._answers.add(asyncio.create_task(self._answer(request, headers)))
                    self._answers = {t for t in self._answers if not t.done()}

    async def _answer(self, request: GenerationRequest, headers: dict[str, bytes]) -> None:
        script = self.script(request)
        if script.silent:
            return
        # Continue the caller's trace, as the real stages do through the consumer wrapper.
        token = otel_context.attach(extract(list(headers.items())))
        raw = headers.get(sc.HEADER_REPLY_TO)
        reply = ReplyTo.parse(raw) if raw is not None else None
        try:
            await self._reply(request, script, reply)
        finally:
            otel_context.detach(token)

    async def _publish(self, event: TokenEvent | GenerationResult, reply: ReplyTo | None) -> None:
        """Like postprocess: the reply partition first, then the topic Kafka clients read."""
        if reply is not None:
            ack = await self._producer.send(
                reply.topic,
                dump(event),
                key=event.key(),
                headers=[(sc.HEADER_EVENT_TYPE, type(event).__name__.encode())],
                partition=reply.partition,
            )
            metadata = await ack
            if isinstance(event, GenerationResult):
                assert isinstance(metadata, RecordMetadata)
                self.replied[event.request_id] = metadata
        await self._producer.publish_and_wait(event)

    async def _reply(
        self, request: GenerationRequest, script: Script, reply: ReplyTo | None
    ) -> None:
        if script.delay_s:
            await asyncio.sleep(script.delay_s)
        if script.at_deadline:
            assert request.deadline_ms is not None
            await asyncio.sleep(max(0.0, request.deadline_ms / 1000 - time.time()))
        rid = request.request_id
        assert rid is not None
        pieces = [
            [chunk if c == 0 else f"{chunk}{c}" for chunk in script.chunks]
            for c in range(script.choices)
        ]
        if script.error is None and request.stream and not script.redis_only:
            for i in range(len(script.chunks)):
                for c in range(script.choices):
                    final = i == len(script.chunks) - 1
                    before = pieces[c][:i]
                    token = TokenEvent(
                        request_id=rid,
                        index=i,
                        text=pieces[c][i],
                        text_offset=sum(len(p) for p in before),
                        final=final,
                        finish_reason=script.finish_reason if final else None,
                        choice=c,
                        logprobs=[_logprob(pieces[c], i)] if script.logprobs else None,
                        logprob_offset=i,
                    )
                    for _ in range(2 if script.duplicate_tokens else 1):
                        await self._publish(token, reply)
                if script.chunk_delay_s:
                    await asyncio.sleep(script.chunk_delay_s)
        if script.error is not None:
            result = GenerationResult(request_id=rid, model="fake", error=script.error)
        else:
            choices = [
                ResultChoice(
                    index=c,
                    text="".join(pieces[c]),
                    finish_reason=script.finish_reason,
                    logprobs=[_logprob(pieces[c], i) for i in range(len(pieces[c]))]
                    if script.logprobs
                    else None,
                    completion_tokens=len(pieces[c]),
                )
                for c in range(script.choices)
            ]
            result = GenerationResult(
                request_id=rid,
                model="fake",
                model_version="1",
                text=choices[0].text,
                finish_reason=script.finish_reason,
                usage=Usage(prompt_tokens=2, completion_tokens=len(script.chunks) * script.choices),
                logprobs=choices[0].logprobs,
                choices=choices if script.choices > 1 else [],
                # The model's own time, as inference records it from Triton's final response.
                timings=Timings(triton_queue_ms=0.25, triton_compute_ms=12.5),
            )
        # Stamped before the result goes out: a direct reply can reach the caller (and the test
        # read this) before the publish returns here.
        self.finished[rid] = asyncio.get_running_loop().time()
        # As postprocess stores it: first result wins, the id's claim kept as long.
        await self._results.put_first(result)
        if not script.redis_only:
            await self._publish(result, reply)


def _logprob(pieces: list[str], i: int) -> OutputLogprob:
    """A made-up logprob of piece ``i`` (as one token), with one alternative."""
    alt = TopLogprob(token="?", token_id=1, logprob=-5.0, bytes=[63])
    return OutputLogprob(
        token=pieces[i],
        token_id=100 + i,
        logprob=-0.5 * (i + 1),
        bytes=list(pieces[i].encode()),
        top=[alt],
        text_offset=sum(len(p) for p in pieces[:i]),
    )


@dataclass
class GatewayInstance:
    """One gateway running in this process: its settings, app, spans and server task."""

    settings: GatewaySettings
    app: FastAPI
    spans: InMemorySpanExporter
    server: uvicorn.Server
    task: asyncio.Task[None]

    @property
    def grpc_target(self) -> str:
        return f"127.0.0.1:{self.settings.grpc_port}"

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.settings.port}"


async def start_gateway(
    settings: CommonSettings,
    requests_topic: str,
    reply_topic: str,
    reply_group: str,
    **overrides: Any,
) -> GatewayInstance:
    """Start a gateway on free ports, publishing to ``requests_topic``, its reply reader in
    ``reply_group`` on ``reply_topic``; wait until it serves. ``overrides`` are more
    ``GatewaySettings`` fields."""
    overrides.setdefault("redis_url", settings.redis_url)
    cfg = GatewaySettings(
        kafka_bootstrap_servers=settings.kafka_bootstrap_servers,
        triton_http_url=settings.triton_http_url,
        service_name=f"genwire-gateway-test-{uuid.uuid4().hex[:6]}",
        port=free_port(),
        grpc_port=free_port(),
        requests_topic=requests_topic,
        request_timeout_s=20.0,
        reply_topic=reply_topic,
        reply_group=reply_group,
        result_poll_s=1.0,
        shutdown_timeout_s=3.0,
        **overrides,
    )
    spans = InMemorySpanExporter()
    app = create_app(cfg, span_exporter=spans, set_global_tracer=False)
    config = uvicorn_config(app, cfg)  # the production server's settings
    config.lifespan = "on"  # as before: an exception escaping the app's start-up stops the server
    server = uvicorn.Server(config)
    task = await serve_in_task(server)
    return GatewayInstance(cfg, app, spans, server, task)


async def stop_gateway(instance: GatewayInstance) -> None:
    """Stop a gateway started by ``start_gateway``."""
    instance.server.should_exit = True
    with contextlib.suppress(asyncio.CancelledError):
        await asyncio.wait_for(instance.task, 30)
