"""The user request on ``genwire.requests`` (schema v2; v1 still read) and its error codes.

This is the contract between every entry point (gateway gRPC/HTTP/CLI, or anyone producing to
Kafka) and the pipeline: the Kafka value is this model's JSON, the Kafka key is the request id.
The JSON Schema in ``genwire/schemas/request.v2.json`` is generated from it
(``python -m genwire.request > genwire/schemas/request.v2.json``) and a test keeps the two equal.

Versions: v2 added the decode-loop options (``n``, ``logprobs``, penalties, ``logit_bias``,
``guided``...) and ``prompt_token_ids``. A v1 record (``schema_version`` 1, or none and no v2
field) is read as before; a record that says 1 and uses a v2 field is refused. Writers stamp
the lowest version that holds what they wrote, so a v1 reader still takes a plain request.
Whether the served model honours an option is checked by preprocess (``MODEL_OPTIONS``).

Field names follow OpenAI's completions/chat API. Limits that depend on the model (the context
length) are checked by preprocess, not here.
"""

from __future__ import annotations

import functools
import hashlib
import json
import re
import sys
from collections.abc import Mapping
from enum import StrEnum
from importlib import resources
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError, PydanticKnownError

from genwire.errors import PermanentError, describe_validation
from genwire.events import REQUEST_ID_PATTERN, ChatMessage, Guided

SCHEMA_VERSION = 2
"""The newest version this module reads and writes; bump only with a new ``request.vN.json``."""
SCHEMA_VERSIONS = (1, 2)
"""Every version this module reads."""

MAX_PROMPT_CHARS = 1_000_000
"""A hard ceiling on characters (the model's context limit, checked later, is far lower)."""

MAX_MESSAGES = 256
MAX_STOP = 4
MAX_STOP_CHARS = 64
MAX_METADATA = 16
MAX_TOKENS_CEILING = 32_768
"""``max_tokens`` ceiling of the schema; the model's context length is the real bound."""
DEFAULT_MAX_TOKENS = 64
"""``max_tokens`` of a request that does not send one: at least its ``min_tokens``, and at most
what the model's context leaves after the prompt (preprocess fits it: ``max_tokens_sent``)."""

MAX_REQUEST_BYTES = 4 * 1024 * 1024
"""Default ceiling on a request's JSON (the Kafka value) in bytes."""

MAX_N = 16
"""Most choices per request (``n``)."""
MAX_TOP_LOGPROBS = 20
"""Most alternatives per token (``top_logprobs``), as OpenAI allows."""
MAX_LOGIT_BIAS = 300
"""Most entries in ``logit_bias`` (OpenAI's limit)."""
MAX_STOP_TOKEN_IDS = 64
MAX_GUIDED_CHARS = 64 * 1024
"""Ceiling on a structured-output spec (a JSON schema, regex, grammar or choice list)."""
MAX_TOKEN_ID = 2**31 - 1

MODEL_OPTIONS: dict[str, str] = {
    "n": "several choices per request (n > 1)",
    "logprobs": "per-token log-probabilities",
    "top_logprobs": "the most likely alternatives per token (top_logprobs > 0)",
    "presence_penalty": "presence penalty",
    "frequency_penalty": "frequency penalty",
    "repetition_penalty": "repetition penalty",
    "min_p": "min-p sampling",
    "logit_bias": "logit bias",
    "min_tokens": "a minimum number of tokens",
    "ignore_eos": "generating past the end-of-sequence token",
    "guided": "structured output (response_format, guided_*)",
}
"""Decode-loop options a model version must declare (``manifest.json`` ``"request_options"``)
before preprocess lets a request use them; a request using another is refused
(unsupported_parameter) naming the field, so an option is never silently ignored."""

V2_FIELDS = (
    "prompt_token_ids",
    "n",
    "logprobs",
    "top_logprobs",
    "presence_penalty",
    "frequency_penalty",
    "repetition_penalty",
    "min_p",
    "logit_bias",
    "min_tokens",
    "ignore_eos",
    "stop_token_ids",
    "guided",
)
"""Fields added by schema v2."""


