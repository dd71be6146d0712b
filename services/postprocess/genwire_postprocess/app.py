"""Wiring and lifespan of the postprocess service."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager

from aiokafka.structs import ConsumerRecord
from fastapi import FastAPI

from genwire.errors import GenwireError
from genwire.events import Event, GenerationChunk
from genwire.filters import ContentFilter
from genwire.results import ResultStore
from genwire.service import ServiceRuntime, health_router
from genwire.telemetry import semconv as sc
from genwire.tokenization import AssetStore
from genwire.topics import Topic
from genwire_postprocess.config import PostprocessSettings
from genwire_postprocess.handlers import Postprocessor, failure_result
from genwire_postprocess.metrics import ResultMetrics


def create_app(settings: PostprocessSettings | None = None) -> FastAPI:
    """Build the app; the runtime is created in the lifespan and kept on ``app.state``."""
    cfg = settings or PostprocessSettings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        runtime = ServiceRuntime(cfg, sc.STAGE_POSTPROCESS)
        app.state.runtime = runtime
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

        def failure_events(
            record: ConsumerRecord[bytes, bytes], err: GenwireError
        ) -> Sequence[Event]:
            try:
                chunk = GenerationChunk.model_validate_json(record.value or b"")
            except ValueError:
                key = record.key.decode("utf-8", "replace") if record.key else None
                return failure_result(key, err, stream=False)
            # Only a final chunk owes the caller an answer; a lost streamed piece is made up
            # by the final one.
            return failure_result(chunk.request_id, err, chunk.stream) if chunk.final else []

        runtime.consumer(
            Topic.GENERATIONS, GenerationChunk, post.handle, failure_events=failure_events
        )
        await runtime.start()
        try:
            yield
        finally:
            await runtime.stop()
            await store.close()

    app = FastAPI(title="genwire-postprocess", lifespan=lifespan)
    app.include_router(health_router())
    return app
