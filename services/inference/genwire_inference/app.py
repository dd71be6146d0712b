"""Wiring of the inference service: its backend and its consumers (the runner does the rest)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager

from aiokafka.structs import ConsumerRecord
from fastapi import FastAPI

from genwire.errors import GenwireError
from genwire.events import ControlEvent, Event, PreparedRequest
from genwire.kafka.failures import header
from genwire.kafka.producer import KAFKA
from genwire.service import ServiceRuntime, ServiceSpec
from genwire.telemetry import semconv as sc
from genwire.topics import Topic
from genwire_inference.backend import TritonBackend
from genwire_inference.config import InferenceSettings
from genwire_inference.handlers import Inference, failure_chunk
from genwire_inference.metrics import InferenceMetrics


@asynccontextmanager
async def setup(
    cfg: InferenceSettings, runtime: ServiceRuntime, app: FastAPI
) -> AsyncIterator[None]:
    """The Triton backend; the consumers of prepared requests and of control events."""
    backend = TritonBackend(
        cfg.triton_grpc_url, shared_stream_s=cfg.triton_shared_stream_s, settings=cfg
    )
    inference = Inference(
        backend,
        tracer=runtime.tracer,
        chunk_max_tokens=cfg.chunk_max_tokens,
        chunk_interval_ms=cfg.chunk_interval_ms,
        stream_chunks_per_s=cfg.stream_chunks_per_s,
        triton_wait_s=cfg.triton_wait_s,
        cancelled_memory_s=cfg.cancelled_memory_s,
        max_remembered_cancels=cfg.max_remembered_cancels,
        origin_timeout_s=cfg.origin_timeout_s,
        kafka_down=lambda: runtime.dependencies.down_for(KAFKA) is not None,
        on_final=InferenceMetrics(runtime.registry).observe,
        model_state=backend.model_state,
    )
    app.state.inference = inference

    def failure_events(record: ConsumerRecord[bytes, bytes], err: GenwireError) -> Sequence[Event]:
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
        principal = header(record, sc.HEADER_PRINCIPAL)  # the API key's name (gateway)
        if principal:
            request.principal = principal.decode("utf-8", "replace")
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
    # is left on the broker when an instance stops. Heartbeats (no trace context) are not
    # traced: one trace a second per gateway, forever, would bury the requests' in Jaeger.
    runtime.consumer(
        Topic.CONTROL, ControlEvent, inference.control, group=False, root_spans=False, quiet=True
    )
    runtime.supervise(inference.watch_origins(), "watch-origins")
    try:
        yield
    finally:
        await backend.close()


SERVICE = ServiceSpec(stage=sc.STAGE_INFERENCE, settings=InferenceSettings, setup=setup)


def create_app(settings: InferenceSettings | None = None) -> FastAPI:
    """The inference app (the runtime and the backend are created in its lifespan)."""
    return SERVICE.app(settings)