class ErrorCode(StrEnum):
    """Stable codes of ``GenerationResult.error.code`` (and of the DLQ's reason header)."""

    INVALID_ENCODING = "invalid_encoding"
    """The value is not valid UTF-8."""
    INVALID_JSON = "invalid_json"
    """The value is not JSON, or not a JSON object."""
    REQUEST_TOO_LARGE = "request_too_large"
    """The value is larger than preprocess accepts (``GENWIRE_PREPROCESS_MAX_REQUEST_BYTES``)."""
    INVALID_REQUEST = "invalid_request"
    """Wrong types, unknown or malformed fields."""
    MISSING_PROMPT = "missing_prompt"
    """Neither ``prompt`` nor ``messages`` (or both, or empty)."""
    OUT_OF_RANGE = "out_of_range"
    """A parameter outside its range (max_tokens, temperature, top_p, top_k, seed, stop, n,
    top_logprobs, penalties, min_p, logit_bias, min_tokens; n × max_tokens over the budget)."""
    UNSUPPORTED_PARAMETER = "unsupported_parameter"
    """A parameter genwire (or the served model version) does not honour: refused, never
    ignored; the message and ``param`` name it."""
    UNSUPPORTED_SCHEMA_VERSION = "unsupported_schema_version"
    """``schema_version`` is not one this deployment reads."""
    CONTEXT_LENGTH_EXCEEDED = "context_length_exceeded"
    """Prompt tokens + max_tokens (sent; else + min_tokens, at least 1) exceed the model's
    context length."""
    MODEL_NOT_FOUND = "model_not_found"
    """No such model (or version) in the model repository."""
    MODEL_NOT_LOADED = "model_not_loaded"
    """The model (version) exists in the repository but Triton is not serving it."""
    CONTENT_FILTERED = "content_filtered"
    """The input filter rejected the prompt (the message names the rule)."""
    DEADLINE_EXCEEDED = "deadline_exceeded"
    """The request's deadline passed before its work could start."""
    IDEMPOTENCY_CONFLICT = "idempotency_conflict"
    """The request id was already used for a different request (another fingerprint); also a
    record refused before its claim (unparseable, say) under an id another request holds."""
    UNAVAILABLE = "unavailable"
    """A dependency (Triton) stayed unavailable through every retry."""
    INFERENCE_FAILED = "inference_failed"
    """The model server answered with an error."""
    INTERNAL = "internal"
    """A bug: the message says what failed."""


ERROR_HTTP_STATUS: dict[str, int] = {
    ErrorCode.INVALID_ENCODING: 400,
    ErrorCode.INVALID_JSON: 400,
    ErrorCode.REQUEST_TOO_LARGE: 413,
    ErrorCode.INVALID_REQUEST: 400,
    ErrorCode.MISSING_PROMPT: 400,
    ErrorCode.OUT_OF_RANGE: 400,
    ErrorCode.UNSUPPORTED_PARAMETER: 400,
    ErrorCode.UNSUPPORTED_SCHEMA_VERSION: 400,
    ErrorCode.CONTEXT_LENGTH_EXCEEDED: 400,
    ErrorCode.MODEL_NOT_FOUND: 404,
    ErrorCode.MODEL_NOT_LOADED: 503,
    ErrorCode.CONTENT_FILTERED: 422,
    ErrorCode.DEADLINE_EXCEEDED: 504,
    ErrorCode.IDEMPOTENCY_CONFLICT: 409,
    ErrorCode.UNAVAILABLE: 503,
    ErrorCode.INFERENCE_FAILED: 502,
    ErrorCode.INTERNAL: 500,
}
"""The HTTP status an entry point should answer for each code (unknown codes: 500)."""

# Codes only an entry point (the gateway) raises: no pipeline result carries them. Defined here
# so the monitor classifies them without importing the gateway.
CANCELLED = "cancelled"
"""The request was cancelled: its caller hung up or asked for it."""
NOT_FOUND = "not_found"
"""No such request id (or its result expired)."""
INVALID_API_KEY = "invalid_api_key"
"""No API key, or a malformed, unknown or revoked one (401)."""
PERMISSION_DENIED = "permission_denied"
"""A valid key without the scope the route needs (403)."""
RATE_LIMITED = "rate_limit_exceeded"
"""The key's requests or tokens per minute are used up (429, ``Retry-After``)."""
QUOTA_EXCEEDED = "insufficient_quota"
"""The key's tokens per day are used up (429, ``Retry-After``)."""
REQUEST_TIMEOUT = "request_timeout"
"""The HTTP body did not arrive within the gateway's ``body_read_timeout_s`` (408; HTTP only)."""

