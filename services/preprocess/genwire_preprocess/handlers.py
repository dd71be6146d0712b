"""Pure async handlers of the preprocess service (no Kafka or HTTP imports).

GenerationRequest → PreparedRequest: resolve the model, apply the chat template, run the input
filter, tokenize, enforce the context limit, fix the seed, pin the model version, and refuse a
request id reused for another request. Invalid input raises ``PermanentError`` (DLQ and an
error result), outcomes such as a filtered prompt ``Rejection`` (an error result only); both
carry an ``ErrorCode``, and ``error_chunk`` turns either into the final
GenerationChunk that postprocess makes the caller's error result (stored and published like
any other result).

An error found before a record claims its request id (it cannot be parsed, its model is
unknown, its deadline passed) is no answer for that id when another request holds the id: it
becomes an ``idempotency_conflict`` (DLQ, never stored, never ending the holder's stream), so a
bad record reusing an id in flight cannot replace that request's result. The holder's own
record is told by its fingerprint, or, for a record refused unparsed, by the digest of its
value that the gateway claimed with the id (``genwire.results.claimed_digest``): a gateway
older than this preprocess may publish what this one refuses, and its caller gets the refusal.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import re
from contextvars import ContextVar

from opentelemetry import trace
from pydantic import BaseModel, ConfigDict

from genwire.errors import GenwireError, PermanentError, Rejection, RetryableError
from genwire.events import (
    REQUEST_ID_PATTERN,
    ChoiceOutput,
    ErrorInfo,
    GenerationChunk,
    PreparedRequest,
    Timings,
    now_ms,
)
from genwire.filters import ContentFilter
from genwire.policy import ARM_ATTRIBUTE, SHADOW_ARM
from genwire.request import (
    MAX_N,
    MAX_REQUEST_BYTES,
    ErrorCode,
    GenerationRequest,
    encodable,
    fingerprint,
    parse_request,
    request_id_hint,
)
from genwire.results import claimed_digest, claimed_fingerprint, published_digest
from genwire.telemetry import semconv as sc
from genwire.tokenization import AssetStore, ModelAssets
from genwire_preprocess.guided import GuidedChecker
from genwire_preprocess.hints import stream_and_n
from genwire_preprocess.options import (
    DEFAULT_MAX_LOGPROB_ENTRIES,
    check_options,
    sampling_of,
    shadow_sampling,
)
from genwire_preprocess.routing import FallbackHook, PolicyLookup, Route, Router
from genwire_preprocess.stores import Claims, ServedVersions

log = logging.getLogger(__name__)
_route: ContextVar[Route | None] = ContextVar("genwire_preprocess_route", default=None)

SEED_MASK = 2**63 - 1

HINT_PARSE_BYTES = 1024 * 1024
"""Largest refused value whose hints (``stream``, ``model``, ``n``) are read by parsing it
again; a larger one's ``stream`` and ``n`` are scanned for (``hints.stream_and_n``)."""


class RequestRecord(BaseModel):
    """A record of genwire.requests as the decoder read it: the request, or why it was refused.

    A refused record still reaches the handler (``Preprocessor.handle_record``), which alone can
    ask Redis whether its id belongs to another request before the refusal answers for the id.
    """

    model_config = ConfigDict(arbitrary_types_allowed=True, frozen=True)
    request: GenerationRequest | None = None
    refused: PermanentError | None = None
    raw: bytes = b""
    """The refused value (empty for a parsed record: not kept)."""
    key: bytes | None = None


def decode_record(
    raw: bytes, key: bytes | None, *, fallback_id: str, max_bytes: int
) -> RequestRecord:
    """``parse_request``, with its refusal kept for the handler instead of raised."""
    try:
        request = parse_request(raw, key=key, fallback_id=fallback_id, max_bytes=max_bytes)
    except PermanentError as exc:
        return RequestRecord.model_construct(refused=exc, raw=raw, key=key)
    return RequestRecord.model_construct(request=request)


