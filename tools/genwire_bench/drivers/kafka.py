"""The Kafka entry point: produce a request to ``genwire.requests``, read its answer by key.

Our own ``traceparent`` header starts the request's trace, so its spans are found in Jaeger.
The reader has no consumer group: it is assigned every partition of ``genwire.results`` (and
``genwire.tokens``) from their end, so it sees only this run's answers and commits nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass, field

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from pydantic import ValidationError

from genwire.events import ErrorInfo, GenerationResult, Timings, TokenEvent
from genwire.kafka.security import client_options
from genwire.request import GenerationRequest
from genwire.topics import Topic
from genwire_bench.drivers.base import Driver, RequestFailed, TraceContext
from genwire_bench.records import MODEL_MS, BenchRequest, RequestRecord


def to_request(req: BenchRequest, request_id: str, model: str, stream: bool) -> GenerationRequest:
    """The same prompt and sampling as every other target, as a ``request.v1`` message."""
    s = req.sampling
    return GenerationRequest(
        request_id=request_id,
        model=model,
        prompt=req.prompt,
        max_tokens=s.max_tokens,
        temperature=s.temperature,
        top_p=s.top_p,
        top_k=s.top_k,
        seed=s.seed,
        stream=stream,
    )


def model_ms(timings: Timings) -> float | None:
    """The model's own time for the request (its queue and compute), when the result has it."""
    if timings.triton_queue_ms is None or timings.triton_compute_ms is None:
        return None
    return timings.triton_queue_ms + timings.triton_compute_ms


@dataclass
class _Pending:
    stream: bool
    done: asyncio.Event = field(default_factory=asyncio.Event)
    result: GenerationResult | None = None
    result_at: float = 0.0
    first_token: float | None = None
    final_token: float | None = None
    chunks: int = 0

    def complete(self) -> bool:
        if self.result is None:
            return False
        if self.result.error is not None or not self.stream:
            return True
        return self.final_token is not None


class KafkaDriver(Driver):
    """Request/response over the topics; one producer and one reader shared by all requests."""

    def __init__(
        self,
        bootstrap_servers: str,
        model: str,
        *,
        stream: bool,
        timeout_s: float = 60.0,
        reader: KafkaReader | None = None,
    ) -> None:
        super().__init__(timeout_s)
        self.name = "kafka-stream" if stream else "kafka"
        self.streaming = stream
        self.baseline = "triton-stream" if stream else "triton"
        self._bootstrap = bootstrap_servers
        self._model = model
        self._reader = reader or KafkaReader(bootstrap_servers)
        self._producer = AIOKafkaProducer(
            bootstrap_servers=bootstrap_servers,
            **client_options(),
            client_id="genwire-bench",
            acks="all",
            enable_idempotence=True,
            linger_ms=0,  # a latency benchmark: send each request at once
        )

    async def start(self) -> None:
        """Connect the producer and (once for all Kafka drivers) the reader."""
        await self._reader.acquire()
        await self._producer.start()

    async def close(self) -> None:
        """Disconnect."""
        await self._producer.stop()
        await self._reader.release()

    async def _send(self, req: BenchRequest, record: RequestRecord, trace: TraceContext) -> None:
        key, value = to_request(req, record.request_id, self._model, self.streaming).to_kafka()
        pending = self._reader.expect(record.request_id, self.streaming)
        try:
            await self._producer.send_and_wait(
                Topic.REQUESTS,
                value,
                key=key,
                headers=[("traceparent", trace.traceparent.encode())],
            )
            await pending.done.wait()
        finally:
            self._reader.forget(record.request_id)
        result = pending.result
        assert result is not None
        if result.error is not None:
            raise RequestFailed(result.error.code, result.error.message)
        record.output_tokens = result.usage.completion_tokens
        record.prompt_tokens = result.usage.prompt_tokens
        record.chunks = pending.chunks
        at_model = model_ms(result.timings)
        if at_model is not None:
            record.extra[MODEL_MS] = at_model
        if self.streaming:
            record.first_token = pending.first_token or pending.final_token
            record.end = pending.final_token or pending.result_at
        else:
            record.end = pending.result_at


class KafkaReader:
    """Reads ``genwire.results`` and ``genwire.tokens`` and hands each answer to its waiter."""

    def __init__(self, bootstrap_servers: str) -> None:
        self._bootstrap = bootstrap_servers
        self._pending: dict[str, _Pending] = {}
        self._users = 0
        self._consumer: AIOKafkaConsumer | None = None
        self._task: asyncio.Task[None] | None = None

    async def acquire(self) -> None:
        """Start reading (first user) from the current end of both topics."""
        self._users += 1
        if self._consumer is not None:
            return
        # No group: every partition of both topics is ours, nothing is committed.
        consumer = AIOKafkaConsumer(
            Topic.RESULTS,
            Topic.TOKENS,
            bootstrap_servers=self._bootstrap,
            **client_options(),
            group_id=None,
            enable_auto_commit=False,
            auto_offset_reset="latest",
            client_id="genwire-bench-reader",
            fetch_max_wait_ms=100,  # as the gateway's reader: a fetch returns at the first byte
        )
        await consumer.start()
        for _ in range(300):  # the group-less assignment follows the first metadata fetch
            if len({tp.topic for tp in consumer.assignment()}) == 2:
                break
            await asyncio.sleep(0.05)
        else:
            await consumer.stop()
            raise RuntimeError("topics genwire.results/genwire.tokens not found: is the stack up?")
        for tp in consumer.assignment():  # resolve the end offsets before any request is sent
            await consumer.position(tp)
        self._consumer = consumer
        self._task = asyncio.create_task(self._read())

    async def release(self) -> None:
        """Stop reading when the last user is done."""
        self._users -= 1
        if self._users > 0 or self._consumer is None:
            return
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self._consumer.stop()
        self._consumer = None

    def expect(self, request_id: str, stream: bool) -> _Pending:
        """Register a waiter before the request is produced (its answer may come quickly)."""
        pending = _Pending(stream)
        self._pending[request_id] = pending
        return pending

    def forget(self, request_id: str) -> None:
        """Drop a waiter (done or timed out)."""
        self._pending.pop(request_id, None)

    async def _read(self) -> None:
        assert self._consumer is not None
        while True:
            batches = await self._consumer.getmany(timeout_ms=1000)
            now = time.perf_counter()  # stamped before parsing: decoding is not the pipeline's
            for tp, records in batches.items():
                for rec in records:
                    rid = (rec.key or b"").decode("utf-8", "replace")
                    pending = self._pending.get(rid)
                    if pending is None or rec.value is None:
                        continue
                    self._deliver(pending, tp.topic, rec.value, now)

    @staticmethod
    def _deliver(pending: _Pending, topic: str, value: bytes, now: float) -> None:
        try:
            if topic == Topic.RESULTS:
                pending.result = GenerationResult.model_validate_json(value)
                pending.result_at = now
            else:
                token = TokenEvent.model_validate_json(value)
        except ValidationError as exc:
            pending.result = GenerationResult(
                request_id="?",
                error=ErrorInfo(code="bench_unreadable", message=f"{topic}: {exc}"[:300]),
            )
            pending.result_at = now
            pending.done.set()
            return
        if topic != Topic.RESULTS:
            pending.chunks += 1
            if token.text and pending.first_token is None:
                pending.first_token = now
            if token.final:
                pending.final_token = now
        if pending.complete():
            pending.done.set()