GATEWAY_ERROR_HTTP_STATUS: dict[str, int] = {
    CANCELLED: 499,
    NOT_FOUND: 404,
    INVALID_API_KEY: 401,
    PERMISSION_DENIED: 403,
    RATE_LIMITED: 429,
    QUOTA_EXCEEDED: 429,
    REQUEST_TIMEOUT: 408,
}
"""The HTTP status of each entry-point-only code (499: nginx's "client closed request")."""

_HTTP_STATUS = {**ERROR_HTTP_STATUS, **GATEWAY_ERROR_HTTP_STATUS}


def http_status(code: str) -> int:
    """The HTTP status an entry point answers for ``code`` (unknown codes: 500)."""
    return _HTTP_STATUS.get(code, 500)


RequestId = Annotated[str, StringConstraints(pattern=REQUEST_ID_PATTERN)]
StopString = Annotated[str, StringConstraints(min_length=1, max_length=MAX_STOP_CHARS)]
MetadataKey = Annotated[str, StringConstraints(min_length=1, max_length=64)]
MetadataValue = Annotated[str, StringConstraints(max_length=512)]
TokenId = Annotated[int, Field(ge=0, le=MAX_TOKEN_ID)]
BiasKey = Annotated[str, StringConstraints(pattern=r"^[0-9]{1,10}$")]
Bias = Annotated[float, Field(ge=-100.0, le=100.0)]


