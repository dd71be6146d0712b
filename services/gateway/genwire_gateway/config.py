"""Settings of the gateway service (env prefix ``GENWIRE_GATEWAY_``)."""

from __future__ import annotations

from typing import ClassVar

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from genwire.redaction import DEFAULT_PATTERNS
from genwire.settings import CLIENT_ONLY, STACK_ONLY, STAGE_ONLY, ServiceSettings
from genwire.topics import Topic


class GatewaySettings(ServiceSettings):
    """gRPC and OpenAI-style HTTP entry points."""

    model_config = SettingsConfigDict(env_prefix="GENWIRE_GATEWAY_", extra="ignore")
    # Its reply reader's group takes the session timeout; it consumes nothing else. Its demo
    # reads the trace links' settings through this class; the client settings are read under
    # their plain names (genwire.gateway_tls), by its clients only.
    not_read: ClassVar[frozenset[str]] = (
        STAGE_ONLY - {"kafka_session_timeout_ms"}
        | STACK_ONLY
        | CLIENT_ONLY
        | {"triton_grpc_url", "trace_content"}
    )

    service_name: str = Field("genwire-gateway", description="Service name (OTel service.name).")
    port: int = Field(
        8080, description="HTTP port: OpenAI-style /v1 API, /healthz, /readyz and /metrics."
    )
    grpc_host: str = Field("127.0.0.1", description="Address the gRPC server binds.")
    grpc_port: int = Field(50051, description="gRPC port (GenerationService, health, reflection).")
    default_model: str = Field(
        "genwire-gpt", description="Model named in responses when a request names none."
    )
    request_timeout_s: float = Field(
        60.0,
        gt=0,
        description="Longest a caller waits when it sets no deadline; also sent downstream as "
        "the request's deadline, so abandoned work stops.",
    )
    max_timeout_s: float = Field(
        600.0, gt=0, description="Ceiling on any caller's deadline (gRPC deadlines included)."
    )
    body_read_timeout_s: float = Field(
        30.0,
        gt=0,
        description="Longest the HTTP API waits for a request's whole body (a 408 "
        "request_timeout after it): request_timeout_s starts only once the body is read, so a "
        "client that stalls mid-body would otherwise hold its connection and span open.",
    )
    deadline_margin_s: float = Field(
        0.25,
        ge=0,
        description="The pipeline's deadline is the caller's minus this (at most a fifth of the "
        "caller's wait), so the partial result inference publishes when it stops at the "
        "deadline (finish_reason deadline) still reaches a caller who waits for it; 0: the "
        "same instant (the caller then gets deadline_exceeded and loses the text).",
    )
    claim_ttl_s: int = Field(
        86_400,
        ge=1,
        description="How long results are kept (postprocess result_ttl_s): the record of which "
        "API key sent a request lives this long plus max_timeout_s and claim_grace_s. (A "
        "finished request's idempotency claim lives as long as its result: postprocess keeps "
        "it when it stores the result.)",
    )
    claim_grace_s: float = Field(
        30.0,
        ge=0,
        description="While in flight a claim lives for the caller's deadline plus this; if its "
        "gateway dies before publishing, a retry may claim the id again after that.",
    )
    redis_probe_s: float = Field(
        5.0,
        gt=0,
        description="How often the gateway PINGs Redis, so /readyz says Redis is down (after "
        "unready_after_s) even while only anonymous requests, which do not touch it, come in.",
    )
    result_poll_s: float = Field(
        1.0,
        gt=0,
        description="How often a wait whose replies do not come to this instance looks in "
        "Redis: a repeat of a request another call published, get_result, a waiter whose reply "
        "partition moved in a rebalance. A request this instance published is never polled.",
    )
    reply_topic: str = Field(
        Topic.REPLIES.value,
        description="Topic of the direct replies; this instance names one of its partitions "
        "in each request (genwire_reply_to). Postprocess publishes only to its own reply_topic.",
    )
    reply_group: str = Field(
        "genwire-gateway-replies",
        description="Consumer group of the gateways' reply readers: Kafka shares the reply "
        "partitions among the live instances (the same group for every gateway of a stack).",
    )
    reply_partitions_read: int = Field(
        1,
        ge=1,
        description="How many of the reply partitions this instance owns it names in its "
        "requests and reads; the others stay assigned to it, paused (each fetch costs the "
        "client per partition it asks for, so reading all it owns costs more per reply the "
        "fewer instances there are, for no throughput).",
    )
    replies_ready_timeout_s: float = Field(
        30.0, gt=0, description="How long start-up waits for the first reply partitions."
    )
    models_cache_s: float = Field(
        5.0, ge=0, description="How long GET /v1/models reuses Triton's repository index."
    )
    grpc_max_message_bytes: int = Field(
        16 * 1024 * 1024, ge=1024, description="Largest gRPC message in either direction."
    )
    requests_topic: str = Field(
        Topic.REQUESTS.value,
        description="Topic requests are published to (tests point it at a private topic).",
    )
    grpc_reflection: bool = Field(
        True, description="Serve gRPC reflection, so grpcurl needs no .proto files."
    )
    heartbeat_interval_s: float = Field(
        1.0,
        gt=0,
        description="How often this instance says it is alive on genwire.control; inference "
        "cancels the unnamed requests of an instance whose heartbeats stop (a named request, "
        "one with an idempotency key, finishes for the caller's retry).",
    )
    # -- API keys, limits, usage (docs/security.md) -----------------------------------------
    auth_enabled: bool = Field(
        True,
        description="Require an API key on every /v1 route and genwire.* gRPC method (off: "
        "anyone who reaches the ports may generate; for isolated development only).",
    )
    auth_cache_s: float = Field(
        30.0,
        gt=0,
        description="How long a key's record is checked from memory before Redis is read "
        "again (revocations do not wait for it: they arrive with the change poll).",
    )
    auth_poll_s: float = Field(
        5.0,
        gt=0,
        description="How often the key-change counter in Redis is read when no change is "
        "announced: a revocation announced on genwire:apikeys:changed reaches this instance at "
        "once, one whose announcement was lost without the connection saying so within about "
        "this long; a subscription silent for two of these is made again.",
    )
    auth_stale_s: float = Field(
        300.0,
        ge=0,
        description="Redis unreachable: how long after its record was last read a cached key "
        "is still accepted (unknown keys are refused at once: fail closed); and how long a "
        "failing rate limiter lets limited keys through uncounted, from its first failure in a "
        "row, before they are refused (503) until it answers.",
    )
    auth_cache_max: int = Field(
        10_000,
        ge=1,
        description="Most keys cached; recently refused unknown keys are cached apart, at "
        "most as many again (a flood of unknown keys cannot push known ones out).",
    )
    usage_max_keys: int = Field(
        1000,
        ge=1,
        description="Most distinct key names labelled in /metrics; later ones count as 'other'.",
    )
    redact_patterns: list[str] = Field(
        default_factory=lambda: list(DEFAULT_PATTERNS),
        description="JSON list of name=regex masked in content captured for keys that opted "
        "in and in the reason of a gRPC Cancel (default: e-mail addresses and Luhn-valid card "
        "numbers).",
    )
    redaction_hook: str = Field(
        "",
        description="module:function (str -> str) applied after the patterns to captured "
        "content and cancel reasons; empty: none.",
    )
