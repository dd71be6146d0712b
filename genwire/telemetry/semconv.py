"""Every span attribute, span name and metric name genwire emits, defined once.

Upstream names follow OpenTelemetry's messaging and GenAI semantic conventions; our own keys
all carry the ``genwire.`` prefix.
"""

from __future__ import annotations

# messaging.* (OpenTelemetry messaging conventions, Kafka binding)
MESSAGING_SYSTEM = "messaging.system"
MESSAGING_DESTINATION = "messaging.destination.name"
MESSAGING_OPERATION_TYPE = "messaging.operation.type"
MESSAGING_OPERATION_NAME = "messaging.operation.name"
MESSAGING_CONSUMER_GROUP = "messaging.consumer.group.name"
MESSAGING_PARTITION = "messaging.destination.partition.id"
MESSAGING_OFFSET = "messaging.kafka.offset"
MESSAGING_MESSAGE_KEY = "messaging.kafka.message.key"
MESSAGING_BODY_SIZE = "messaging.message.body.size"

# gen_ai.* (OpenTelemetry GenAI conventions)
GEN_AI_SYSTEM = "gen_ai.system"
GEN_AI_OPERATION = "gen_ai.operation.name"
GEN_AI_REQUEST_MODEL = "gen_ai.request.model"
GEN_AI_RESPONSE_MODEL = "gen_ai.response.model"
GEN_AI_REQUEST_MAX_TOKENS = "gen_ai.request.max_tokens"
GEN_AI_REQUEST_TEMPERATURE = "gen_ai.request.temperature"
GEN_AI_REQUEST_TOP_P = "gen_ai.request.top_p"
GEN_AI_REQUEST_TOP_K = "gen_ai.request.top_k"
GEN_AI_REQUEST_SEED = "gen_ai.request.seed"
GEN_AI_RESPONSE_ID = "gen_ai.response.id"
GEN_AI_FINISH_REASONS = "gen_ai.response.finish_reasons"
GEN_AI_INPUT_TOKENS = "gen_ai.usage.input_tokens"
GEN_AI_OUTPUT_TOKENS = "gen_ai.usage.output_tokens"
GEN_AI_PROMPT = "gen_ai.prompt"
GEN_AI_COMPLETION = "gen_ai.completion"

# rpc.* and http.* (OpenTelemetry RPC and HTTP server conventions; the gateway's SERVER spans)
RPC_SYSTEM = "rpc.system"
RPC_SERVICE = "rpc.service"
RPC_METHOD = "rpc.method"
RPC_GRPC_STATUS_CODE = "rpc.grpc.status_code"
HTTP_REQUEST_METHOD = "http.request.method"
HTTP_ROUTE = "http.route"
HTTP_RESPONSE_STATUS_CODE = "http.response.status_code"

# genwire.* (ours)
STAGE = "genwire.stage"
REQUEST_ID = "genwire.request_id"
MODEL_VERSION = "genwire.model.version"
TIME_TO_FIRST_TOKEN_MS = "genwire.time_to_first_token_ms"
"""The inference stage's own TTFT: from its Triton call (or the model's receive) to the first
token. Not what the caller waits: the monitor's ``ttft`` SLI is from the entry point."""
FIRST_TOKEN_UNIX_MS = "genwire.first_token_unix_ms"
"""When the first token was generated (ms since the epoch, the inference host's clock): the
monitor's caller-side TTFT is this minus the request's entry time."""
TIME_PER_OUTPUT_TOKEN_MS = "genwire.time_per_output_token_ms"
QUEUE_MS = "genwire.triton.queue_ms"
COMPUTE_MS = "genwire.triton.compute_ms"
MEAN_LOGPROB = "genwire.mean_logprob"
FILTER_HITS = "genwire.filter.hits"
ERROR_CODE = "genwire.error.code"
DLQ_REASON = "genwire.dlq.reason"
CANCEL_REASON = "genwire.cancel.reason"
"""Why a generation was cancelled (inference's ``triton.generate`` span, or its process span
when the cancel came first): the cancel's reason, at most 200 characters."""
ENTRYPOINT = "genwire.entrypoint"
"""On the root span of genwire's trace of a request: the gateway's SERVER span (``http`` or
``grpc``); a Kafka client's request has none, its root is the process span of
``genwire.requests``."""
WAIT_MS = "genwire.kafka.wait_ms"

# Stage names (values of STAGE and span-name prefixes)
STAGE_GATEWAY = "gateway"
STAGE_PREPROCESS = "preprocess"
STAGE_INFERENCE = "inference"
STAGE_POSTPROCESS = "postprocess"
STAGE_MONITOR = "monitor"

# Span names
SPAN_TRITON_GENERATE = "triton.generate"


def publish_span_name(topic: str) -> str:
    """Messaging convention: ``<destination> publish``."""
    return f"{topic} publish"


def process_span_name(topic: str) -> str:
    """Messaging convention: ``<destination> process``."""
    return f"{topic} process"


