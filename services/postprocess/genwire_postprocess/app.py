"""Wiring of the postprocess service: its result store and its consumer (the runner does the
rest).

A final chunk postprocess cannot handle (its model version missing here, Redis down through
every replay, a bug) still owes its caller an answer: the error result is published (with its
reply copy) and, best effort, stored in Redis like any result (``FailureStore``), so a caller
polling Redis (``GetResult``, a repeated named request) sees it too.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from contextvars import ContextVar

from aiokafka.structs import ConsumerRecord
from fastapi import FastAPI

from genwire.apikeys import NAME_PATTERN
from genwire.errors import GenwireError
from genwire.events import Event, GenerationChunk, GenerationResult
from genwire.filters import ContentFilter
from genwire.kafka.failures import Output, header
from genwire.kafka.producer import forwarded
from genwire.request import ErrorCode
from genwire.results import ResultStore
from genwire.service import Running, ServiceRuntime, ServiceSpec
from genwire.telemetry import semconv as sc
from genwire.tokenization import AssetStore
from genwire.topics import Topic
from genwire.usage import KAFKA_PRINCIPAL
from genwire_postprocess.config import PostprocessSettings
from genwire_postprocess.handlers import Postprocessor, ResultWriter, failure_result
from genwire_postprocess.metrics import ResultMetrics
from genwire_postprocess.replies import ReplyRouter

log = logging.getLogger(__name__)

FAILURE_STORE_TIMEOUT_S = 5.0
"""How long storing a failure's error result may take (it never holds the dead letter up)."""

_ATTEMPTS: ContextVar[list[int] | None] = ContextVar("genwire_postprocess_attempts", default=None)
"""Handler runs of the record this task handles (``decode_chunk`` starts the count)."""


@asynccontextmanager
async def setup(
    cfg: PostprocessSettings, runtime: ServiceRuntime, app: FastAPI
) -> AsyncIterator[Running]:
    """The Redis result store; the consumer of generation chunks; the direct replies."""
    store = ResultStore.connect(
        cfg.redis_url, ttl_s=cfg.result_ttl_s, timeout_s=cfg.redis_timeout_s
    )
    post = Postprocessor(
        AssetStore(cfg.repository),  # tokenizers only: no context length is checked here
        store,
        output_filter=ContentFilter(cfg.output_deny),
        filter_holdback_chars=cfg.filter_holdback_chars,
        state_ttl_s=cfg.stream_state_ttl_s,
        max_states=cfg.max_stream_states,
        trace_content=cfg.trace_content,
        on_result=ResultMetrics(runtime.registry).observe,
    )
    app.state.postprocessor = post
    replies = ReplyRouter(runtime.producer, cfg.reply_topic, runtime.registry)
    app.state.replies = replies
    failures = FailureStore(store)

    async def handle(chunk: GenerationChunk) -> list[Output]:
        again = rerun()
        if chunk.shadow:  # its result goes to genwire.shadow only: no replies to anyone
            return list(await post.handle(chunk))
        usage_of = usage_principal(chunk) if cfg.kafka_usage else None
        outputs = await post.handle(chunk, usage_of=usage_of, rerun=again)
        return await replies.with_replies(outputs)

    def failure_events(record: ConsumerRecord[bytes, bytes], err: GenwireError) -> Sequence[Output]:
        outputs = failure_outputs(record, err)
        failures.keep(record, outputs)
        return replies.with_replies_now(outputs, record.headers or ())

    # A request's chunks one after another: their TokenEvents go out in order even when a
    # chunk's handler pauses (a tokenizer's first load, the reply topic's metadata).
    runtime.consumer(
        Topic.GENERATIONS,
        GenerationChunk,
        handle,
        failure_events=failure_events,
        decoder=decode_chunk,
        ordered_keys=True,
    )
    try:
        yield warm_replies(replies)
    finally:
        await failures.close()
        await store.close()


def decode_chunk(record: ConsumerRecord[bytes, bytes]) -> GenerationChunk:
    """The consumer's decoder (the default's parse), which also starts counting the record's
    handler runs: the consumer runs the handler again, on the same record, when its outputs
    were not acknowledged. A record replayed from ``genwire.retry`` was handled before."""
    chunk = GenerationChunk.model_validate_json(record.value or b"")
    _ATTEMPTS.set([0 if header(record, sc.HEADER_RETRY_COUNT) is None else 1])
    return chunk


def rerun() -> bool:
    """Count a handler run of this task's record: whether it was handled before, its outputs
    perhaps never published (the handler then restates a streamed piece it applied)."""
    attempts = _ATTEMPTS.get()
    if attempts is None:  # not decoded by ``decode_chunk`` (a test calling the handler)
        return False
    attempts[0] += 1
    return attempts[0] > 1