def derive_seed(request_id: str) -> int:
    """A seed fixed by the request id: a redelivered request regenerates the same text."""
    digest = hashlib.blake2b(request_id.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") & SEED_MASK


class Preprocessor:
    """The preprocess stage's logic, with its long-lived state (tokenizers, filter)."""

    def __init__(
        self,
        assets: AssetStore,
        *,
        default_model: str,
        input_filter: ContentFilter | None = None,
        default_timeout_ms: float = 0.0,
        inline_tokenize_chars: int = 4096,
        claims: Claims | None = None,
        versions: ServedVersions | None = None,
        policies: PolicyLookup | None = None,
        max_generation_tokens: int = 32_768,
        max_logprob_entries: int = DEFAULT_MAX_LOGPROB_ENTRIES,
        route_fallback: bool = True,
        on_fallback: FallbackHook | None = None,
    ) -> None:
        self.assets = assets
        self.max_generation_tokens = max_generation_tokens
        """Budget of n × max_tokens per request (out_of_range beyond it)."""
        self.max_logprob_entries = max_logprob_entries
        """Budget of n × max_tokens × (1 + top_logprobs) per request with logprobs: what its
        result may hold (out_of_range beyond it)."""
        self.guided = GuidedChecker()
        """Compiles structured-output constraints: one that cannot compile never reaches Triton."""
        self.router = Router(
            assets,
            policies=policies,
            versions=versions,
            fallback=route_fallback,
            on_fallback=on_fallback,
        )
        self.shadows_skipped = 0
        """Shadow copies not made (the shadow version cannot take the request): logged."""
        self.claims = claims
        self.routes_reused = 0
        """Redelivered requests prepared on their first route though it now resolves elsewhere."""
        self.versions = versions
        self.default_model = default_model
        self.input_filter = input_filter or ContentFilter([])
        self.default_timeout_ms = default_timeout_ms
        self.inline_tokenize_chars = inline_tokenize_chars

    async def handle_record(self, record: RequestRecord) -> list[PreparedRequest]:
        """The consumer's handler: ``handle_routed`` for a parsed record; for a refused one,
        its refusal (an ``idempotency_conflict`` when another request holds its id)."""
        if record.request is not None:
            return await self.handle_routed(record.request)
        assert record.refused is not None  # the decoder sets one of the two
        if self.claims is None:  # no claims to look at: nothing held, the refusal stands
            raise record.refused
        request_id = request_id_hint(record.raw, record.key)
        if request_id is not None and re.fullmatch(REQUEST_ID_PATTERN, request_id):
            mine = await self._own_fingerprint(record)
            await self._conflict_if_held(request_id, mine, record.refused, record.raw)
        raise record.refused

    async def _own_fingerprint(self, record: RequestRecord) -> str | None:
        """A refused record's fingerprint where it may hold its id's claim: one the gateway
        claimed and produced, which only this stage's lower size limit refused (it parses
        within the schema's own limit, the gateway's). None for any other refused record."""
        refused = record.refused
        if refused is None or refused.code != ErrorCode.REQUEST_TOO_LARGE:
            return None
        if self.claims is None or len(record.raw) > MAX_REQUEST_BYTES:
            return None
        try:
            request = await asyncio.to_thread(parse_request, record.raw, key=record.key)
        except PermanentError:
            return None
        return fingerprint(request)

    async def _conflict_if_held(
        self, request_id: str, mine: str | None, err: GenwireError, raw: bytes | None = None
    ) -> None:
        """Raise an ``idempotency_conflict`` for ``err``, an error found before this record
        claimed ``request_id``, when another request holds the id: ``err`` must not become
        that request's stored result. The holder's own record has its fingerprint ``mine``,
        or is the very value the gateway claimed the id for (``raw``, a record refused
        unparsed; never over the gateway's size limit)."""
        if self.claims is None or not request_id:
            return
        held = await self.claims.holder(request_id)
        if held is None or claimed_fingerprint(held) == mine:
            return
        digest = claimed_digest(held)  # hashed below only where a gateway claimed a value
        if (
            digest is not None
            and raw is not None
            and len(raw) <= MAX_REQUEST_BYTES
            and published_digest(raw) == digest
        ):
            return
        raise PermanentError(
            f"request id {request_id!r} belongs to a different request; this record was "
            f"refused without answering for it ({err.code}: {err.message})",
            code=ErrorCode.IDEMPOTENCY_CONFLICT,
        ) from None

    async def handle(self, request: GenerationRequest) -> PreparedRequest:
        """Validate what needs the model, template, filter, tokenize; emit PreparedRequest."""
        now = now_ms()
        request_id = request.request_id or ""
        received = request.received_ms or now
        deadline = request.deadline_ms
        if deadline is None and self.default_timeout_ms > 0:
            deadline = received + self.default_timeout_ms
        span = trace.get_current_span()
        span.set_attribute(sc.REQUEST_ID, request_id)
        try:
            route = await self._route_before_claim(request, deadline, now, span)
        except RetryableError:
            raise
        except GenwireError as exc:  # found before the claim: maybe another request's id
            await self._conflict_if_held(request_id, fingerprint(request), exc)
            raise
        if self.claims is not None:
            mine = fingerprint(request)
            held, stored = await self.claims.claim_routed(request_id, mine, route.encode())
            if held != mine:
                raise PermanentError(
                    f"request id {request_id!r} was already used for a different request",
                    code=ErrorCode.IDEMPOTENCY_CONFLICT,
                )
            route = self._first_route(request_id, route, stored)
        _route.set(route)
        model = route.model
        span.set_attribute(sc.GEN_AI_REQUEST_MODEL, model)
        span.set_attribute(ARM_ATTRIBUTE, route.arm)
        assets = await self.assets.aget(model, route.version or None)
        span.set_attribute(sc.MODEL_VERSION, assets.version)

        check_options(
            request,
            assets,
            max_generation_tokens=self.max_generation_tokens,
            max_logprob_entries=self.max_logprob_entries,
        )
        await self.guided.check(request.guided, assets)
        if request.prompt_token_ids is not None:  # the filter still reads what they say
            self._filter(assets.decode(list(request.prompt_token_ids)), span)
            input_ids = list(request.prompt_token_ids)
        elif request.messages is not None:
            chat = [m.model_dump() for m in request.messages]
            self._filter(" \n".join(m["content"] for m in chat), span)
            text = assets.render_chat(chat)
            input_ids = await self._encode(assets, text, False)  # the template writes specials
        else:
            text = request.prompt or ""
            self._filter(text, span)
            input_ids = await self._encode(assets, text, True)
        if not input_ids:
            raise PermanentError("the prompt encodes to no tokens", code=ErrorCode.MISSING_PROMPT)
        max_tokens = fit_max_tokens(request, len(input_ids), assets.context_length, model)
        seed = request.seed if request.seed is not None else derive_seed(request_id)
        span.set_attribute(sc.GEN_AI_INPUT_TOKENS, len(input_ids))
        return PreparedRequest(
            request_id=request_id,
            model=model,
            model_version=assets.version,
            arm=route.arm,
            input_ids=input_ids,
            sampling=sampling_of(request, assets, seed, max_tokens=max_tokens),
            stream=request.stream,
            deadline_ms=deadline,
            metadata=dict(request.metadata),
            timings=Timings(received=received, prepared=now_ms()),
        )

    async def _route_before_claim(
        self, request: GenerationRequest, deadline: float | None, now: float, span: trace.Span
    ) -> Route:
        """The checks before the claim: the deadline, then the route (model and version)."""
        if deadline is not None and now >= deadline:
            raise Rejection(
                "the request's deadline passed before preprocessing",
                code=ErrorCode.DEADLINE_EXCEEDED,
            )
        model = request.model or self.default_model
        span.set_attribute(sc.GEN_AI_REQUEST_MODEL, model)
        # Routing (genwire.config's policy, else the served version) decides the version
        # once: a retry or redelivery regenerates on it, whatever is served by then. The first
        # route is stored beside the claim (one round trip): a redelivery after a policy
        # change reuses it instead of resolving again.
        return await self.router.route(
            model, request.request_id or "", dict(request.metadata), request.model_version or ""
        )

    def _first_route(self, request_id: str, route: Route, stored: str | None) -> Route:
        """The route stored for ``request_id`` first, when it differs from ``route``."""
        if stored is None or stored == route.encode():
            return route
        first = Route.decode(stored)
        if first is None or first.model != route.model:
            log.warning("request %s: unusable stored route %r, resolved again", request_id, stored)
            return route
        self.routes_reused += 1
        log.info(
            "request %s: redelivered after a policy change, prepared for version %s (%s) as "
            "first resolved, not %s (%s)",
            request_id,
            first.version,
            first.arm,
            route.version,
            route.arm,
        )
        return first

    async def handle_routed(self, request: GenerationRequest) -> list[PreparedRequest]:
        """``handle``, plus a shadow copy when the model's policy names a shadow version:
        same request id, ``shadow=True``, arm ``shadow``; its result goes to
        ``genwire.shadow`` only. A shadow copy that cannot be made (the version is missing,
        the prompt too long for it) is skipped and logged: the caller's request goes on."""
        token = _route.set(None)
        try:
            prepared = await self.handle(request)
            route = _route.get()
        finally:
            _route.reset(token)
        if route is None or not route.shadow:
            return [prepared]
        try:
            shadow = await self._shadow_copy(request, prepared, route.shadow)
        except GenwireError as exc:
            self.shadows_skipped += 1
            log.warning(
                "no shadow copy of %s on %s version %s: %s",
                prepared.request_id,
                prepared.model,
                route.shadow,
                exc.message,
            )
            return [prepared]
        return [prepared, shadow]

    async def _shadow_copy(
        self, request: GenerationRequest, prepared: PreparedRequest, version: str
    ) -> PreparedRequest:
        assets = await self.assets.aget(prepared.model, version)
        # The same options, or no copy: one the shadow version ignored would skew the comparison.
        sampling = shadow_sampling(
            request,
            assets,
            prepared.sampling,
            max_generation_tokens=self.max_generation_tokens,
            max_logprob_entries=self.max_logprob_entries,
        )
        await self.guided.check(request.guided, assets)
        if request.prompt_token_ids is not None:
            input_ids = list(prepared.input_ids)  # token ids: the same for every version
        elif request.messages is not None:
            text = assets.render_chat([m.model_dump() for m in request.messages])
            input_ids = await self._encode(assets, text, False)
        else:
            input_ids = await self._encode(assets, request.prompt or "", True)
        if len(input_ids) + prepared.sampling.max_tokens > assets.context_length:
            raise PermanentError(
                f"prompt + max_tokens exceed version {version}'s context length",
                code=ErrorCode.CONTEXT_LENGTH_EXCEEDED,
            )
        return prepared.model_copy(
            update={
                "model_version": assets.version,
                "input_ids": input_ids,
                "arm": SHADOW_ARM,
                "shadow": True,
                "sampling": sampling,
            }
        )

    def _filter(self, text: str, span: trace.Span) -> None:
        if not self.input_filter:
            return
        hit = self.input_filter.check(text)
        if hit is not None:
            span.set_attribute(sc.FILTER_HITS, 1)
            raise Rejection(  # an outcome for the caller, not poison for the DLQ
                f"the prompt was rejected by input filter rule {hit.rule!r}",
                code=ErrorCode.CONTENT_FILTERED,
            )

    async def _encode(self, assets: ModelAssets, text: str, special: bool) -> list[int]:
        # Short prompts encode in tens of microseconds: cheaper inline than a thread hop.
        if len(text) <= self.inline_tokenize_chars:
            return assets.encode(text, add_special_tokens=special)
        return await asyncio.to_thread(assets.encode, text, add_special_tokens=special)


def fit_max_tokens(
    request: GenerationRequest, prompt_tokens: int, context_length: int, model: str
) -> int:
    """The request's ``max_tokens`` once its prompt is tokenized: the caller's, refused when it
    does not fit the context; else the default, lowered to what the context leaves (never
    below ``min_tokens`` nor 1: a prompt that leaves less is refused)."""
    room = context_length - prompt_tokens
    if request.max_tokens_sent():
        if request.max_tokens <= room:
            return request.max_tokens
        # Neutral about the limit's name: chat callers send max_completion_tokens.
        asked = f"the completion's token limit ({request.max_tokens})"
    elif room >= max(1, request.min_tokens):
        return min(request.max_tokens, room)
    elif request.min_tokens > 0:
        asked = f"min_tokens ({request.min_tokens})"
    else:
        asked = "at least 1 token to generate"
    raise PermanentError(
        f"prompt ({prompt_tokens} tokens) + {asked} exceeds the context length of {model} "
        f"({context_length} tokens)",
        code=ErrorCode.CONTEXT_LENGTH_EXCEEDED,
        param=prompt_param(request),
    )


def prompt_param(request: GenerationRequest) -> str:
    """The field holding the request's prompt: what a context-length refusal is about
    (OpenAI's ``param``; the gateway names it as its caller sent it)."""
    if request.messages is not None:
        return "messages"
    return "prompt_token_ids" if request.prompt_token_ids is not None else "prompt"


def error_chunk(raw: bytes, key: bytes | None, err: GenwireError) -> list[GenerationChunk]:
    """The final error chunk for a rejected request (none when no request id can be known).

    It goes to postprocess like any final chunk, so the error result is stored in Redis and
    published on genwire.results (and ends the token stream of a streaming request). Every
    string in it can be encoded: a hint holding a lone surrogate (``"\\ud800"``, which JSON
    allows) is cleaned, or the chunk could never be published.
    """
    request_id = request_id_hint(raw, key)
    if request_id is None:
        return []
    stream, model, n = _hints(raw)
    return [
        GenerationChunk(
            request_id=request_id,
            index=0,
            final=True,
            stream=stream,
            model=encodable(model[:128]),
            finish_reason="error",
            # n > 1: every choice's stream ends (postprocess sends one final TokenEvent each)
            choices=(
                [ChoiceOutput(index=c, finish_reason="error") for c in range(n)] if n > 1 else None
            ),
            error=ErrorInfo(
                code=err.code,
                message=encodable(err.message),
                param=None if err.param is None else encodable(err.param),
            ),
            timings=Timings(received=now_ms()),
        )
    ]


def _hints(raw: bytes) -> tuple[bool, str, int]:
    """Best-effort ``stream``, ``model`` and ``n`` of a refused value. One too large to parse
    again still says whether it streams and its ``n`` (``hints.stream_and_n``: its top-level
    keys, or on a Python before 3.11.5 the keys at any depth): a streamed request's error must
    end the token stream of each of its choices. An ``n`` that is not a valid one (1 to
    ``MAX_N``) is 1."""
    if len(raw) > HINT_PARSE_BYTES:
        stream, n = stream_and_n(raw)
        return stream, "", _valid_n(n)
    try:
        data = json.loads(raw)
    except (ValueError, RecursionError):
        return False, "", 1
    if not isinstance(data, dict):
        return False, "", 1
    model = data.get("model")
    return (
        data.get("stream") is True,
        model if isinstance(model, str) else "",
        _valid_n(data.get("n", 1)),
    )


def _valid_n(n: object) -> int:
    """``n`` when it is a valid number of choices (an int, 1 to ``MAX_N``), else 1."""
    return n if isinstance(n, int) and not isinstance(n, bool) and 1 <= n <= MAX_N else 1
