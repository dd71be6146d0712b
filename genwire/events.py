"""Typed events on the request path. Kafka values are their JSON; keys are request ids."""

from __future__ import annotations

import re
import time
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from genwire.topics import Topic

MAX_REQUEST_ID_CHARS = 128
"""The longest request id."""
REQUEST_ID_PATTERN = rf"^[A-Za-z0-9][A-Za-z0-9._:-]{{0,{MAX_REQUEST_ID_CHARS - 1}}}$"
"""Request ids: safe in Kafka keys, Redis keys, URLs and log lines (``genwire.request`` names
them for callers; defined here, below it, for ``ControlEvent``)."""

MAX_REASON_CHARS = 200
"""Of a cancel's reason (the caller's free text), what is kept: the gateway cuts it before
it redacts or publishes it, and ``ControlEvent`` cuts a longer one."""
MAX_ORIGIN_CHARS = 128
"""Longest gateway instance id a heartbeat may carry (inference keeps one entry per origin)."""


def now_ms() -> float:
    """Wall-clock milliseconds, the unit of every timestamp in events."""
    return time.time() * 1000.0


class Event(BaseModel):
    """Base of every event: each class names the topic it is published to."""

    model_config = ConfigDict(extra="forbid")
    TOPIC: ClassVar[Topic]

    request_id: str

    def key(self) -> bytes:
        """The Kafka key: the request id, so a request's events stay ordered."""
        return self.request_id.encode()


class ChatMessage(BaseModel):
    """One chat turn, OpenAI style."""

    model_config = ConfigDict(extra="forbid")
    role: Literal["system", "user", "assistant"]
    content: str


class Guided(BaseModel):
    """A structured-output constraint (OpenAI ``response_format``, vLLM's ``guided_*``)."""

    model_config = ConfigDict(extra="forbid")
    kind: Literal["json_object", "json_schema", "regex", "choice", "grammar"]
    spec: str = ""
    """JSON schema text, a regex, a JSON list of choices, or a grammar; empty for json_object."""


class TokenLogprob(BaseModel):
    """One generated token's log-probability and its most likely alternatives (token ids).

    Inference → postprocess (``GenerationChunk.logprobs``): ids only; postprocess turns them
    into ``OutputLogprob`` (token text) for callers.
    """

    token_id: int
    logprob: float
    top: list[tuple[int, float]] = Field(default_factory=list)
    """The ``top_logprobs`` most likely tokens at this step, most likely first (may include
    the chosen one, as OpenAI's do)."""


class ChoiceOutput(BaseModel):
    """Final chunk of a request with ``n > 1``: one choice's whole output."""

    index: int
    output_ids: list[int] = Field(default_factory=list)
    finish_reason: str | None = None
    logprobs: list[TokenLogprob] | None = None
    """Per token of ``output_ids`` when the request asked for logprobs."""
    completion_tokens: int | None = None
    """The model's count of this choice's tokens (an ending EOS or stop token included, which
    ``output_ids`` leaves out); None: ``len(output_ids)``."""


class TopLogprob(BaseModel):
    """One alternative of a generated token, as callers see it."""

    token: str
    token_id: int
    logprob: float
    bytes: list[int] | None = None
    """The token's UTF-8 bytes (OpenAI's ``bytes``)."""


class OutputLogprob(BaseModel):
    """A generated token's log-probability as callers see it (postprocess decodes the ids)."""

    token: str
    token_id: int
    logprob: float
    bytes: list[int] | None = None
    top: list[TopLogprob] = Field(default_factory=list)
    text_offset: int = 0
    """Character offset of the token in its choice's text (OpenAI completions' ``text_offset``)."""


class ResultChoice(BaseModel):
    """One choice of a result (``GenerationResult.choices``)."""

    index: int
    text: str = ""
    finish_reason: str | None = None
    logprobs: list[OutputLogprob] | None = None
    completion_tokens: int = 0


