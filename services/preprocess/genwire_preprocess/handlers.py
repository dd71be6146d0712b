"""Pure async handlers of the preprocess service (no Kafka or HTTP imports).

GenerationRequest → PreparedRequest: resolve the model, apply the chat template, run the input
filter, tokenize, enforce the context limit, fix the seed, pin the model version, and refuse a
request id reused for another request. Invalid input raises ``PermanentError`` (DLQ and an
error result), outcomes such as a filtered prompt ``Rejection`` (an error result only); both
carry an ``ErrorCode``, and ``error_chunk`` turns either into the final
GenerationChunk that postprocess makes the caller's error result (stored and published like
any other result).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
from contextvars import ContextVar

from opentelemetry import trace

from genwire.errors import GenwireError, PermanentError, Rejection
from genwire.events import (
    ErrorInfo,
    GenerationChunk,
    PreparedRequest,
    Timings,
    now_ms,
)
from genwire.filters import ContentFilter
from genwire.policy import ARM_ATTRIBUTE, SHADOW_ARM
from genwire.request import ErrorCode, GenerationRequest, fingerprint, request_id_hint
from genwire.telemetry import semconv as sc
from genwire.tokenization import AssetStore, ModelAssets
from genwire_preprocess.guided import GuidedChecker
from genwire_preprocess.options import check_options, sampling_of, shadow_sampling
from genwire_preprocess.routing import FallbackHook, PolicyLookup, Route, Router
from genwire_preprocess.stores import Claims, ServedVersions

log = logging.getLogger(__name__)
_route: ContextVar[Route | None] = ContextVar("genwire_preprocess_route", default=None)

SEED_MASK = 2**63 - 1


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
        route_fallback: bool = True,
        on_fallback: FallbackHook | None = None,
    ) -> None:
        self.assets = assets
        self.max_generation_tokens = max_generation_tokens
        """Budget of n × max_tokens per request (out_of_range beyond it)."""
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

    async def handle(self, request: GenerationRequest) -> PreparedRequest:
        """Validate what needs the model, template, filter, tokenize; emit PreparedRequest."""
        now = now_ms()
        request_id = request.request_id or ""
        received = request.received_ms or now
        deadline = request.deadline_ms
        if deadline is None and self.default_timeout_ms > 0:
            deadline = received + self.default_timeout_ms
        if deadline is not None and now >= deadline:
            raise Rejection(
                "the request's deadline passed before preprocessing",
                code=ErrorCode.DEADLINE_EXCEEDED,
            )
        model = request.model or self.default_model
        span = trace.get_current_span()
        span.set_attribute(sc.REQUEST_ID, request_id)
        span.set_attribute(sc.GEN_AI_REQUEST_MODEL, model)
        # Routing (genwire.config's policy, else the served version) decides the version
        # once: a retry or redelivery regenerates on it, whatever is served by then. The first
        # route is stored beside the claim (one round trip): a redelivery after a policy
        # change reuses it instead of resolving again.
        route = await self.router.route(
            model, request_id, dict(request.metadata), request.model_version or ""
        )
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

        check_options(request, assets, max_generation_tokens=self.max_generation_tokens)
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
        if len(input_ids) + request.max_tokens > assets.context_length:
            raise PermanentError(
                f"prompt ({len(input_ids)} tokens) + max_tokens ({request.max_tokens}) exceeds "
                f"the context length of {model} ({assets.context_length} tokens)",
                code=ErrorCode.CONTEXT_LENGTH_EXCEEDED,
            )
        seed = request.seed if request.seed is not None else derive_seed(request_id)
        span.set_attribute(sc.GEN_AI_INPUT_TOKENS, len(input_ids))
        return PreparedRequest(
            request_id=request_id,
            model=model,
            model_version=assets.version,
            arm=route.arm,
            input_ids=input_ids,
            sampling=sampling_of(request, assets, seed),
            stream=request.stream,
            deadline_ms=deadline,
            metadata=dict(request.metadata),
            timings=Timings(received=received, prepared=now_ms()),
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
            request, assets, prepared.sampling, max_generation_tokens=self.max_generation_tokens
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


def error_chunk(raw: bytes, key: bytes | None, err: GenwireError) -> list[GenerationChunk]:
    """The final error chunk for a rejected request (none when no request id can be known).

    It goes to postprocess like any final chunk, so the error result is stored in Redis and
    published on genwire.results (and ends the token stream of a streaming request).
    """
    request_id = request_id_hint(raw, key)
    if request_id is None:
        return []
    stream, model = False, ""
    if len(raw) <= 1024 * 1024:  # best-effort hints; never parse a huge value twice
        try:
            data = json.loads(raw)
        except (ValueError, RecursionError):
            data = None
        if isinstance(data, dict):
            stream = data.get("stream") is True
            model = data["model"] if isinstance(data.get("model"), str) else ""
    return [
        GenerationChunk(
            request_id=request_id,
            index=0,
            final=True,
            stream=stream,
            model=model[:128],
            finish_reason="error",
            error=ErrorInfo(code=err.code, message=err.message, param=err.param),
            timings=Timings(received=now_ms()),
        )
    ]
