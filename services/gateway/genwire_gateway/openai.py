"""OpenAI-compatible bodies: requests in, responses, stream chunks and errors out. Pure logic.

Every request field is honoured or refused: a field genwire does not know, or knows and cannot
honour, is a 400 ``unsupported_parameter`` naming it (``error.param``), never ignored. Only the
shape is checked here (OpenAI's field forms); ranges and limits are checked by
``genwire.request`` exactly as preprocess checks them, and whether the served model version
honours a decode-loop option by preprocess (``genwire.request.MODEL_OPTIONS``). docs/api.md
lists every field and what becomes of it.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from types import UnionType
from typing import Annotated, Any, ClassVar, Literal, Union, get_args, get_origin

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from genwire.events import GenerationResult, OutputLogprob, ResultChoice, Usage
from genwire.request import MAX_GUIDED_CHARS, MAX_METADATA, ErrorCode, MetadataValue
from genwire_gateway.errors import GatewayError, openai_error_type

COMPLETION_PREFIX = "cmpl-"
CHAT_PREFIX = "chatcmpl-"
SSE_DONE = b"data: [DONE]\n\n"
MAX_PROMPTS = 64
"""Most prompts in one ``/v1/completions`` batch."""
MAX_COMPLETION_LOGPROBS = 20
"""``logprobs`` of ``/v1/completions`` (OpenAI allows 5; vLLM and genwire 20)."""
_LABEL_VALUE: TypeAdapter[str] = TypeAdapter(MetadataValue)
"""A metadata value as the request schema bounds it (a field carried as a label is one)."""


def unsupported(param: str, why: str = "") -> GatewayError:
    """The 400 for a parameter genwire does not honour."""
    message = f"unsupported parameter '{param}'" + (f": {why}" if why else "")
    return GatewayError(message, code=ErrorCode.UNSUPPORTED_PARAMETER, param=param)


def _check_label(name: str, value: str) -> None:
    """Refuse a field carried as metadata whose value a metadata value could not be, naming
    the field (``genwire.request``'s bound, not a copy of it)."""
    try:
        _LABEL_VALUE.validate_python(value)
    except ValidationError as exc:
        problem = exc.errors(include_url=False)[0]["msg"]
        raise GatewayError(
            f"'{name}' is carried as metadata.{name}, a metadata value: {problem}",
            code=ErrorCode.INVALID_REQUEST,
            param=name,
        ) from None


class StreamOptions(BaseModel):
    """``stream_options``: ask for a last chunk with the usage."""

    model_config = ConfigDict(extra="forbid", strict=True)
    include_usage: bool | None = False
    include_obfuscation: bool | None = None
    """Honoured as ``False`` only: genwire adds no obfuscation padding."""


class JsonSchemaFormat(BaseModel):
    """``response_format.json_schema``."""

    model_config = ConfigDict(extra="forbid", strict=True)
    name: str
    description: str | None = None
    schema_: dict[str, Any] | None = Field(None, alias="schema")
    strict: bool | None = None


class ResponseFormat(BaseModel):
    """``response_format``: text, JSON mode or a JSON schema (enforced while decoding)."""

    model_config = ConfigDict(extra="forbid", strict=True)
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaFormat | None = None


# Fields genwire honours only at their "off" value (anything else: unsupported_parameter).
_OFF_ONLY: dict[str, tuple[tuple[Any, ...], str]] = {
    "suffix": ((None,), "insertion (suffix) is not supported"),
    "audio": ((None,), "audio output is not supported"),
    "functions": ((None, []), "function calling is not supported yet"),
    "function_call": ((None, "none"), "function calling is not supported yet"),
    "tools": ((None, []), "tool calling is not supported yet"),
    "tool_choice": ((None, "none"), "tool calling is not supported yet"),
    "parallel_tool_calls": ((None,), "tool calling is not supported yet"),
    "modalities": ((None, ["text"]), "only text output is supported"),
    "prediction": ((None,), "predicted outputs are not supported"),
    "reasoning_effort": ((None,), "the served models do not reason"),
    "verbosity": ((None,), "the served models do not reason"),
    "web_search_options": ((None,), "web search is not supported"),
    "store": ((None, False), "stored completions are not supported"),
    "service_tier": ((None, "auto", "default"), "only the default service tier exists"),
    "prompt_cache_key": ((None,), "there is no prompt cache to route by"),
    "prompt_cache_options": ((None,), "there is no prompt cache"),
    "prompt_cache_retention": ((None,), "there is no prompt cache"),
    "moderation": ((None,), "moderation is configured by the operator (input/output filters)"),
}


_GUIDED_PARAMS = (
    "guided",
    "response_format",
    "guided_json",
    "guided_regex",
    "guided_choice",
    "guided_grammar",
)
"""Names an error about the structured-output constraint may carry (preprocess names the
OpenAI field of the constraint's kind, genwire's request the ``guided`` field)."""


class _Common(BaseModel):
    """Parameters shared by completions and chat completions (OpenAI's, and vLLM's extras)."""

    # Unknown fields are refused (unsupported_parameter), never ignored; wrong types are errors.
    model_config = ConfigDict(extra="forbid", strict=True)

    model: str | None = None
    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    seed: int | None = None
    stop: str | list[str] | None = None
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    n: int | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    logit_bias: dict[str, float] | None = None
    user: str | None = None
    metadata: dict[str, str] | None = None
    """Caller's labels carried to the result (OpenAI's chat ``metadata``; also accepted by
    completions)."""
    response_format: ResponseFormat | None = None
    # vLLM's extra sampling parameters (``extra_body``).
    top_k: int | None = None
    min_p: float | None = None
    repetition_penalty: float | None = None
    min_tokens: int | None = None
    ignore_eos: bool | None = None
    stop_token_ids: list[int] | None = None
    guided_json: dict[str, Any] | str | None = None
    guided_regex: str | None = None
    guided_choice: list[str] | None = None
    guided_grammar: str | None = None
    # Known, honoured only when off (``_OFF_ONLY``).
    suffix: Any = None
    audio: Any = None
    functions: Any = None
    function_call: Any = None
    tools: Any = None
    tool_choice: Any = None
    parallel_tool_calls: Any = None
    modalities: Any = None
    prediction: Any = None
    reasoning_effort: Any = None
    verbosity: Any = None
    web_search_options: Any = None
    store: Any = None
    service_tier: Any = None
    prompt_cache_key: Any = None
    prompt_cache_options: Any = None
    prompt_cache_retention: Any = None
    moderation: Any = None

    def check_off(self) -> None:
        """Refuse the known parameters genwire cannot honour (naming the first one given)."""
        for name, (allowed, why) in _OFF_ONLY.items():
            if getattr(self, name) not in allowed:
                raise unsupported(name, why)
        if self.stream_options is not None:
            if self.stream_options.include_obfuscation:
                raise unsupported("stream_options.include_obfuscation", "no obfuscation padding")
            if not self.stream:
                raise GatewayError(
                    "'stream_options' is only allowed with 'stream': true",
                    code=ErrorCode.INVALID_REQUEST,
                    param="stream_options",
                )

    def guided(self) -> dict[str, str] | None:
        """The structured-output constraint (``response_format`` or one ``guided_*``)."""
        given: list[tuple[str, dict[str, str]]] = []
        fmt = self.response_format
        if fmt is not None and fmt.type != "json_schema" and fmt.json_schema is not None:
            raise GatewayError(  # a schema beside "text" or "json_object" would go unenforced
                f"response_format 'json_schema' is only allowed with type 'json_schema', "
                f"not '{fmt.type}'",
                code=ErrorCode.INVALID_REQUEST,
                param="response_format.json_schema",
            )
        if fmt is not None and fmt.type == "json_object":
            given.append(("response_format", {"kind": "json_object", "spec": ""}))
        elif fmt is not None and fmt.type == "json_schema":
            if fmt.json_schema is None or fmt.json_schema.schema_ is None:
                raise GatewayError(
                    "response_format json_schema needs 'json_schema.schema'",
                    code=ErrorCode.INVALID_REQUEST,
                    param="response_format",
                )
            spec = json.dumps(fmt.json_schema.schema_)
            given.append(("response_format", {"kind": "json_schema", "spec": spec}))
        if self.guided_json is not None:
            spec = (
                self.guided_json
                if isinstance(self.guided_json, str)
                else json.dumps(self.guided_json)
            )
            given.append(("guided_json", {"kind": "json_schema", "spec": spec}))
        if self.guided_regex is not None:
            given.append(("guided_regex", {"kind": "regex", "spec": self.guided_regex}))
        if self.guided_choice is not None:
            spec = json.dumps(self.guided_choice)
            given.append(("guided_choice", {"kind": "choice", "spec": spec}))
        if self.guided_grammar is not None:
            given.append(("guided_grammar", {"kind": "grammar", "spec": self.guided_grammar}))
        if len(given) > 1:
            raise GatewayError(
                f"give one structured-output constraint, not {', '.join(n for n, _ in given)}",
                code=ErrorCode.INVALID_REQUEST,
                param=given[1][0],
            )
        if not given:
            return None
        name, guided = given[0]
        if len(guided["spec"]) > MAX_GUIDED_CHARS:  # named as the caller gave it, not guided.spec
            raise GatewayError(
                f"'{name}' is {len(guided['spec'])} characters (as JSON); the limit is "
                f"{MAX_GUIDED_CHARS}",
                code=ErrorCode.OUT_OF_RANGE,
                param=name,
            )
        return guided

    def sampling(self) -> dict[str, Any]:
        """genwire request fields (left out when not given: the pipeline's default applies)."""
        self.check_off()
        metadata = self.metadata_fields()
        fields: dict[str, Any] = {
            "model": self.model,
            "max_tokens": self.max_tokens,
            "temperature": self.temperature,
            "top_p": self.top_p,
            "top_k": self.top_k,
            "seed": self.seed,
            "stop": self.stop,
            "n": self.n,
            "presence_penalty": self.presence_penalty,
            "frequency_penalty": self.frequency_penalty,
            "repetition_penalty": self.repetition_penalty,
            "min_p": self.min_p,
            "logit_bias": self.logit_bias,
            "min_tokens": self.min_tokens,
            "ignore_eos": self.ignore_eos,
            "stop_token_ids": self.stop_token_ids,
            "guided": self.guided(),
            "metadata": metadata or None,
        }
        return {k: v for k, v in fields.items() if v is not None}

    def carried_labels(self) -> dict[str, str]:
        """Fields carried to the result as metadata under their own name (``user``)."""
        return {"user": self.user} if self.user is not None else {}

    def metadata_fields(self) -> dict[str, str]:
        """The caller's labels carried to the result: ``metadata`` plus ``carried_labels``.

        A carried field is refused by its own name when it clashes with the caller's key of
        the same name (never overwritten) or breaks a metadata limit: the caller sent ``user``,
        not ``metadata``, and must learn which field to change."""
        labels = dict(self.metadata or {})
        own = len(labels)
        for name, value in self.carried_labels().items():
            if labels.get(name, value) != value:
                raise GatewayError(
                    f"'{name}' and metadata['{name}'] differ: '{name}' is carried as "
                    f"metadata.{name}; send one of them, or the same value in both",
                    code=ErrorCode.INVALID_REQUEST,
                    param=name,
                )
            _check_label(name, value)
            labels[name] = value
            if own <= MAX_METADATA < len(labels):  # the caller's own excess: its own error
                raise GatewayError(
                    f"'{name}' is carried as metadata.{name} and counts toward metadata's "
                    f"{MAX_METADATA} pairs: with it there are {len(labels)}",
                    code=ErrorCode.INVALID_REQUEST,
                    param=name,
                )
        return labels

    def caller_param(self, param: str | None) -> str | None:
        """The field of this body an error about genwire's field ``param`` is about: the
        pipeline names its own fields (``guided``, ``max_tokens``, ``prompt_token_ids``); the
        caller gets the one it sent (``response_format`` or ``guided_json``...,
        ``max_completion_tokens``, ``prompt``)."""
        if param is not None and (param in _GUIDED_PARAMS or param.startswith("guided.")):
            fmt = self.response_format
            if fmt is not None and fmt.type != "text":
                return "response_format"
            return next((n for n in _GUIDED_PARAMS[2:] if getattr(self, n) is not None), param)
        return param

    @property
    def include_usage(self) -> bool:
        """Whether a streamed answer ends with a usage-only chunk."""
        return bool(self.stream_options and self.stream_options.include_usage)

    @property
    def choices_per_prompt(self) -> int:
        """``n``."""
        return self.n or 1


class CompletionRequest(_Common):
    """``POST /v1/completions``: one prompt or a batch (strings or token-id lists)."""

    INPUT: ClassVar[str] = "prompt"
    prompt: str | list[str] | list[int] | list[list[int]]
    echo: bool | None = False
    logprobs: int | None = None
    best_of: int | None = None

    def prompts(self) -> list[dict[str, Any]]:
        """One dict of prompt fields per prompt of the batch."""
        p = self.prompt
        if isinstance(p, str):
            return [{"prompt": p}]
        if not p:
            raise GatewayError(
                "prompt is an empty list", code=ErrorCode.MISSING_PROMPT, param="prompt"
            )
        if all(isinstance(x, int) for x in p):
            return [{"prompt_token_ids": p}]
        if len(p) > MAX_PROMPTS:
            raise GatewayError(
                f"a batch holds at most {MAX_PROMPTS} prompts, not {len(p)}",
                code=ErrorCode.OUT_OF_RANGE,
                param="prompt",
            )
        empty = next((i for i, x in enumerate(p) if isinstance(x, list) and not x), None)
        if empty is not None:  # an empty prompt, like "" or []: not a range error on token ids
            raise GatewayError(
                f"prompt[{empty}] of the batch is an empty list of token ids",
                code=ErrorCode.MISSING_PROMPT,
                param=f"prompt[{empty}]" if len(p) > 1 else "prompt",  # as a batch's others
            )
        return [{"prompt": x} if isinstance(x, str) else {"prompt_token_ids": x} for x in p]

    def fields(self) -> dict[str, Any]:
        """The genwire request fields of this body (without the prompt)."""
        if self.best_of is not None and self.best_of != self.choices_per_prompt:
            raise unsupported("best_of", "best_of is supported only equal to n")
        if self.echo and self.logprobs is not None:
            raise unsupported("echo", "echo with logprobs (prompt logprobs) is not supported")
        if self.echo and any("prompt_token_ids" in p for p in self.prompts()):
            raise unsupported("echo", "echo needs text prompts (not token ids)")
        fields = self.sampling()
        if self.logprobs is not None:
            if not 0 <= self.logprobs <= MAX_COMPLETION_LOGPROBS:
                raise GatewayError(
                    f"logprobs must be 0..{MAX_COMPLETION_LOGPROBS}",
                    code=ErrorCode.OUT_OF_RANGE,
                    param="logprobs",
                )
            fields["logprobs"] = True
            fields["top_logprobs"] = self.logprobs
        return fields

    @property
    def wants_logprobs(self) -> bool:
        """Whether choices carry logprobs."""
        return self.logprobs is not None

    def caller_param(self, param: str | None) -> str | None:
        if param == "prompt_token_ids":  # token ids are sent as ``prompt``
            return "prompt"
        return super().caller_param(param)


class ContentPart(BaseModel):
    """A text part of a chat message's content."""

    model_config = ConfigDict(extra="forbid", strict=True)
    type: Literal["text"]
    text: str


class Message(BaseModel):
    """A chat message; ``developer`` is OpenAI's newer name for ``system``."""

    model_config = ConfigDict(extra="forbid", strict=True)
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

    INPUT: ClassVar[str] = "messages"
    messages: list[Message]
    max_completion_tokens: int | None = None
    logprobs: bool | None = None
    top_logprobs: int | None = None
    safety_identifier: str | None = None

    def carried_labels(self) -> dict[str, str]:
        labels = super().carried_labels()
        if self.safety_identifier is not None:
            labels["safety_identifier"] = self.safety_identifier
        return labels

    def fields(self) -> dict[str, Any]:
        """The genwire request fields of this body."""
        fields = self.sampling()
        if self.max_completion_tokens is not None:
            if self.max_tokens not in (None, self.max_completion_tokens):
                raise GatewayError(  # one of them would be ignored
                    f"'max_tokens' ({self.max_tokens}) and 'max_completion_tokens' "
                    f"({self.max_completion_tokens}) differ: they are the same limit (OpenAI's "
                    "older and newer name); send one of them, or the same value in both",
                    code=ErrorCode.INVALID_REQUEST,
                    param="max_tokens",
                )
            fields["max_tokens"] = self.max_completion_tokens
        if self.logprobs is not None:
            fields["logprobs"] = self.logprobs
        if self.top_logprobs is not None:
            fields["top_logprobs"] = self.top_logprobs
        fields["messages"] = [m.plain() for m in self.messages]
        return fields

    @property
    def wants_logprobs(self) -> bool:
        """Whether choices carry logprobs."""
        return bool(self.logprobs)

    def caller_param(self, param: str | None) -> str | None:
        sent_new_name = self.max_tokens is None and self.max_completion_tokens is not None
        if param == "max_tokens" and sent_new_name:
            return "max_completion_tokens"
        return super().caller_param(param)


_NOT_JSON = frozenset({"json_invalid", "json_type"})
_NOT_AN_OBJECT = frozenset({"model_type", "model_attributes_type"})
"""pydantic's error types of a JSON value that is not an object (at the root: the body)."""


def parse_body(model: type[CompletionRequest] | type[ChatCompletionRequest], raw: bytes) -> Any:
    """Parse an HTTP body; raise ``GatewayError`` with a readable message when it is malformed
    (the codes of docs/api.md's error table: not a JSON object ``invalid_json``, an unknown
    field or content part ``unsupported_parameter`` naming it, no prompt ``missing_prompt``).
    A UTF-8 byte order mark before the JSON is ignored (RFC 8259 allows it)."""
    try:
        return model.model_validate_json(raw.removeprefix(UTF8_BOM))
    except ValidationError as exc:
        errors = exc.errors(include_url=False)
        if any(_not_json(e) for e in errors):
            raise GatewayError(
                _not_json_message(errors, raw), code=ErrorCode.INVALID_JSON
            ) from None
        problems = _problems(model, errors)
        part = next((p for p in problems if _is_part_type(p)), None)
        if part is not None:
            raise unsupported(
                field_path(part.loc),
                f"content parts of type {repr(part.input)[:40]} are not supported (only 'text')",
            ) from None
        extra = [p for p in problems if p.type == "extra_forbidden"]
        if extra:
            name = field_path(extra[0].loc)
            raise unsupported(name, "genwire does not know this parameter (docs/api.md)") from None
        if any(_no_input(e, model.INPUT) for e in errors):
            raise GatewayError(
                f"'{model.INPUT}' is required: the body has none, or null",
                code=ErrorCode.MISSING_PROMPT,
                param=model.INPUT,
            ) from None
        message = "; ".join(f"{field_path(p.loc) or 'body'}: {p.msg}" for p in problems[:5])
        param = field_path(problems[0].loc) or None
        raise GatewayError(message, code=ErrorCode.INVALID_REQUEST, param=param) from None


UTF8_BOM = b"\xef\xbb\xbf"
_LONE_SURROGATE = re.compile(rb"\\u[dD][89a-fA-F][0-9a-fA-F]{2}")
"""A JSON escape of a UTF-16 surrogate (valid only as a high-low pair)."""


def _not_json_message(errors: Sequence[Any], raw: bytes) -> str:
    """What is wrong with a body that is not a JSON object: not one (a list, a string...),
    a lone surrogate escape (which the parser reports as a bad hex escape), or the parser's
    own words (their position, never the content)."""
    invalid = next((e for e in errors if e["type"] == "json_invalid"), None)
    if invalid is None:
        return "the body is not a JSON object"
    if "hex escape" in invalid["msg"] and _LONE_SURROGATE.search(raw):
        return (
            "the body is not valid JSON: it escapes a lone UTF-16 surrogate (\\ud800-\\udfff "
            "without its pair), which is not a Unicode character"
        )
    return f"the body is not valid JSON: {invalid['msg'].removeprefix('Invalid JSON: ')}"


# -- where a validation problem is, in the caller's terms -------------------------------------


@dataclass(frozen=True)
class _Problem:
    """One pydantic error, located in the caller's fields (``loc``: pydantic's union-member
    tags such as ``str`` or ``list[ContentPart]`` dropped); ``union``: the location of the
    first union it is under, ``member`` the member pydantic tried there."""

    loc: tuple[str | int, ...]
    type: str
    msg: str
    input: Any
    union: tuple[str | int, ...] | None
    member: str


def field_path(loc: Sequence[str | int]) -> str:
    """``loc`` as the caller writes it: ``messages[1].content`` (list items in brackets)."""
    out = ""
    for entry in loc:
        out += f"[{entry}]" if isinstance(entry, int) else (f".{entry}" if out else str(entry))
    return out


def _problems(model: type[BaseModel], errors: Sequence[Any]) -> list[_Problem]:
    """The errors worth telling, in the caller's fields: of a union, only the member that got
    furthest (the one the caller meant; several that got nowhere are one problem)."""
    located = [_located(model, e) for e in errors]
    members: dict[tuple[str | int, ...], dict[str, list[_Problem]]] = {}
    for p in located:
        if p.union is not None:
            members.setdefault(p.union, {}).setdefault(p.member, []).append(p)
    out: list[_Problem] = []
    for p in located:
        if p.union is None:
            out.append(p)
            continue
        tried = members.pop(p.union, None)
        if tried is not None:  # the union's first problem: it speaks for the union
            out.extend(_union_problems(p.union, tried))
    return out


def _union_problems(
    where: tuple[str | int, ...], tried: dict[str, list[_Problem]]
) -> list[_Problem]:
    """The problems of one union: those of the member that got furthest (the first such);
    when none got past the value's type, one problem naming every accepted type."""
    best = max(tried.values(), key=_progress)
    if _progress(best) > (len(where), False):
        return best
    first = best[0]
    wanted = [first.msg] + [
        p.msg.removeprefix("Input should be ")
        for m in tried.values()
        for p in m[:1]
        if p is not first
    ]
    return [dataclasses.replace(first, msg=" or ".join(dict.fromkeys(wanted)))]


def _progress(problems: list[_Problem]) -> tuple[int, bool]:
    """How far a union member got: its deepest problem, and whether one was more than a
    wrong type (the value was of the member's type)."""
    return max((len(p.loc), not p.type.endswith("_type")) for p in problems)


def _located(model: type[BaseModel], error: Any) -> _Problem:
    """``error`` located in the caller's fields: walk its location along ``model``'s types;
    right after a union, pydantic puts the member it tried, which no caller wrote."""
    kept: list[str | int] = []
    union: tuple[str | int, ...] | None = None
    member = ""
    types: list[Any] = [model]
    tagged = False
    for entry in error["loc"]:
        if tagged:  # a union member's tag: remembered, not part of the field's path
            tagged = False
            if union is None:
                union, member = tuple(kept), str(entry)
            continue
        kept.append(entry)
        inner = _inner(types, entry)
        types = inner or [Any]  # not a field of the model (an extra key): as sent
        tagged = len(inner) == 1 and len(_members(inner[0])) > 1
        if tagged:
            types = _members(inner[0])
    return _Problem(tuple(kept), error["type"], error["msg"], error.get("input"), union, member)


def _members(tp: Any) -> list[Any]:
    """The types a value of ``tp`` may have: a union's members (None left out: pydantic
    tags no member of ``X | None``), ``Annotated``'s type."""
    while get_origin(tp) is Annotated:
        tp = get_args(tp)[0]
    if get_origin(tp) in (Union, UnionType):
        return [m for arg in get_args(tp) if arg is not type(None) for m in _members(arg)]
    return [tp]


def _inner(types: Sequence[Any], entry: str | int) -> list[Any]:
    """The types at ``entry`` inside a value of one of ``types``: a model's field, a list's
    item, a dict's value (none: ``entry`` is none of those)."""
    out: list[Any] = []
    for tp in (m for t in types for m in _members(t)):
        origin, args = get_origin(tp), get_args(tp)
        if isinstance(tp, type) and issubclass(tp, BaseModel) and isinstance(entry, str):
            out += [f.annotation for n, f in tp.model_fields.items() if entry in (n, f.alias)]
        elif origin in (list, tuple) and isinstance(entry, int):
            out.append(args[0] if args else Any)
        elif origin is dict and isinstance(entry, str):
            out.append(args[1] if args else Any)
    return out


def _is_part_type(problem: _Problem) -> bool:
    """Whether ``problem`` is a chat content part of a type genwire does not take."""
    loc = problem.loc
    return (
        problem.type == "literal_error"
        and len(loc) == 5
        and (loc[0], loc[2], loc[4]) == ("messages", "content", "type")
    )


def _not_json(error: Any) -> bool:
    """Whether a validation error says the body is not JSON, or not a JSON object."""
    return error["type"] in _NOT_JSON or (not error["loc"] and error["type"] in _NOT_AN_OBJECT)


def _no_input(error: Any, field: str) -> bool:
    """Whether a validation error says ``field`` is missing or null: at the field itself, or
    at one member of its union (a str tag in the location; an int is a list item, not it)."""
    loc = error["loc"]
    if not loc or loc[0] != field:
        return False
    if error["type"] == "missing":
        return len(loc) == 1
    return error.get("input", ...) is None and all(isinstance(p, str) for p in loc)


# -- logprobs in OpenAI's shapes --------------------------------------------------------------


def completion_logprobs(
    logprobs: Sequence[OutputLogprob] | None, text_shift: int = 0
) -> dict[str, Any] | None:
    """``/v1/completions`` logprobs: parallel lists (``text_offset`` from the choice's text,
    shifted by an echoed prompt)."""
    if logprobs is None:
        return None
    return {
        "tokens": [lp.token for lp in logprobs],
        "token_logprobs": [lp.logprob for lp in logprobs],
        "top_logprobs": [_top_with_sampled(lp) for lp in logprobs],
        "text_offset": [lp.text_offset + text_shift for lp in logprobs],
    }


def _top_with_sampled(lp: OutputLogprob) -> dict[str, float]:
    """One step's ``top_logprobs`` of the legacy API: the ``logprobs`` most likely tokens and
    the sampled one (so up to ``logprobs + 1``; ``logprobs: 0`` gives the sampled one alone).
    A dict keys by text: alternatives that decode alike (byte tokens, "\ufffd") share one entry,
    as in OpenAI's; the sampled token's key holds its own logprob."""
    top = {alt.token: alt.logprob for alt in lp.top}
    top[lp.token] = lp.logprob
    return top


def chat_logprobs(logprobs: Sequence[OutputLogprob] | None) -> dict[str, Any] | None:
    """``/v1/chat/completions`` logprobs: ``content``, one entry per token."""
    if logprobs is None:
        return None
    return {
        "content": [
            {
                "token": lp.token,
                "logprob": lp.logprob,
                "bytes": lp.bytes,
                "top_logprobs": [
                    {"token": alt.token, "logprob": alt.logprob, "bytes": alt.bytes}
                    for alt in lp.top
                ],
            }
            for lp in logprobs
        ],
        "refusal": None,
    }


# -- responses ---------------------------------------------------------------------------------


def total_usage(usages: Iterable[Usage]) -> Usage:
    """The usage of several requests (the prompts of a batch) added up."""
    total = Usage()
    for usage in usages:
        counts = usage.counts()
        total.prompt_tokens += counts["prompt_tokens"]
        total.completion_tokens += counts["completion_tokens"]
        total.total_tokens += counts["total_tokens"]
    return total


def completion_response(
    results: GenerationResult | Sequence[GenerationResult],
    *,
    created: int,
    model: str,
    echo: Sequence[str] = (),
    logprobs: bool = False,
) -> dict[str, Any]:
    """The ``text_completion`` object of finished requests (one per prompt of a batch; the
    choices of prompt ``p`` are numbered from ``p × n``). ``model``: the name the caller asked
    for (else the default), as vLLM echoes it, not the result's."""
    results = [results] if isinstance(results, GenerationResult) else list(results)
    choices = []
    index = 0
    for p, result in enumerate(results):
        prefix = echo[p] if p < len(echo) else ""
        for choice in result.all_choices():
            choices.append(
                {
                    "index": index,
                    "text": prefix + choice.text,
                    "logprobs": completion_logprobs(choice.logprobs, len(prefix))
                    if logprobs
                    else None,
                    "finish_reason": choice.finish_reason,
                }
            )
            index += 1
    return {
        "id": COMPLETION_PREFIX + results[0].request_id,
        "object": "text_completion",
        "created": created,
        "model": model,  # the caller's name for it, as every stream chunk says (docs/api.md)
        "choices": choices,
        "usage": total_usage(r.usage for r in results).counts(),
    }


def chat_response(
    result: GenerationResult, *, created: int, model: str, logprobs: bool = False
) -> dict[str, Any]:
    """The ``chat.completion`` object of a finished request."""
    choices: list[ResultChoice] = result.all_choices()
    return {
        "id": CHAT_PREFIX + result.request_id,
        "object": "chat.completion",
        "created": created,
        "model": model,  # as completion_response
        "choices": [
            {
                "index": c.index,
                "message": {"role": "assistant", "content": c.text},
                "logprobs": chat_logprobs(c.logprobs) if logprobs else None,
                "finish_reason": c.finish_reason,
            }
            for c in choices
        ],
        "usage": result.usage.counts(),
    }


_NULL_USAGE: dict[str, Any] = {"usage": None}
"""OpenAI: with ``include_usage``, every chunk before the usage chunk says ``"usage": null``."""


def completion_chunk(
    request_id: str,
    *,
    created: int,
    model: str,
    text: str,
    finish_reason: str | None = None,
    index: int = 0,
    logprobs: dict[str, Any] | None = None,
    usage_null: bool = False,
) -> dict[str, Any]:
    """One streamed ``text_completion`` chunk (``usage_null``: with ``"usage": null``, as
    every chunk but the last has when ``stream_options.include_usage`` is set)."""
    chunk = {
        "id": COMPLETION_PREFIX + request_id,
        "object": "text_completion",
        "created": created,
        "model": model,
        "choices": [
            {"index": index, "text": text, "logprobs": logprobs, "finish_reason": finish_reason}
        ],
    }
    return chunk | _NULL_USAGE if usage_null else chunk


def chat_chunk(
    request_id: str,
    *,
    created: int,
    model: str,
    delta: dict[str, str],
    finish_reason: str | None = None,
    index: int = 0,
    logprobs: dict[str, Any] | None = None,
    usage_null: bool = False,
) -> dict[str, Any]:
    """One streamed ``chat.completion.chunk`` (``usage_null``: as ``completion_chunk``)."""
    chunk = {
        "id": CHAT_PREFIX + request_id,
        "object": "chat.completion.chunk",
        "created": created,
        "model": model,
        "choices": [
            {"index": index, "delta": delta, "logprobs": logprobs, "finish_reason": finish_reason}
        ],
    }
    return chunk | _NULL_USAGE if usage_null else chunk


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


def error_body(code: str, message: str, status: int, param: str | None = None) -> dict[str, Any]:
    """OpenAI's error object."""
    return {
        "error": {
            "message": message,
            "type": openai_error_type(status),
            "param": param,
            "code": code,
        }
    }


def sse(data: dict[str, Any]) -> bytes:
    """One server-sent event carrying ``data`` as compact JSON."""
    return b"data: " + json.dumps(data, separators=(",", ":")).encode() + b"\n\n"
