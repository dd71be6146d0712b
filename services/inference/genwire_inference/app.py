"""Wiring and lifespan of the inference service."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager

from aiokafka.structs import ConsumerRecord
from fastapi import FastAPI

from genwire.errors import GenwireError
from genwire.events import ControlEvent, Event, PreparedRequest
from genwire.kafka.failures import header
from genwire.kafka.producer import KAFKA
from genwire.service import ServiceRuntime, health_router
from genwire.telemetry import semconv as sc
from genwire.topics import Topic
from genwire_inference.backend import TritonBackend
from genwire_inference.config import InferenceSettings
from genwire_inference.handlers import Inference, failure_chunk
from genwire_inference.metrics import InferenceMetrics


def create_app(settings: InferenceSettings | None = None) -> FastAPI:
    """Build the app; the runtime is created in the lifespan and kept on ``app.state``."""
    cfg = settings or InferenceSettings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        runtime = ServiceRuntime(cfg, sc.STAGE_INFERENCE)
        app.state.runtime = runtime
        backend = TritonBackend(cfg.triton_grpc_url)
        inference = Inference(
            backend,
            tracer=runtime.tracer,
            chunk_max_tokens=cfg.chunk_max_tokens,
            chunk_interval_ms=cfg.chunk_interval_ms,
            triton_wait_s=cfg.triton_wait_s,
            cancelled_memory_s=cfg.cancelled_memory_s,
            max_remembered_cancels=cfg.max_remembered_cancels,
            origin_timeout_s=cfg.origin_timeout_s,
            kafka_down=lambda: runtime.dependencies.down_for(KAFKA) is not None,
            on_final=InferenceMetrics(runtime.registry).observe,
        )
        app.state.inference = inference

        def failure_events(
            record: ConsumerRecord[bytes, bytes], err: GenwireError
        ) -> Sequence[Event]:
            # After the DLQ record: a final error chunk, so postprocess answers the caller.
            try:
                request: PreparedRequest | None = PreparedRequest.model_validate_json(
                    record.value or b""
                )
            except ValueError:
                request = None
            key = record.key.decode("utf-8", "replace") if record.key else None
            return failure_chunk(request, key, err)

        def decode(record: ConsumerRecord[bytes, bytes]) -> PreparedRequest:
            # Who waits for it travels in headers (set by the gateway, forwarded by preprocess).
            request = PreparedRequest.model_validate_json(record.value or b"")
            origin = header(record, sc.HEADER_ORIGIN)
            if origin:
                request.origin = origin.decode("utf-8", "replace")
                request.keep = header(record, sc.HEADER_KEEP) == b"1"
            return request

        # Concurrency = streams in flight to Triton at once (its scheduler batches them).
        runtime.consumer(
            Topic.PREPARED,
            PreparedRequest,
            inference.handle,
            failure_events=failure_events,
            decoder=decode,
        )
        # Every instance must see every cancel and heartbeat from now on: no group, so nothing
        # is left on the broker when an instance stops.
        runtime.consumer(Topic.CONTROL, ControlEvent, inference.control, group=False)
        await runtime.start()
        runtime.supervise(inference.watch_origins(), "watch-origins")
        try:
            yield
        finally:
            await runtime.stop()
            await backend.close()

    app = FastAPI(title="genwire-inference", lifespan=lifespan)
    app.include_router(health_router())
    return app