class GenerationRequest(BaseModel):
    """One generation request: a ``prompt`` (completion) or ``messages`` (chat), plus sampling."""

    model_config = ConfigDict(
        extra="forbid",
        strict=True,  # "64" is not 64: wrong types are errors, not guesses
        json_schema_extra={"$id": "https://genwire.dev/schemas/request.v2.json"},
        title="genwire request v2",
    )

    schema_version: Literal[1, 2] = Field(
        2,
        description="Version of this schema (1 is still read: no v2 field may be set). "
        "Omitted: 2 if a v2 field is set, else 1.",
    )
    request_id: RequestId | None = Field(
        None,
        description="Caller's id (also the Kafka key); assigned by preprocess when missing.",
    )
    model: str | None = Field(
        None,
        min_length=1,
        max_length=128,
        description="Model name in the model repository; default: the deployment's default.",
    )
    model_version: str | None = Field(
        None,
        pattern=r"^[0-9]+$",
        description="Model version (a repository version number); default: the latest.",
    )
    prompt: str | None = Field(
        None, min_length=1, max_length=MAX_PROMPT_CHARS, description="Completion prompt."
    )
    prompt_token_ids: list[TokenId] | None = Field(
        None,
        min_length=1,
        max_length=MAX_TOKENS_CEILING * 4,
        description="v2. A completion prompt given as token ids (instead of ``prompt``).",
    )
    messages: list[ChatMessage] | None = Field(
        None,
        min_length=1,
        max_length=MAX_MESSAGES,
        description="Chat turns, rendered with the model's chat template.",
    )
    max_tokens: int = Field(
        DEFAULT_MAX_TOKENS,
        ge=1,
        le=MAX_TOKENS_CEILING,
        description="Most tokens to generate. Not sent: 64, but at least min_tokens and at most "
        "what the model's context leaves after the prompt.",
    )
    temperature: float = Field(
        1.0, ge=0.0, le=2.0, description="Sampling temperature; 0 is greedy."
    )
    top_p: float = Field(1.0, gt=0.0, le=1.0, description="Nucleus sampling mass.")
    top_k: int = Field(0, ge=0, le=1000, description="Top-k sampling; 0 disables it.")
    seed: int | None = Field(
        None,
        ge=0,
        le=2**63 - 1,
        description="Sampling seed; default: derived from the request id, so a redelivered "
        "request regenerates the same text.",
    )
    stop: StopString | list[StopString] | None = Field(
        None, description=f"Up to {MAX_STOP} strings that end the text (not included)."
    )
    stream: bool = Field(False, description="Also publish text chunks on genwire.tokens.")
    metadata: dict[MetadataKey, MetadataValue] = Field(
        default_factory=dict,
        max_length=MAX_METADATA,
        description="Caller's labels, carried to the result.",
    )
    deadline_ms: float | None = Field(
        None,
        gt=0,
        description="Absolute deadline (ms since the epoch): no work starts after it, "
        "generation stops at it.",
    )
    received_ms: float | None = Field(
        None, gt=0, description="When the entry point received it (ms since the epoch)."
    )
    # -- v2: decode-loop options (honoured by the model, or refused by preprocess) ------------
    n: int = Field(1, ge=1, le=MAX_N, description="v2. Choices to generate (sharing a prefill).")
    logprobs: bool = Field(False, description="v2. Return each generated token's logprob.")
    top_logprobs: int = Field(
        0,
        ge=0,
        le=MAX_TOP_LOGPROBS,
        description="v2. Also the most likely alternatives per token (needs ``logprobs``).",
    )
    presence_penalty: float = Field(
        0.0, ge=-2.0, le=2.0, description="v2. Penalise tokens already generated (once each)."
    )
    frequency_penalty: float = Field(
        0.0, ge=-2.0, le=2.0, description="v2. Penalise tokens by how often they were generated."
    )
    repetition_penalty: float = Field(
        1.0,
        gt=0.0,
        le=10.0,
        description="v2. Divide (multiply, if negative) the logits of tokens of the prompt or "
        "output; 1 disables it.",
    )
    min_p: float = Field(
        0.0, ge=0.0, le=1.0, description="v2. Drop tokens below min_p × the top token's prob."
    )
    logit_bias: dict[BiasKey, Bias] = Field(
        default_factory=dict,
        max_length=MAX_LOGIT_BIAS,
        description="v2. Token id (a decimal string) → bias added to its logit (-100..100).",
    )
    min_tokens: int = Field(
        0,
        ge=0,
        le=MAX_TOKENS_CEILING,
        description="v2. Generate at least this many tokens before any stop (≤ max_tokens).",
    )
    ignore_eos: bool = Field(False, description="v2. Keep generating past end-of-sequence.")
    stop_token_ids: list[TokenId] = Field(
        default_factory=list,
        max_length=MAX_STOP_TOKEN_IDS,
        description="v2. Token ids that end the generation (besides the model's own EOS).",
    )
    guided: Guided | None = Field(
        None,
        description="v2. Structured output: only text the constraint allows is generated.",
    )

    @field_validator("schema_version", mode="before")
    @classmethod
    def _integer_version(cls, value: Any) -> Any:
        # A Literal matches by equality, so true and 2.0 would pass as 1 and 2: strict means int.
        if isinstance(value, bool) or not isinstance(value, int):
            raise PydanticKnownError("int_type")
        return value

    @model_validator(mode="after")
    def _one_input(self) -> GenerationRequest:
        inputs = [self.prompt, self.messages, self.prompt_token_ids]
        if sum(i is not None for i in inputs) != 1:
            raise PydanticCustomError(
                ErrorCode.MISSING_PROMPT.value,
                "exactly one of 'prompt', 'prompt_token_ids' or 'messages' is required",
            )
        if isinstance(self.stop, list) and len(self.stop) > MAX_STOP:
            raise PydanticCustomError(
                ErrorCode.OUT_OF_RANGE.value, "'stop' takes at most {n} strings", {"n": MAX_STOP}
            )
        used = self.v2_fields_used()
        if "schema_version" not in self.model_fields_set:
            self.schema_version = 2 if used else 1
        elif self.schema_version == 1 and used:
            raise PydanticCustomError(
                ErrorCode.INVALID_REQUEST.value,
                "'{field}' needs schema_version 2 (this record says 1)",
                {"field": used[0]},
            )
        if self.top_logprobs and not self.logprobs:
            raise PydanticCustomError(
                ErrorCode.OUT_OF_RANGE.value, "'top_logprobs' needs 'logprobs' to be true"
            )
        if not self.max_tokens_sent():
            self._default_max_tokens()
        elif self.min_tokens > self.max_tokens:
            raise PydanticCustomError(
                ErrorCode.OUT_OF_RANGE.value,
                "'min_tokens' ({min}) exceeds 'max_tokens' ({max})",
                {"min": self.min_tokens, "max": self.max_tokens},
            )
        if self.logit_bias:
            self._one_bias_per_token()
        if self.guided is not None and len(self.guided.spec) > MAX_GUIDED_CHARS:
            raise PydanticCustomError(
                ErrorCode.OUT_OF_RANGE.value,
                "'guided.spec' is {n} characters; the limit is {limit}",
                {"n": len(self.guided.spec), "limit": MAX_GUIDED_CHARS},
            )
        return self

    def max_tokens_sent(self) -> bool:
        """Whether the caller sent ``max_tokens``: a default is fitted to the prompt by
        preprocess, never refused (``DEFAULT_MAX_TOKENS``)."""
        return "max_tokens" in self.model_fields_set

    def _default_max_tokens(self) -> None:
        """Raise the unsent ``max_tokens`` to ``min_tokens``: what the gateway budgets and
        preprocess starts from (only the context, once tokenized, lowers it)."""
        if self.min_tokens > self.max_tokens:
            self.max_tokens = self.min_tokens
            self.model_fields_set.discard("max_tokens")  # still a default, not the caller's

    def _one_bias_per_token(self) -> None:
        """Refuse two keys naming one token ("01" and "1"): one would silently replace the other
        (which one depends on the order), and so would the request's fingerprint."""
        seen: dict[int, str] = {}
        for key in self.logit_bias:
            first = seen.setdefault(int(key), key)
            if first != key:
                raise PydanticCustomError(
                    ErrorCode.INVALID_REQUEST.value,
                    '\'logit_bias\' names token {token} twice (keys "{first}" and "{key}")',
                    {"token": int(key), "first": first, "key": key},
                )

    def v2_fields_used(self) -> list[str]:
        """The v2 fields set to something other than their default."""
        defaults = _v2_defaults()
        return [name for name in V2_FIELDS if getattr(self, name) != defaults[name]]

    def model_options(self) -> list[str]:
        """The ``MODEL_OPTIONS`` this request uses (the model version must declare each)."""
        used = []
        if self.n > 1:
            used.append("n")
        if self.logprobs:
            used.append("logprobs")
        if self.top_logprobs > 0:
            used.append("top_logprobs")
        if self.presence_penalty != 0.0:
            used.append("presence_penalty")
        if self.frequency_penalty != 0.0:
            used.append("frequency_penalty")
        if self.repetition_penalty != 1.0:
            used.append("repetition_penalty")
        if self.min_p > 0.0:
            used.append("min_p")
        if self.logit_bias:
            used.append("logit_bias")
        if self.min_tokens > 0:
            used.append("min_tokens")
        if self.ignore_eos:
            used.append("ignore_eos")
        if self.guided is not None:
            used.append("guided")
        return used

    def logit_bias_ids(self) -> dict[int, float]:
        """``logit_bias`` with integer token ids."""
        return {int(k): v for k, v in self.logit_bias.items()}

    def stop_list(self) -> list[str]:
        """``stop`` as a list (OpenAI accepts one string or a list)."""
        if self.stop is None:
            return []
        return [self.stop] if isinstance(self.stop, str) else list(self.stop)

    def to_kafka(self) -> tuple[bytes, bytes]:
        """(key, value) to produce on ``genwire.requests``; needs ``request_id`` set."""
        if self.request_id is None:
            raise ValueError("set request_id before producing (it is the Kafka key)")
        # v2 fields left at their defaults are left out: a plain request stays a v1 record.
        unused = set(V2_FIELDS) - set(self.v2_fields_used())
        if not self.max_tokens_sent():  # left out too: preprocess must know it was not sent
            unused.add("max_tokens")
        value = self.model_dump_json(exclude_none=True, exclude_defaults=False, exclude=unused)
        return self.request_id.encode(), value.encode()