class Sampling(BaseModel):
    """Sampling parameters after validation (ranges are enforced by preprocess)."""

    max_tokens: int = 64
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    seed: int = 0
    stop: list[str] = Field(default_factory=list)
    stop_token_ids: list[int] = Field(default_factory=list)
    # Decode-loop options (issue 12): the model honours each one or preprocess refuses it.
    n: int = 1
    """Choices per request, sharing one prefill."""
    logprobs: bool = False
    """Return the chosen token's log-probability per generated token."""
    top_logprobs: int = 0
    """Also the ``top_logprobs`` most likely alternatives per token (0-20)."""
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    repetition_penalty: float = 1.0
    min_p: float = 0.0
    logit_bias: dict[int, float] = Field(default_factory=dict)
    min_tokens: int = 0
    ignore_eos: bool = False
    guided: Guided | None = None
    """Structured output: the decode loop only samples tokens the grammar allows."""


class ErrorInfo(BaseModel):
    """A clear error for the caller: a stable code and a human message."""

    code: str
    message: str
    param: str | None = None
    """The request field at fault, when one is (OpenAI's ``error.param``)."""


class Timings(BaseModel):
    """Wall-clock milestones (ms since the epoch) stamped by each stage."""

    received: float | None = None
    prepared: float | None = None
    inference_start: float | None = None
    first_token: float | None = None
    inference_end: float | None = None
    completed: float | None = None
    triton_queue_ms: float | None = None
    """Duration (not a milestone): time the request waited in Triton's queue."""
    triton_compute_ms: float | None = None
    """Duration (not a milestone): Triton's compute time for the request."""


class PreparedRequest(Event):
    """preprocess → inference: a validated, tokenized request."""

    TOPIC: ClassVar[Topic] = Topic.PREPARED
    model: str
    model_version: str = ""
    input_ids: list[int]
    sampling: Sampling
    stream: bool = False
    deadline_ms: float | None = None
    metadata: dict[str, str] = Field(default_factory=dict)
    timings: Timings = Field(default_factory=Timings)
    origin: str = ""
    """The gateway instance waiting for it (header ``genwire_origin``; empty: a Kafka client)."""
    keep: bool = False
    """The caller named it (idempotency key): finish it even if its gateway dies."""
    arm: str = ""
    """The policy arm that chose ``model_version`` (an alias such as ``champion``/``canary``,
    or ``pinned`` when the caller named the version); set once by preprocess."""
    shadow: bool = False
    """A shadow copy: its result goes to ``genwire.shadow`` only, never to a caller."""
    principal: str = ""
    """Who sent it: the API key's name (gateway) or the Kafka principal; for usage."""


class GenerationChunk(Event):
    """inference → postprocess: new token ids, or the final event of a generation."""

    TOPIC: ClassVar[Topic] = Topic.GENERATIONS
    index: int
    token_ids: list[int] = Field(default_factory=list)
    final: bool = False
    stream: bool = False
    model: str = ""
    model_version: str = ""
    finish_reason: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    mean_logprob: float | None = None
    sampling: Sampling | None = None
    error: ErrorInfo | None = None
    metadata: dict[str, str] = Field(default_factory=dict)
    timings: Timings = Field(default_factory=Timings)
    offset: int = 0
    """How many tokens of the generation came before this chunk's ``token_ids``."""
    output_ids: list[int] | None = None
    """Final chunk only: every generated token id, so the result never depends on having seen
    every intermediate chunk (redelivery, a postprocess restart)."""
    choice: int = 0
    """Which of the request's ``n`` choices these tokens belong to. With ``n > 1`` every choice
    is its own ordered stream of chunks: ``index`` and ``offset`` count per choice."""
    logprobs: list[TokenLogprob] | None = None
    """Per token of ``token_ids`` (or of ``output_ids`` on the final chunk) when asked for."""
    choices: list[ChoiceOutput] | None = None
    """Final chunk of a request with ``n > 1``: every choice's whole output (``output_ids``,
    ``logprobs`` and ``finish_reason`` of the chunk itself are then choice 0's, and
    ``completion_tokens`` counts the tokens of every choice). One final chunk per request."""
    arm: str = ""
    shadow: bool = False
    principal: str = ""


