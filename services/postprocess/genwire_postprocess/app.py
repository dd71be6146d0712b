"""Wiring of the postprocess service: its result store and its consumer (the runner does the
rest)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager

from aiokafka.structs import ConsumerRecord
from fastapi import FastAPI

from genwire.errors import GenwireError
from genwire.events import Event, GenerationChunk
from genwire.filters import ContentFilter
from genwire.results import ResultStore
from genwire.service import ServiceRuntime, ServiceSpec
from genwire.telemetry import semconv as sc
from genwire.tokenization import AssetStore
from genwire.topics import Topic
from genwire_postprocess.config import PostprocessSettings
from genwire_postprocess.handlers import Postprocessor, failure_result
from genwire_postprocess.metrics import ResultMetrics


@asynccontextmanager
async def setup(
    cfg: PostprocessSettings, runtime: ServiceRuntime, app: FastAPI
) -> AsyncIterator[None]:
    """The Redis result store; the consumer of generation chunks."""
    store = ResultStore.connect(
        cfg.redis_url, ttl_s=cfg.result_ttl_s, timeout_s=cfg.redis_timeout_s
    )
    post = Postprocessor(
        AssetStore(cfg.repository, default_context_length=cfg.default_context_length),
        store,
        output_filter=ContentFilter(cfg.output_deny),
        filter_holdback_chars=cfg.filter_holdback_chars,
        state_ttl_s=cfg.stream_state_ttl_s,
        max_states=cfg.max_stream_states,
        trace_content=cfg.trace_content,
        on_result=ResultMetrics(runtime.registry).observe,
    )
    app.state.postprocessor = post

    def failure_events(record: ConsumerRecord[bytes, bytes], err: GenwireError) -> Sequence[Event]:
        try:
            chunk = GenerationChunk.model_validate_json(record.value or b"")
        except ValueError:
            key = record.key.decode("utf-8", "replace") if record.key else None
            return failure_result(key, err, stream=False)
        # Only a final chunk owes the caller an answer; a lost streamed piece is made up
        # by the final one.
        return failure_result(chunk.request_id, err, chunk.stream) if chunk.final else []

    runtime.consumer(Topic.GENERATIONS, GenerationChunk, post.handle, failure_events=failure_events)
    try:
        yield
    finally:
        await store.close()


SERVICE = ServiceSpec(stage=sc.STAGE_POSTPROCESS, settings=PostprocessSettings, setup=setup)


def create_app(settings: PostprocessSettings | None = None) -> FastAPI:
    """The postprocess app (the runtime and the store are created in its lifespan)."""
    return SERVICE.app(settings)