@functools.cache
def _v2_defaults() -> dict[str, Any]:
    """Each v2 field's default, computed once and only compared (pydantic's ``get_default``
    inspects a default factory's signature on every call: it cost ~0.2 ms per field set per
    call, three times per request in the gateway and again in preprocess)."""
    fields = GenerationRequest.model_fields
    return {name: fields[name].get_default(call_default_factory=True) for name in V2_FIELDS}


_RANGE_ERRORS = frozenset(
    {
        "greater_than",
        "greater_than_equal",
        "less_than",
        "less_than_equal",
        "too_long",
        "too_short",
        "string_too_long",
        "string_too_short",
    }
)
_SAMPLING_FIELDS = frozenset(
    {
        "max_tokens",
        "temperature",
        "top_p",
        "top_k",
        "seed",
        "stop",
        "n",
        "top_logprobs",
        "presence_penalty",
        "frequency_penalty",
        "repetition_penalty",
        "min_p",
        "logit_bias",
        "min_tokens",
        "stop_token_ids",
    }
)


# Fields that do not change what is generated: a repeat may differ in them.
_NOT_FINGERPRINTED = {
    "request_id",
    "stream",
    "deadline_ms",
    "received_ms",
    "metadata",
    "schema_version",
}


def fingerprint(request: GenerationRequest) -> str:
    """A digest of what the request asks for (its id, timing, streaming and metadata left out).

    The gateway and preprocess compare it under ``genwire.results.claim_key``: one rule for every
    entry point. v2 fields left at their defaults are left out, so a v1 request keeps the
    fingerprint it had before v2. An unsent ``max_tokens`` counts as its default (64, or
    ``min_tokens``), as before it could be told from a sent one: a gateway and a preprocess of
    either release (a rolling update), and claims made before it, still agree.
    """
    unused = set(V2_FIELDS) - set(request.v2_fields_used())
    if request.logit_bias:
        # A mapping: the same biases sent in another key order are the same request.
        ordered = dict(sorted(request.logit_bias.items(), key=lambda kv: int(kv[0])))
        request = request.model_copy(update={"logit_bias": ordered})
    canonical = request.model_dump_json(exclude=_NOT_FINGERPRINTED | unused)
    return hashlib.sha256(canonical.encode()).hexdigest()[:32]