@asynccontextmanager
async def warm_replies(replies: ReplyRouter) -> AsyncIterator[None]:
    """Once the producer runs: load the reply topic's partitions in the background."""
    task = asyncio.ensure_future(replies.warm())
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


class FailureStore:
    """Stores the error result a failed final chunk owes its caller, best effort, in the
    background: the failure path is synchronous and must not wait for Redis (which may be
    the very thing that is down). ``put_first`` never replaces a stored answer, and a real
    result replaces the error stored here (``genwire.results.replaceable``)."""

    def __init__(self, store: ResultWriter, timeout_s: float = FAILURE_STORE_TIMEOUT_S) -> None:
        self.store = store
        self.timeout_s = timeout_s
        self._tasks: set[asyncio.Task[None]] = set()

    def keep(self, record: ConsumerRecord[bytes, bytes], outputs: Sequence[Event]) -> None:
        """Store the error result among ``outputs`` if ``record`` is a final chunk whose
        result belongs in Redis."""
        result = stored_failure(record, outputs)
        if result is None:
            return
        task = asyncio.get_running_loop().create_task(self._put(result))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _put(self, result: GenerationResult) -> None:
        try:
            async with asyncio.timeout(self.timeout_s):
                await self.store.put_first(result)
        except Exception as exc:  # Redis down or slow: the published result is all there is
            log.warning(
                "request %s: its error result (%s) was published but not stored: %r",
                result.request_id,
                result.error.code if result.error else "?",
                exc,
            )

    async def close(self) -> None:
        """Let the stores in flight finish (each bounded by ``timeout_s``)."""
        if self._tasks:
            await asyncio.wait(set(self._tasks))


def stored_failure(
    record: ConsumerRecord[bytes, bytes], outputs: Sequence[Event]
) -> GenerationResult | None:
    """The error result to store for a failed ``record``: only a final chunk's (a streamed
    one's caller waits for the final), never a shadow copy's (nobody waits for it) nor an
    ``idempotency_conflict``'s (the id's stored result is the first request's); None for a
    record that does not parse (whether it is a final chunk is unknown)."""
    try:
        chunk = GenerationChunk.model_validate_json(record.value or b"")
    except ValueError:
        return None
    if not chunk.final or chunk.shadow:
        return None
    if chunk.error is not None and chunk.error.code == ErrorCode.IDEMPOTENCY_CONFLICT:
        return None
    return next((o for o in outputs if isinstance(o, GenerationResult)), None)


def usage_principal(chunk: GenerationChunk) -> str | None:
    """Whom to attribute a request's usage to here: None for a gateway's request (header
    ``genwire_origin``: the gateway meters it); for a Kafka client's, the ``genwire_principal``
    header it set (a claim, as trustworthy as the topic's ACLs), else ``kafka``."""
    if forwarded(sc.HEADER_ORIGIN) is not None:
        return None
    raw = forwarded(sc.HEADER_PRINCIPAL)
    name = raw.decode("utf-8", "replace") if raw is not None else chunk.principal
    if not name:
        return KAFKA_PRINCIPAL
    if NAME_PATTERN.fullmatch(name) is None:
        log.warning(
            "request %s: genwire_principal %r is no key name; usage goes to %r",
            chunk.request_id,
            name[:80],
            KAFKA_PRINCIPAL,
        )
        return KAFKA_PRINCIPAL
    return name


def failure_outputs(record: ConsumerRecord[bytes, bytes], err: GenwireError) -> list[Event]:
    """The error result a chunk that cannot be handled owes its caller."""
    try:
        chunk = GenerationChunk.model_validate_json(record.value or b"")
    except ValueError:
        key = record.key.decode("utf-8", "replace") if record.key else None
        return failure_result(key, err, stream=False)
    # Only a final chunk owes the caller an answer; a lost streamed piece is made up by the
    # final one. A shadow copy owes nobody: its failure is the DLQ record alone.
    if chunk.shadow:
        return []
    if not chunk.final:
        return []
    if chunk.error is not None and chunk.error.code == ErrorCode.IDEMPOTENCY_CONFLICT:
        # Its own answer, the conflict, as handling it would have published (never stored,
        # no token events: the id's answer and streams are the first request's).
        return [
            GenerationResult(request_id=chunk.request_id, finish_reason="error", error=chunk.error)
        ]
    n = max(len(chunk.choices or []), chunk.sampling.n if chunk.sampling is not None else 1)
    return failure_result(chunk.request_id, err, chunk.stream, n)


SERVICE = ServiceSpec(stage=sc.STAGE_POSTPROCESS, settings=PostprocessSettings, setup=setup)


def create_app(settings: PostprocessSettings | None = None) -> FastAPI:
    """The postprocess app (the runtime and the store are created in its lifespan)."""
    return SERVICE.app(settings)