# Prometheus metric names
METRIC_MESSAGES = "genwire_messages_total"
METRIC_PROCESS_SECONDS = "genwire_process_duration_seconds"
METRIC_DLQ = "genwire_dlq_total"
METRIC_RETRIES = "genwire_retries_total"
METRIC_INFLIGHT = "genwire_inflight"
METRIC_RETRY_TOPIC = "genwire_retry_topic_total"
METRIC_OUTPUTS_DROPPED = "genwire_outputs_dropped_total"  # a failure path's, refused by Kafka
METRIC_PARTITION_STALLED = "genwire_partition_stalled"
METRIC_COMMIT_AGE = "genwire_partition_commit_age_seconds"
METRIC_DEPENDENCY_UP = "genwire_dependency_up"
METRIC_PRODUCER_RESETS = "genwire_producer_resets_total"
METRIC_PRODUCER_UNACKED = "genwire_producer_unacknowledged_seconds"  # oldest record's wait
METRIC_PRODUCER_STUCK = "genwire_producer_stuck"  # 1: that wait reached the stall timeout
METRIC_REPLY_ROUTES = "genwire_reply_routes_total"  # postprocess: reply headers by outcome
METRIC_REPLIES = "genwire_gateway_replies_total"  # gateway: reply records read, by outcome
METRIC_REPLY_PARTITIONS = "genwire_gateway_reply_partitions"  # gateway: reply partitions owned
METRIC_WAITERS_MOVED = "genwire_gateway_waiters_moved_total"  # gateway: reply partition moved
METRIC_TTFT_SECONDS = "genwire_time_to_first_token_seconds"
METRIC_TPOT_SECONDS = "genwire_time_per_output_token_seconds"
METRIC_TOKENS = "genwire_tokens_total"
METRIC_REQUESTS = "genwire_requests_total"
METRIC_REQUEST_SECONDS = "genwire_request_duration_seconds"
# monitor: figures computed from the spans on otlp_spans
METRIC_MONITOR_RECORDS = "genwire_monitor_records_total"
METRIC_MONITOR_SPANS = "genwire_monitor_spans_total"
METRIC_MONITOR_REQUESTS = "genwire_monitor_requests_total"
METRIC_MONITOR_STAGE_LATENCY = "genwire_monitor_stage_latency_seconds"  # histogram
METRIC_MONITOR_BURN_RATE = "genwire_monitor_slo_burn_rate"
METRIC_MONITOR_DRIFT = "genwire_monitor_drift_score"
METRIC_MONITOR_ALERTS = "genwire_monitor_alert_firing"
METRIC_MONITOR_OPEN_TRACES = "genwire_monitor_open_traces"
METRIC_MONITOR_WEBHOOK_FAILURES = "genwire_monitor_webhook_failures_total"
METRIC_MONITOR_PARTITION_LAG = "genwire_monitor_partition_lag"
METRIC_MONITOR_PARTITION_STALLED_S = "genwire_monitor_partition_stalled_seconds"

# Kafka header names (CloudEvents Kafka binding plus ours)
HEADER_EVENT_TYPE = "ce_type"
HEADER_SOURCE = "ce_source"
HEADER_DLQ_REASON = "genwire_dlq_reason"
HEADER_DLQ_CODE = "genwire_dlq_code"
HEADER_DLQ_TOPIC = "genwire_dlq_topic"
HEADER_DLQ_PARTITION = "genwire_dlq_partition"
HEADER_DLQ_OFFSET = "genwire_dlq_offset"
HEADER_DLQ_STAGE = "genwire_dlq_stage"
HEADER_DLQ_TRUNCATED = "genwire_dlq_truncated"
"""On a DLQ record whose value was cut to fit Kafka's record limit (the original was too large
once the ``genwire_dlq_*`` headers were added): the original value's size in bytes."""
HEADER_RETRY_TOPIC = "genwire_retry_topic"
HEADER_RETRY_PARTITION = "genwire_retry_partition"
HEADER_RETRY_OFFSET = "genwire_retry_offset"
HEADER_RETRY_REASON = "genwire_retry_reason"
HEADER_RETRY_CODE = "genwire_retry_code"
HEADER_RETRY_STAGE = "genwire_retry_stage"
HEADER_RETRY_COUNT = "genwire_retry_count"
HEADER_RETRY_NOT_BEFORE = "genwire_retry_not_before"
HEADER_REPLAYED_FROM = "genwire_replayed_from"
"""Set by ``genwire dlq replay`` on a record it republished: ``<topic>:<partition>:<offset>``."""
HEADER_ORIGIN = "genwire_origin"
"""The gateway instance that waits for a request (its heartbeats say whether it lives)."""
HEADER_KEEP = "genwire_keep"
"""``1``: the caller named the request (idempotency key): finish it even if its gateway dies."""
HEADER_PRINCIPAL = "genwire_principal"
"""Who sent the request: the API key's name (set by the gateway, forwarded hop to hop; becomes
``PreparedRequest.principal`` / ``GenerationChunk.principal``). On a record produced straight to
``genwire.requests`` it is the producer's claim, as trustworthy as that topic's ACLs."""
HEADER_REPLY_TO = "genwire_reply_to"
"""``<topic>:<partition>``: where postprocess also publishes the request's chunks and result
(a partition of ``genwire.replies`` that the waiting gateway instance reads)."""