def _classify(exc: ValidationError) -> tuple[ErrorCode, str, str | None]:
    """The most specific code for a validation failure, one readable line per problem, and the
    field of the first problem (OpenAI's ``param``)."""
    errors = exc.errors(include_url=False, include_input=False)
    codes: list[ErrorCode] = []
    param = _param_of(errors[0]) if errors else None
    for e in errors:
        loc = tuple(str(p) for p in e["loc"])
        kind = e["type"]
        field = loc[0] if loc else ""
        if kind in ("json_invalid", "json_type") or (not loc and kind == "model_type"):
            codes.append(ErrorCode.INVALID_JSON)
        elif kind in (ErrorCode.MISSING_PROMPT, ErrorCode.OUT_OF_RANGE):
            codes.append(ErrorCode(kind))
        elif field == "schema_version" and kind == "literal_error":
            codes.append(ErrorCode.UNSUPPORTED_SCHEMA_VERSION)
        elif field in ("prompt_token_ids", "stop_token_ids") and kind in _RANGE_ERRORS:
            codes.append(ErrorCode.OUT_OF_RANGE)
        elif field in ("prompt", "messages") and kind in ("too_short", "string_too_short"):
            codes.append(ErrorCode.MISSING_PROMPT)
        elif field in ("prompt", "messages") and kind in ("too_long", "string_too_long"):
            codes.append(ErrorCode.REQUEST_TOO_LARGE)
        elif field in _SAMPLING_FIELDS and kind in _RANGE_ERRORS:
            codes.append(ErrorCode.OUT_OF_RANGE)
        else:
            codes.append(ErrorCode.INVALID_REQUEST)
    # One code for the caller: the first specific one (invalid_request only when nothing else).
    code = next((c for c in codes if c != ErrorCode.INVALID_REQUEST), ErrorCode.INVALID_REQUEST)
    return code, describe_validation(exc, subject="request"), param


_NAMED_IN_MESSAGE = re.compile(r"'([a-z_.]+)'")


def _param_of(error: Any) -> str | None:
    """The field a validation problem is about: its location, or the field its message names
    (a whole-request check such as ``top_logprobs`` without ``logprobs``)."""
    loc = [str(p) for p in error["loc"] if not isinstance(p, int)]
    if loc:
        return loc[0]
    named = _NAMED_IN_MESSAGE.search(str(error.get("msg", "")))
    return named.group(1) if named else None


def encodable(text: str) -> str:
    """``text`` with each lone surrogate replaced by U+FFFD. JSON escapes such as ``\\ud800``
    decode to one (``json.loads`` accepts them), and no UTF-8 writer can encode it: a hint read
    from a refused record must not make its error result unpublishable."""
    try:
        text.encode()
    except UnicodeEncodeError:
        return text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
    return text


def request_id_hint(raw: bytes, key: bytes | None) -> str | None:
    """The request id of a record, even a malformed one: its key, else ``request_id`` in its JSON.

    Used to address an error result to the caller; never raises, and the id it returns can
    always be encoded (invalid UTF-8 in the key, a lone surrogate in the JSON: U+FFFD).
    """
    if key:
        return key.decode("utf-8", "replace")[:256]
    try:
        data = json.loads(raw)
    except (ValueError, RecursionError):
        return None
    rid = data.get("request_id") if isinstance(data, dict) else None
    return encodable(rid[:256]) if isinstance(rid, str) and rid else None


