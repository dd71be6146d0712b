"""Settings of the inference service (env prefix ``GENWIRE_INFERENCE_``)."""

from __future__ import annotations

from typing import ClassVar

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from genwire.settings import CLIENT_ONLY, STACK_ONLY, ServiceSettings


class InferenceSettings(ServiceSettings):
    """Drives the model on Triton and publishes token chunks."""

    model_config = SettingsConfigDict(env_prefix="GENWIRE_INFERENCE_", extra="ignore")
    # No Redis, no repository (Triton has it), Triton over gRPC only; no links, no text.
    not_read: ClassVar[frozenset[str]] = (
        STACK_ONLY
        | CLIENT_ONLY
        | {"redis_url", "redis_timeout_s", "model_repository", "triton_http_url"}
        | {"jaeger_ui_url", "trace_url_template", "trace_content"}
    )

    service_name: str = Field("genwire-inference", description="Service and group name.")
    port: int = Field(8092, description="Port of /healthz, /readyz and /metrics.")
    chunk_max_tokens: int = Field(
        8, ge=1, description="A streamed chunk is published once it holds this many tokens..."
    )
    chunk_interval_ms: float = Field(
        20.0,
        ge=0,
        description="...or once this long has passed since the last one (the first token is "
        "always published at once, for a low time to first token).",
    )
    stream_chunks_per_s: float = Field(
        100.0,
        ge=0,
        description="Budget of streamed chunk records per second for all the streams "
        "generating here: with N live, a stream's chunks (after its first, which goes at once) "
        "are at least N / budget seconds apart, so under load each record carries more tokens "
        "instead of the records multiplying (each costs the stages and the broker about as much "
        "as a whole unstreamed request's hop). With 1 or 2 streams (at 100) the spacing, "
        "10-20 ms, is within the chunk interval. Streamed requests only: one chunked for its "
        "stop sequences alone is never held. 0: no budget.",
    )
    triton_wait_s: float = Field(
        30.0,
        ge=0,
        description="When Triton is unavailable, wait up to this long for it (per attempt) "
        "before the consumer's retry; Triton restarts take seconds, failing fast loses work.",
    )
    triton_shared_stream_s: float = Field(
        1.0,
        ge=0,
        description="Requests share one gRPC stream to Triton (a call set-up and tear-down "
        "less per request; cancelled by a message on the stream) for this long, then a new "
        "one takes new requests and the old one ends with its last request: an unload of a "
        "model version waits up to this long beyond its requests in flight. Versions that do "
        "not understand the cancel message get a stream per request. 0: a stream per request "
        "for every version (then, when Triton traces, its spans join each request's trace).",
    )
    cancelled_memory_s: float = Field(
        600.0,
        gt=0,
        description="How long a cancel for a request not (yet) running here is remembered.",
    )
    max_remembered_cancels: int = Field(
        10_000, gt=0, description="Bound on remembered cancels (oldest forgotten first)."
    )
    origin_timeout_s: float = Field(
        15.0,
        gt=0,
        description="A gateway instance whose heartbeats on genwire.control stop for this long "
        "is taken as dead: its unnamed requests are cancelled (named ones finish for a retry). "
        "Longer than a broker failover (KRaft's broker session timeout is 9 s); while this "
        "instance's own Kafka link is down, nobody is taken as dead.",
    )