class TokenEvent(Event):
    """postprocess → callers: ordered text chunks of a streamed request, then a final one."""

    TOPIC: ClassVar[Topic] = Topic.TOKENS
    index: int
    text: str
    final: bool = False
    finish_reason: str | None = None
    choice: int = 0
    """Which of the request's ``n`` choices this text belongs to."""
    text_offset: int = 0
    """Character offset of ``text`` in the full result text: a reader that already holds N
    characters appends ``text[N - text_offset:]`` (exact dedupe after any redelivery)."""
    logprobs: list[OutputLogprob] | None = None
    """When asked for: the logprobs of the tokens this event completes (token-aligned: a
    piece held back for a stop string may carry the logprobs of tokens shown later)."""
    logprob_offset: int = 0
    """Index of ``logprobs[0]`` in the choice's list of logprobs (dedupe like ``text_offset``)."""


class Usage(BaseModel):
    """Token counts, OpenAI style."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0

    def counts(self) -> dict[str, int]:
        """The three counts as a caller gets them (OpenAI's ``usage``, the proto's ``Usage``):
        ``total_tokens`` is filled in when unset."""
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.total_tokens or self.prompt_tokens + self.completion_tokens,
        }


class GenerationResult(Event):
    """The final result of a request, or its error; stored in Redis and on ``genwire.results``."""

    TOPIC: ClassVar[Topic] = Topic.RESULTS
    model: str = ""
    model_version: str = ""
    text: str = ""
    finish_reason: str | None = None
    usage: Usage = Field(default_factory=Usage)
    timings: Timings = Field(default_factory=Timings)
    error: ErrorInfo | None = None
    metadata: dict[str, str] = Field(default_factory=dict)
    arm: str = ""
    """The policy arm that served it (see ``PreparedRequest.arm``)."""
    logprobs: list[OutputLogprob] | None = None
    """Choice 0's token logprobs, when the request asked for them."""
    choices: list[ResultChoice] = Field(default_factory=list)
    """Every choice when the request asked for ``n > 1`` (empty otherwise: ``text``,
    ``finish_reason`` and ``logprobs`` are the one choice). ``text`` is choice 0's."""

    def all_choices(self) -> list[ResultChoice]:
        """The choices, the single-choice case included."""
        if self.choices:
            return self.choices
        return [
            ResultChoice(
                index=0,
                text=self.text,
                finish_reason=self.finish_reason,
                logprobs=self.logprobs,
                completion_tokens=self.usage.completion_tokens,
            )
        ]


class ShadowResult(GenerationResult):
    """The result of a shadow copy (``PreparedRequest.shadow``): published on
    ``genwire.shadow`` only (same request id), never stored, never sent to a caller."""

    TOPIC: ClassVar[Topic] = Topic.SHADOW


class ControlEvent(Event):
    """A command every inference instance reads: cancel a request, or a gateway's heartbeat.

    ``heartbeat``: gateway instance ``origin`` is alive (``request_id`` is empty). Inference
    cancels the unnamed requests of an origin whose heartbeats stop (docs/architecture.md,
    *A gateway that dies*).
    """

    TOPIC: ClassVar[Topic] = Topic.CONTROL
    action: Literal["cancel", "heartbeat"]
    reason: str = Field("", max_length=MAX_REASON_CHARS)
    origin: str = Field("", max_length=MAX_ORIGIN_CHARS)

    @field_validator("request_id")
    @classmethod
    def _request_id(cls, value: str) -> str:
        """A request id, or empty (a heartbeat's): inference remembers early cancels by id,
        so an unbounded one (a direct producer's) would let a few records exhaust its memory."""
        if value and re.fullmatch(REQUEST_ID_PATTERN, value) is None:
            raise ValueError(f"request_id must be empty or match {REQUEST_ID_PATTERN}")
        return value

    @field_validator("reason", mode="before")
    @classmethod
    def _cut_reason(cls, value: Any) -> Any:
        """A longer reason is cut, not refused: an older gateway's cancel must still work."""
        return value[:MAX_REASON_CHARS] if isinstance(value, str) else value


def dump(event: Event) -> bytes:
    """Serialise an event to its Kafka value."""
    return event.model_dump_json(exclude_none=True).encode()


def load(model: type[Any], raw: bytes) -> Any:
    """Parse a Kafka value into ``model`` (raises pydantic's ValidationError)."""
    return model.model_validate_json(raw)