def parse_request(
    raw: bytes,
    *,
    key: bytes | None = None,
    fallback_id: str | None = None,
    max_bytes: int = MAX_REQUEST_BYTES,
) -> GenerationRequest:
    """Validate one Kafka value; raise ``PermanentError`` with an ``ErrorCode`` when it is bad.

    The key, when present, is the request id (it wins over ``request_id`` in the JSON, so a
    JSON ``request_id`` that is no request id does not refuse a record whose key is one);
    without either, ``fallback_id`` is used (preprocess passes one derived from the record's
    position, so a redelivery gets the same id).
    """
    if len(raw) > max_bytes:
        raise PermanentError(
            f"request is {len(raw)} bytes; the limit is {max_bytes}",
            code=ErrorCode.REQUEST_TOO_LARGE,
        )
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise PermanentError(
            f"request is not valid UTF-8 (byte {exc.start}: {exc.reason})",
            code=ErrorCode.INVALID_ENCODING,
        ) from None
    try:
        try:
            request = GenerationRequest.model_validate_json(raw)
        except ValidationError as exc:
            replaced = _with_key_id(raw, key, exc)
            if replaced is None:
                raise
            request = GenerationRequest.model_validate_json(replaced)
    except ValidationError as exc:
        code, message, param = _classify(exc)
        raise PermanentError(message, code=code, param=param) from None
    if key:
        try:
            key_id = key.decode("utf-8")
        except UnicodeDecodeError:
            raise PermanentError(
                "the record key (request id) is not valid UTF-8", code=ErrorCode.INVALID_REQUEST
            ) from None
        if re.fullmatch(REQUEST_ID_PATTERN, key_id) is None:
            raise PermanentError(
                f"the record key is not a valid request id (pattern {REQUEST_ID_PATTERN})",
                code=ErrorCode.INVALID_REQUEST,
            )
        request.request_id = key_id
    elif request.request_id is None:
        request.request_id = fallback_id
    return request


def _with_key_id(raw: bytes, key: bytes | None, exc: ValidationError) -> bytes | None:
    """``raw`` with its ``request_id`` replaced by the record key, when the key is a valid
    request id and ``exc`` (its validation as sent) faults that ``request_id``: the key wins, so
    the JSON's own id is never validated. None otherwise (``exc`` stands)."""
    if not key or not any(e["loc"][:1] == ("request_id",) for e in exc.errors()):
        return None
    try:
        key_id = key.decode("utf-8")
        data = json.loads(raw)
    except (ValueError, RecursionError):
        return None
    if re.fullmatch(REQUEST_ID_PATTERN, key_id) is None or not isinstance(data, dict):
        return None
    data["request_id"] = key_id
    return json.dumps(data).encode()


def validate_request(
    fields: Mapping[str, Any], *, max_bytes: int = MAX_REQUEST_BYTES
) -> tuple[GenerationRequest, bytes]:
    """Validate the fields of a request an entry point has already parsed from its own format
    (an OpenAI body, a proto message); return it with its Kafka value (its JSON).

    The same model and the same codes as ``parse_request``, without a JSON round trip; raises
    ``PermanentError``. ``request_id`` must be among the fields (it is the Kafka key).
    """
    try:
        request = GenerationRequest.model_validate(fields)
    except ValidationError as exc:
        code, message, param = _classify(exc)
        raise PermanentError(message, code=code, param=param) from None
    _, value = request.to_kafka()
    if len(value) > max_bytes:
        raise PermanentError(
            f"request is {len(value)} bytes; the limit is {max_bytes}",
            code=ErrorCode.REQUEST_TOO_LARGE,
        )
    return request, value


def json_schema() -> dict[str, Any]:
    """The JSON Schema of ``GenerationRequest`` (what ``request.v2.json`` holds)."""
    schema = GenerationRequest.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    return schema


def packaged_schema(version: int = SCHEMA_VERSION) -> dict[str, Any]:
    """The packaged ``genwire/schemas/request.v{version}.json``."""
    path = f"schemas/request.v{version}.json"
    text = resources.files("genwire").joinpath(path).read_text("utf-8")
    loaded: dict[str, Any] = json.loads(text)
    return loaded


if __name__ == "__main__":  # regenerate the packaged schema
    sys.stdout.write(json.dumps(json_schema(), indent=2, sort_keys=True) + "\n")
