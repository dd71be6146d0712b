"""Settings of the postprocess service (env prefix ``GENWIRE_POSTPROCESS_``)."""

from __future__ import annotations

from typing import ClassVar

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from genwire.settings import CLIENT_ONLY, STACK_ONLY, ServiceSettings
from genwire.topics import Topic


class PostprocessSettings(ServiceSettings):
    """Detokenizes, applies stop sequences and filters, stores and publishes results."""

    model_config = SettingsConfigDict(env_prefix="GENWIRE_POSTPROCESS_", extra="ignore")
    # No Triton (the repository's tokenizer files only), no trace links; no context length
    # (it decodes what was generated and checks no prompt against the model's limit).
    not_read: ClassVar[frozenset[str]] = (
        STACK_ONLY
        | CLIENT_ONLY
        | {
            "triton_grpc_url",
            "triton_http_url",
            "triton_admin_key",
            "jaeger_ui_url",
            "trace_url_template",
            "default_context_length",
        }
    )

    service_name: str = Field("genwire-postprocess", description="Service and group name.")
    port: int = Field(8093, description="Port of /healthz, /readyz and /metrics.")
    result_ttl_s: int = Field(
        86_400, gt=0, description="TTL of results in Redis (key genwire:result:<request_id>)."
    )
    output_deny: list[str] = Field(
        default_factory=list,
        description="Output filter: deny rules 'name=regex' (JSON list); the text is cut before "
        "a match and finish_reason becomes content_filter.",
    )
    filter_holdback_chars: int = Field(
        32,
        ge=0,
        description="With output rules set, streamed text lags this many characters so that a "
        "match can be caught before its start is sent.",
    )
    stream_state_ttl_s: float = Field(
        600.0,
        gt=0,
        description="Streaming state of a request with no final chunk is dropped after this.",
    )
    max_stream_states: int = Field(
        100_000, gt=0, description="Bound on requests streamed at once (oldest state dropped)."
    )
    default_context_length: int = Field(
        1024,
        gt=0,
        description="Not read: postprocess checks no context length "
        "(GENWIRE_PREPROCESS_DEFAULT_CONTEXT_LENGTH is the one that counts); set, it stops the "
        "service at start.",
    )
    kafka_usage: bool = Field(
        True,
        description="Publish a UsageEvent on genwire.usage for each request produced straight "
        "to genwire.requests (no genwire_origin header; the gateway meters its own), "
        "attributed to its genwire_principal header, else 'kafka'; once per request id.",
    )
    reply_topic: str = Field(
        Topic.REPLIES.value,
        description="The only topic a request's genwire_reply_to header may name: its chunks "
        "and result are also published to the partition named there (a header naming any "
        "other topic is counted and ignored).",
    )
