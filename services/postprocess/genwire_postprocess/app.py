"""Wiring of the postprocess service: its result store and its consumer (the runner does the
rest)."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager

from aiokafka.structs import ConsumerRecord
from fastapi import FastAPI

from genwire.apikeys import NAME_PATTERN
from genwire.errors import GenwireError
from genwire.events import Event, GenerationChunk
from genwire.filters import ContentFilter
from genwire.kafka.failures import Output
from genwire.kafka.producer import forwarded
from genwire.results import ResultStore
from genwire.service import ServiceRuntime, ServiceSpec
from genwire.telemetry import semconv as sc
from genwire.tokenization import AssetStore
from genwire.topics import Topic
from genwire.usage import KAFKA_PRINCIPAL
from genwire_postprocess.config import PostprocessSettings
from genwire_postprocess.handlers import Postprocessor, failure_result
from genwire_postprocess.metrics import ResultMetrics
from genwire_postprocess.replies import ReplyRouter

log = logging.getLogger(__name__)


@asynccontextmanager
async def setup(
    cfg: PostprocessSettings, runtime: ServiceRuntime, app: FastAPI
) -> AsyncIterator[None]:
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

    async def handle(chunk: GenerationChunk) -> list[Output]:
        if chunk.shadow:  # its result goes to genwire.shadow only: no replies to anyone
            return list(await post.handle(chunk))
        usage_of = usage_principal(chunk) if cfg.kafka_usage else None
        return await replies.with_replies(await post.handle(chunk, usage_of=usage_of))

    def failure_events(record: ConsumerRecord[bytes, bytes], err: GenwireError) -> Sequence[Output]:
        return replies.with_replies_now(failure_outputs(record, err), record.headers or ())

    # A request's chunks one after another: their TokenEvents go out in order even when a
    # chunk's handler pauses (a tokenizer's first load, the reply topic's metadata).
    runtime.consumer(
        Topic.GENERATIONS,
        GenerationChunk,
        handle,
        failure_events=failure_events,
        ordered_keys=True,
    )
    try:
        yield
    finally:
        await store.close()


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
    return failure_result(chunk.request_id, err, chunk.stream) if chunk.final else []


SERVICE = ServiceSpec(stage=sc.STAGE_POSTPROCESS, settings=PostprocessSettings, setup=setup)


def create_app(settings: PostprocessSettings | None = None) -> FastAPI:
    """The postprocess app (the runtime and the store are created in its lifespan)."""
    return SERVICE.app(settings)
