"""OpenAI-compatible bodies: requests in, responses, stream chunks and errors out. Pure logic.

Only the shape is checked here (OpenAI's field forms and the parameters genwire cannot honour);
ranges and limits are checked by ``genwire.request``, exactly as preprocess checks them.
"""

from __future__ import annotations

import json
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from genwire.errors import describe_validation
from genwire.events import GenerationResult, Usage
from genwire.request import ErrorCode
from genwire_gateway.errors import GatewayError, openai_error_type

COMPLETION_PREFIX = "cmpl-"
CHAT_PREFIX = "chatcmpl-"
SSE_DONE = b"data: [DONE]\n\n"


class StreamOptions(BaseModel):
    """``stream_options``: ask for a last chunk with the usage."""

    model_config = ConfigDict(extra="ignore")
    include_usage: bool = False


class _Common(BaseModel):
    """Parameters shared by completions and chat completions."""

    # Unknown OpenAI parameters are ignored, like vLLM does; wrong types are errors.
    model_config = ConfigDict(extra="ignore", strict=True)

    model: str | None = None
    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = Field(None, description="Extension (vLLM's name): top-k sampling.")
    seed: int | None = None
    stop: str | list[str] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    n: int = 1
    metadata: dict[str, str] | None = None
    user: str | None = None

    def sampling(self) -> dict[str, Any]:
        """genwire request fields (None: not given, the pipeline's default applies)."""
        if self.n != 1:
            raise GatewayError("only n=1 is supported", code=ErrorCode.OUT_OF_RANGE)
        return {
            "model": self.model,
            "max_tokens": self.max_tokens,
            "temperature": self.temperature,
            "top_p": self.top_p,
            "top_k": self.top_k,
            "seed": self.seed,
            "stop": self.stop,
            "metadata": self.metadata,
        }

    @property
    def include_usage(self) -> bool:
        """Whether a streamed answer ends with a usage-only chunk."""
        return bool(self.stream_options and self.stream_options.include_usage)


class CompletionRequest(_Common):
    """``POST /v1/completions``."""

    prompt: str | list[str]
    echo: bool = False
    logprobs: int | None = None
    suffix: str | None = None
    best_of: int | None = None

    def fields(self) -> dict[str, Any]:
        """The genwire request fields of this body."""
        if isinstance(self.prompt, list):
            if len(self.prompt) != 1:
                raise GatewayError(
                    "prompt must be one string (batches of prompts are not supported)",
                    code=ErrorCode.INVALID_REQUEST,
                )
            prompt = self.prompt[0]
        else:
            prompt = self.prompt
        unsupported = [
            name
            for name, given in (
                ("echo", self.echo),
                ("logprobs", self.logprobs is not None),
                ("suffix", self.suffix is not None),
                ("best_of", self.best_of not in (None, 1)),
            )
            if given
        ]
        if unsupported:
            raise GatewayError(
                f"unsupported parameter(s): {', '.join(unsupported)}",
                code=ErrorCode.INVALID_REQUEST,
            )
        return {**self.sampling(), "prompt": prompt}


class ContentPart(BaseModel):
    """A text part of a chat message's content."""

    model_config = ConfigDict(extra="ignore", strict=True)
    type: Literal["text"]
    text: str


class Message(BaseModel):
    """A chat message; ``developer`` is OpenAI's newer name for ``system``."""

    model_config = ConfigDict(extra="ignore", strict=True)
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[ContentPart]

    def plain(self) -> dict[str, str]:
        """genwire's ChatMessage fields."""
        content = (
            self.content
            if isinstance(self.content, str)
            else "".join(part.text for part in self.content)
        )
        return {"role": "system" if self.role == "developer" else self.role, "content": content}


