"""Settings of the preprocess service (env prefix ``GENWIRE_PREPROCESS_``)."""

from __future__ import annotations

from typing import ClassVar

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from genwire.settings import CLIENT_ONLY, STACK_ONLY, ServiceSettings
from genwire_preprocess.options import DEFAULT_MAX_LOGPROB_ENTRIES


class PreprocessSettings(ServiceSettings):
    """Validates, templates and tokenizes requests from genwire.requests."""

    model_config = SettingsConfigDict(env_prefix="GENWIRE_PREPROCESS_", extra="ignore")
    # Triton's metadata over HTTP only; no trace links, no text on spans.
    not_read: ClassVar[frozenset[str]] = (
        STACK_ONLY
        | CLIENT_ONLY
        | {
            "triton_grpc_url",
            "triton_admin_key",
            "jaeger_ui_url",
            "trace_url_template",
            "trace_content",
        }
    )

    service_name: str = Field("genwire-preprocess", description="Service and group name.")
    port: int = Field(8091, description="Port of /healthz, /readyz and /metrics.")
    default_model: str = Field("genwire-gpt", description="Model of requests that name none.")
    max_request_bytes: int = Field(
        1024 * 1024, gt=0, description="Largest accepted request value; larger: request_too_large."
    )
    default_context_length: int = Field(
        1024, gt=0, description="Context length of a model whose files do not state one."
    )
    max_generation_tokens: int = Field(
        32_768,
        gt=0,
        description="Budget of generated tokens per request: n × max_tokens above it is refused "
        "(out_of_range, naming n).",
    )
    max_logprob_entries: int = Field(
        DEFAULT_MAX_LOGPROB_ENTRIES,
        gt=0,
        description="Budget of logprob entries a request's result may hold: with logprobs, "
        "n × max_tokens × (1 + top_logprobs) above it is refused (out_of_range, naming "
        "top_logprobs, else logprobs). An entry is 70-200 B of result JSON (token, bytes, "
        "logprob), so the default keeps a result far below Kafka's 16 MiB record limit and "
        "Redis's memory safe from a few huge results.",
    )
    input_deny: list[str] = Field(
        default_factory=list,
        description="Input filter: deny rules 'name=regex' (JSON list); a match rejects the "
        "request with content_filtered and the rule's name.",
    )
    default_timeout_ms: float = Field(
        0.0,
        ge=0,
        description="Deadline given to requests without one, from receipt (0: no deadline).",
    )
    inline_tokenize_chars: int = Field(
        4096,
        ge=0,
        description="Prompts up to this many characters are tokenized on the event loop "
        "(faster than a thread hop); longer ones in a worker thread.",
    )
    preload_default_model: bool = Field(
        True, description="Load the default model's tokenizer at start (not on first request)."
    )
    claim_ttl_s: int = Field(
        86_400,
        ge=1,
        description="How long a request id's fingerprint is kept in Redis (genwire:claim:<id>): "
        "a reuse with another body within it gets idempotency_conflict. Preprocess claims the id "
        "for this long, or extends the gateway's claim to it (never shortening one), so a result "
        "stored late (an outage waited out, a parked or dead-lettered record replayed) still "
        "finds its claim, which storing it keeps as long as the result. Keep it at least as long "
        "as results (postprocess result_ttl_s) and as the longest a prepared request may take to "
        "reach its result, so a reuse never gets another body's text.",
    )
    check_idempotency: bool = Field(
        True, description="Refuse request ids reused for a different request (needs Redis)."
    )
    follow_policies: bool = Field(
        True,
        description="Follow genwire.config (each model's serving policy: aliases, weights, "
        "sticky key, shadow) and route each request by it (docs/lifecycle.md).",
    )
    policy_wait_s: float = Field(
        10.0,
        ge=0,
        description="At start, wait up to this long to read genwire.config to its end before "
        "taking requests (not ready until it has).",
    )
    route_fallback: bool = Field(
        True,
        description="A version the model's policy routes to that Triton does not serve, while "
        "the champion is not served either but another version of the model is: serve the "
        "newest served version the policy names (else the newest served) instead, arm "
        "'fallback', a warning and genwire_preprocess_route_fallbacks_total{model,wanted}; "
        "false: such requests get model_not_loaded. A canary not served beside a served "
        "champion always gets model_not_loaded (the monitor rolls it back; docs/lifecycle.md).",
    )
    pin_served_version: bool = Field(
        True,
        description="Pin requests that name no version to the one Triton serves now (else the "
        "repository's newest), so retries regenerate on the same version.",
    )