class ChatCompletionRequest(_Common):
    """``POST /v1/chat/completions``."""

    messages: list[Message]
    max_completion_tokens: int | None = None
    logprobs: bool = False

    def fields(self) -> dict[str, Any]:
        """The genwire request fields of this body."""
        if self.logprobs:
            raise GatewayError("unsupported parameter(s): logprobs", code=ErrorCode.INVALID_REQUEST)
        fields = self.sampling()
        if self.max_completion_tokens is not None:
            fields["max_tokens"] = self.max_completion_tokens
        fields["messages"] = [m.plain() for m in self.messages]
        return fields


def parse_body(model: type[CompletionRequest] | type[ChatCompletionRequest], raw: bytes) -> Any:
    """Parse an HTTP body; raise ``GatewayError`` with a readable message when it is malformed."""
    try:
        return model.model_validate_json(raw)
    except ValidationError as exc:
        errors = exc.errors(include_url=False, include_input=False)
        if any(e["type"] in ("json_invalid", "json_type") for e in errors):
            message = "the body is not a JSON object"
            raise GatewayError(message, code=ErrorCode.INVALID_JSON) from None
        message = describe_validation(exc, subject="body")
        raise GatewayError(message, code=ErrorCode.INVALID_REQUEST) from None


def completion_response(result: GenerationResult, *, created: int, model: str) -> dict[str, Any]:
    """The ``text_completion`` object of a finished request."""
    return {
        "id": COMPLETION_PREFIX + result.request_id,
        "object": "text_completion",
        "created": created,
        "model": result.model or model,
        "choices": [
            {
                "index": 0,
                "text": result.text,
                "logprobs": None,
                "finish_reason": result.finish_reason,
            }
        ],
        "usage": result.usage.counts(),
    }


def chat_response(result: GenerationResult, *, created: int, model: str) -> dict[str, Any]:
    """The ``chat.completion`` object of a finished request."""
    return {
        "id": CHAT_PREFIX + result.request_id,
        "object": "chat.completion",
        "created": created,
        "model": result.model or model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": result.text},
                "logprobs": None,
                "finish_reason": result.finish_reason,
            }
        ],
        "usage": result.usage.counts(),
    }


def completion_chunk(
    request_id: str,
    *,
    created: int,
    model: str,
    text: str,
    finish_reason: str | None = None,
) -> dict[str, Any]:
    """One streamed ``text_completion`` chunk."""
    return {
        "id": COMPLETION_PREFIX + request_id,
        "object": "text_completion",
        "created": created,
        "model": model,
        "choices": [{"index": 0, "text": text, "logprobs": None, "finish_reason": finish_reason}],
    }


def chat_chunk(
    request_id: str,
    *,
    created: int,
    model: str,
    delta: dict[str, str],
    finish_reason: str | None = None,
) -> dict[str, Any]:
    """One streamed ``chat.completion.chunk``."""
    return {
        "id": CHAT_PREFIX + request_id,
        "object": "chat.completion.chunk",
        "created": created,
        "model": model,
        "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}],
    }


def usage_chunk(
    request_id: str, *, chat: bool, created: int, model: str, usage: Usage
) -> dict[str, Any]:
    """The last chunk asked for by ``stream_options.include_usage``: no choices, the usage."""
    return {
        "id": (CHAT_PREFIX if chat else COMPLETION_PREFIX) + request_id,
        "object": "chat.completion.chunk" if chat else "text_completion",
        "created": created,
        "model": model,
        "choices": [],
        "usage": usage.counts(),
    }


def error_body(code: str, message: str, status: int) -> dict[str, Any]:
    """OpenAI's error object."""
    return {
        "error": {
            "message": message,
            "type": openai_error_type(status),
            "param": None,
            "code": code,
        }
    }


def sse(data: dict[str, Any]) -> bytes:
    """One server-sent event carrying ``data`` as compact JSON."""
    return b"data: " + json.dumps(data, separators=(",", ":")).encode() + b"\n\n"


def models_list(names: list[str], *, created: int = 0) -> dict[str, Any]:
    """``GET /v1/models``."""
    return {
        "object": "list",
        "data": [
            {"id": name, "object": "model", "created": created, "owned_by": "genwire"}
            for name in names
        ],
    }
