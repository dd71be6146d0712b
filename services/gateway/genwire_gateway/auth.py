"""API-key authentication of both transports: the key cache, an ASGI middleware (HTTP) and a
gRPC interceptor.

Hot path: a key whose record was read from Redis less than ``auth_cache_s`` ago is checked
from memory (hash, constant-time compare, scope): no Redis round trip. A watcher reads Redis's
key-change counter whenever a change is announced on ``genwire:apikeys:changed``, whenever
its subscription is (re)made, and every ``auth_poll_s`` besides, and drops the changed keys
(created, revoked) from the cache: a revocation reaches every gateway in milliseconds, and an
announcement lost without the connection saying so within ``auth_poll_s``. Without a
subscription (Redis down or refusing it) the counter is read every ``RESUBSCRIBE_S`` while
the subscription is tried again, less and less often.

Redis down: a key this gateway has cached keeps working for ``auth_stale_s`` after its record
was last read (callers are not cut off by a short Redis blip); an unknown key, or a cached one
past that bound, is refused with 503 ``unavailable`` (fail closed). Changes made while Redis
was unreachable are seen as soon as the poller reads the counter again.

Which routes need which scope (docs/security.md): every ``/v1/...`` HTTP route and every
``genwire.*`` gRPC method need a key: ``/v1/feedback`` and the ``Feedback`` rpc the
``feedback`` scope, ``GET /v1/models`` any scope, ``/v1/admin/...`` and writes under
``/v1/models`` ``admin``, everything else ``generate``. Health, readiness, ``/metrics``, gRPC
health and reflection are open.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

import grpc
from prometheus_client import CollectorRegistry, Counter

from genwire.apikeys import (
    SCOPE_ADMIN,
    SCOPE_FEEDBACK,
    SCOPE_GENERATE,
    KeyRecord,
    KeyStore,
    hash_key,
    same_hash,
    well_formed,
)
from genwire.request import ErrorCode
from genwire_gateway.errors import INVALID_API_KEY, PERMISSION_DENIED
from genwire_gateway.openai import error_body

log = logging.getLogger(__name__)

ANY_SCOPE = "any"
"""A route any valid key may use, whatever its scopes."""

RESUBSCRIBE_S = 1.0
"""Without the change channel: how often the counter is read, and the first wait before
subscribing again (doubling up to ``auth_poll_s`` while subscribing keeps failing)."""
SILENT_POLLS = 2
"""A subscription that answered nothing (not even its own PING) for this many ``poll_s`` is
taken for dead and made again: redis-py notices a closed connection, not a silent one."""

METRIC_AUTH = "genwire_gateway_auth_total"


class AuthError(Exception):
    """A refused call: the error code, the HTTP status and a message that says why."""

    def __init__(self, code: str, status: int, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.status = status
        self.message = message

    @property
    def grpc_code(self) -> grpc.StatusCode:
        return {
            401: grpc.StatusCode.UNAUTHENTICATED,
            403: grpc.StatusCode.PERMISSION_DENIED,
        }.get(self.status, grpc.StatusCode.UNAVAILABLE)


@dataclass
class Principal:
    """The authenticated caller of the current request (``PRINCIPAL``)."""

    record: KeyRecord
    grpc_context: Any = None
    """The gRPC call's context (the limiter sets ``retry-after`` trailing metadata on it)."""
    retry_after_s: float | None = None
    """Set when the request was refused by a limit: the HTTP middleware adds ``Retry-After``."""
    started: float = field(default_factory=time.monotonic)

    @property
    def name(self) -> str:
        return self.record.name


PRINCIPAL: ContextVar[Principal | None] = ContextVar("genwire_principal", default=None)
"""The authenticated key of the request being handled (None: auth is off, or an open route)."""


def current_principal() -> Principal | None:
    """The caller of the request being handled, if it was authenticated."""
    return PRINCIPAL.get()


# -- the check ---------------------------------------------------------------------------------


@dataclass
class _Entry:
    record: KeyRecord | None
    """None: Redis said there is no such key (cached briefly)."""
    read_at: float


class AuthMetrics:
    """Authentication outcomes (no key names: refused keys have none)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.outcomes = Counter(
            METRIC_AUTH,
            "Authentication checks by outcome: ok, stale (served from the cache while Redis "
            "is unreachable), missing, malformed, unknown, revoked, forbidden, unavailable.",
            ["outcome"],
            registry=registry,
        )


class Authenticator:
    """Checks keys against the cache, Redis behind it."""

    def __init__(
        self,
        store: KeyStore,
        *,
        cache_s: float = 30.0,
        stale_s: float = 300.0,
        negative_cache_s: float = 1.0,
        poll_s: float = 0.25,
        max_entries: int = 10_000,
        metrics: AuthMetrics | None = None,
    ) -> None:
        self.store = store
        self.cache_s = cache_s
        self.stale_s = stale_s
        self.negative_cache_s = negative_cache_s
        self.poll_s = poll_s
        self.max_entries = max_entries
        self.metrics = metrics
        self._cache: OrderedDict[str, _Entry] = OrderedDict()
        """Keys Redis has a record of (revoked ones too), least recently used first."""
        self._unknown: OrderedDict[str, _Entry] = OrderedDict()
        """Keys Redis said it does not know, apart: anyone can send unknown keys without
        limit, and must not push the known ones out (their cache is what serves them while
        Redis is down)."""
        self._seq: int | None = None
        self._forgets = 0  # bumped by every forget: a read that spans one is not cached
        self.following = False
        """Whether the change channel is subscribed (False: the counter alone is read)."""
        self._resubscribe_s = RESUBSCRIBE_S
        self._loss_told = False  # a loss is logged once, and its end once

    def _count(self, outcome: str) -> None:
        if self.metrics is not None:
            self.metrics.outcomes.labels(outcome).inc()

    def _refuse(self, outcome: str, code: str, status: int, message: str) -> AuthError:
        self._count(outcome)
        return AuthError(code, status, message)

    async def authenticate(self, header: str | None, scope: str | None) -> Principal:
        """The principal of an ``Authorization`` value, checked for ``scope``; or AuthError."""
        key = _bearer(header)
        if key is None:
            raise self._refuse(
                "missing",
                INVALID_API_KEY,
                401,
                "missing API key: send 'Authorization: Bearer <key>' (genwire keys create)",
            )
        if not well_formed(key):
            raise self._refuse(
                "malformed",
                INVALID_API_KEY,
                401,
                "malformed API key: a genwire key is 'gw-' followed by 43 characters",
            )
        key_hash = hash_key(key)
        record, stale = await self._record(key_hash)
        # The lookup is by hash; the compare below is constant-time anyway, so nothing about
        # how much of a guess was right shows in the timing.
        if record is None or not same_hash(record.hash, key_hash):
            raise self._refuse("unknown", INVALID_API_KEY, 401, "unknown API key")
        if record.revoked:
            raise self._refuse(
                "revoked", INVALID_API_KEY, 401, f"revoked API key (key {record.name!r})"
            )
        if scope is not None and scope != ANY_SCOPE and not record.allows(scope):
            raise self._refuse(
                "forbidden",
                PERMISSION_DENIED,
                403,
                f"the key {record.name!r} lacks the {scope!r} scope "
                f"(it has: {', '.join(record.scopes)})",
            )
        self._count("stale" if stale else "ok")
        return Principal(record)

    async def _record(self, key_hash: str) -> tuple[KeyRecord | None, bool]:
        """(record, served stale) from the cache or Redis; AuthError 503 when neither can."""
        now = time.monotonic()
        entry = self._cache.get(key_hash) or self._unknown.get(key_hash)
        if entry is not None:
            fresh_for = self.cache_s if entry.record is not None else self.negative_cache_s
            if now - entry.read_at < fresh_for:
                self._table(entry.record).move_to_end(key_hash)
                return entry.record, False
        forgets = self._forgets
        try:
            record = await self.store.get(key_hash)
        except Exception as exc:
            if (
                entry is not None
                and entry.record is not None
                and now - entry.read_at < self.stale_s
            ):
                log.warning("key store unreachable, serving a cached key: %s", exc)
                return entry.record, True
            raise self._refuse(
                "unavailable",
                ErrorCode.UNAVAILABLE,
                503,
                "cannot check the API key: the key store (Redis) is unreachable",
            ) from None
        if forgets == self._forgets:  # else the key may have changed since Redis answered
            self._remember(key_hash, record)
        return record, False

    def _table(self, record: KeyRecord | None) -> OrderedDict[str, _Entry]:
        """Where a key with ``record`` (None: unknown to Redis) is cached."""
        return self._cache if record is not None else self._unknown

    def _remember(self, key_hash: str, record: KeyRecord | None) -> None:
        """Cache what Redis said of a key, each table holding at most ``max_entries``: a
        flood of unknown keys evicts only unknown ones."""
        table = self._table(record)
        (self._unknown if table is self._cache else self._cache).pop(key_hash, None)
        table[key_hash] = _Entry(record, time.monotonic())
        table.move_to_end(key_hash)
        while len(table) > self.max_entries:
            table.popitem(last=False)

    def forget(self, hashes: list[str] | None = None) -> None:
        """Drop ``hashes`` (None: every key) from the cache."""
        self._forgets += 1
        if hashes is None:
            self._cache.clear()
            self._unknown.clear()
            return
        for h in hashes:
            self._cache.pop(h, None)
            self._unknown.pop(h, None)

    async def poll_once(self) -> None:
        """Read the change counter; drop the keys changed since the last read."""
        seq = await self.store.seq()
        if self._seq is None:
            self._seq = seq
            return
        if seq == self._seq:
            return
        if seq < self._seq:  # Redis lost its data (or was flushed): trust nothing cached
            self.forget()
        else:
            hashes, complete = await self.store.changes_since(self._seq)
            self.forget(hashes if complete else None)
        self._seq = seq

    async def run(self) -> None:
        """Follow key changes until cancelled: announced ones at once, the counter read every
        ``poll_s`` besides; without the channel, at least every ``RESUBSCRIBE_S`` until it is
        back."""
        loop = asyncio.get_running_loop()
        while True:
            try:
                await self._follow()
            except Exception as exc:  # Redis down: cached keys keep their bounded lifetime
                if not self._loss_told:
                    self._loss_told = True
                    log.warning(
                        "not following API-key changes (%s): reading the change counter every "
                        "%g s until the subscription is back",
                        exc,
                        min(self.poll_s, RESUBSCRIBE_S),
                    )
                self.following = False
            until = loop.time() + self._resubscribe_s
            self._resubscribe_s = min(self._resubscribe_s * 2, max(self.poll_s, RESUBSCRIBE_S))
            while True:
                await self._poll_logged()
                left = until - loop.time()
                if left <= 0:
                    break
                await asyncio.sleep(min(left, self.poll_s, RESUBSCRIBE_S))

    async def _poll_logged(self) -> None:
        try:
            await self.poll_once()
        except Exception as exc:
            log.debug("key change poll failed: %s", exc)

    async def _follow(self) -> None:
        loop = asyncio.get_running_loop()
        async with self.store.changes() as changes:
            heard = loop.time()
            while True:
                # A change, a (re)subscription's confirmation (changes before it were not
                # announced), a PONG, or ``poll_s`` of silence: each is a reason to read the
                # counter.
                message = await changes.get_message(timeout=self.poll_s)
                if message is not None:
                    heard = loop.time()
                    if not self.following:
                        if self._loss_told:
                            self._loss_told = False
                            log.info("following API-key changes again")
                        self.following = True
                        self._resubscribe_s = RESUBSCRIBE_S
                elif loop.time() - heard >= SILENT_POLLS * self.poll_s:
                    raise ConnectionError("the change channel answered nothing, not even PING")
                else:
                    await changes.ping()  # answered on the channel: proof it still carries
                await self._poll_logged()


def _bearer(header: str | None) -> str | None:
    """The key of an ``Authorization`` value ("Bearer <key>", or the bare key over gRPC)."""
    if header is None:
        return None
    value = header.strip()
    if not value:
        return None
    scheme, _, rest = value.partition(" ")
    if scheme.lower() == "bearer":
        return rest.strip() or None
    return value


# -- scopes of routes and methods --------------------------------------------------------------


def http_scope(method: str, path: str) -> str | None:
    """The scope an HTTP route needs (None: open)."""
    if not path.startswith("/v1/") and path != "/v1":
        return None
    if path.startswith("/v1/feedback"):
        return SCOPE_FEEDBACK
    if path.startswith("/v1/admin"):
        return SCOPE_ADMIN
    if path.startswith("/v1/models"):
        return ANY_SCOPE if method in ("GET", "HEAD") else SCOPE_ADMIN
    return SCOPE_GENERATE


def grpc_scope(full_method: str) -> str | None:
    """The scope a gRPC method needs (None: open: health, reflection)."""
    if not full_method.startswith("/genwire."):
        return None
    if ".FeedbackService/" in full_method or full_method.endswith("/Feedback"):
        return SCOPE_FEEDBACK
    return SCOPE_GENERATE


ADMITTING_HTTP = frozenset({("POST", "/v1/completions"), ("POST", "/v1/chat/completions")})
"""HTTP routes whose requests take a request slot (``usage.MeteredGateway`` admits them)."""
ADMITTING_GRPC = frozenset({"Generate", "GenerateStream", "Submit"})
"""``GenerationService`` methods that take a request slot. ``GetResult`` and ``Cancel`` take
none: a key over its requests per minute still reads and cancels the jobs it was given."""


def http_admits(method: str, path: str) -> bool:
    """Whether an HTTP route takes a request slot (a remembered rpm refusal answers it early)."""
    return (method, path) in ADMITTING_HTTP


def grpc_admits(full_method: str) -> bool:
    """Whether a gRPC method takes a request slot (a remembered rpm refusal answers it early)."""
    service, _, name = full_method.rpartition("/")
    return service.endswith(".GenerationService") and name in ADMITTING_GRPC


# -- HTTP --------------------------------------------------------------------------------------

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


def _error_json(code: str, status: int, message: str) -> bytes:
    """The OpenAI error shape, as every other route answers it."""
    return json.dumps(error_body(code, message, status)).encode()


class AuthMiddleware:
    """Pure ASGI (streaming and disconnect detection pass straight through).

    Reads ``app.state.auth`` (an ``Authenticator``; None: auth off). A refused request gets
    its OpenAI-shaped error here and never reaches a route. A request a limit refused gets
    ``Retry-After`` added to its 429.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        method, path = scope.get("method", "GET"), scope.get("path", "")
        needed = http_scope(method, path)
        app = scope.get("app")
        auth: Authenticator | None = getattr(getattr(app, "state", None), "auth", None)
        if needed is None or auth is None:
            await self.app(scope, receive, send)
            return
        header = _header(scope, b"authorization")
        try:
            principal = await auth.authenticate(header, needed)
        except AuthError as exc:
            await _send_error(send, exc)
            return
        refusal = _early_refusal(app, principal) if http_admits(method, path) else None
        if refusal is not None:
            code, message, wait = refusal
            await _send_error(send, AuthError(code, 429, message), retry_after_s=wait)
            return
        token = PRINCIPAL.set(principal)

        async def send_with_retry_after(message: dict[str, Any]) -> None:
            if (
                message["type"] == "http.response.start"
                and message.get("status") == 429
                and principal.retry_after_s is not None
            ):
                headers = list(message.get("headers", []))
                headers.append((b"retry-after", retry_after(principal.retry_after_s).encode()))
                message = {**message, "headers": headers}
            await send(message)

        try:
            await self.app(scope, receive, send_with_retry_after)
        finally:
            PRINCIPAL.reset(token)


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", ()):
        if key.lower() == name:
            return bytes(value).decode("latin-1")
    return None


def retry_after(seconds: float) -> str:
    """A ``Retry-After`` value: whole seconds, rounded up, at least 1."""
    return str(max(1, math.ceil(seconds)))


def _early_refusal(app: Any, principal: Principal) -> tuple[str, str, float] | None:
    """(code, message, wait) when the gateway already knows the key is over its rpm."""
    gateway = getattr(getattr(app, "state", None), "gateway", None)
    check = getattr(gateway, "early_refusal", None)
    refusal = check(principal) if check is not None else None
    if refusal is None:
        return None
    return refusal.code, refusal.message, refusal.retry_after_s or 1.0


async def _send_error(send: Send, exc: AuthError, retry_after_s: float | None = None) -> None:
    body = _error_json(exc.code, exc.status, exc.message)
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    if exc.status == 401:
        headers.append((b"www-authenticate", b'Bearer realm="genwire"'))
    if retry_after_s is not None:
        headers.append((b"retry-after", retry_after(retry_after_s).encode()))
    await send({"type": "http.response.start", "status": exc.status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


# -- gRPC --------------------------------------------------------------------------------------


class AuthInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    """Authenticates every ``genwire.*`` call from its ``authorization`` metadata.

    ``auth`` returns the ``Authenticator`` (None: auth off); it is looked up per call because
    the server is built before the gateway's clients exist.
    """

    def __init__(
        self,
        auth: Callable[[], Authenticator | None],
        early_refusal: Callable[[Principal], Any] | None = None,
    ) -> None:
        self._auth = auth
        self._early_refusal = early_refusal

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(details)
        needed = grpc_scope(details.method)
        if handler is None or needed is None:
            return handler
        admits = grpc_admits(details.method)
        if handler.unary_unary is not None:
            return handler._replace(unary_unary=self._unary(handler.unary_unary, needed, admits))
        if handler.unary_stream is not None:
            streaming = self._streaming(handler.unary_stream, needed, admits)
            return handler._replace(unary_stream=streaming)
        return handler  # no client-streaming methods in genwire's services

    async def _principal(
        self, context: grpc.aio.ServicerContext[Any, Any], needed: str, admits: bool
    ) -> Principal | None:
        """The caller, checked for ``needed``; a method that ``admits`` (takes a request slot)
        is also refused at once while the key is remembered over its rpm."""
        auth = self._auth()
        if auth is None:
            return None
        header = None
        for key, value in context.invocation_metadata() or ():
            if key == "authorization":
                header = value if isinstance(value, str) else value.decode("latin-1")
                break
        try:
            principal = await auth.authenticate(header, needed)
        except AuthError as exc:
            await context.abort(exc.grpc_code, f"{exc.code}: {exc.message}")
            raise AssertionError("unreachable: abort raises") from None
        principal.grpc_context = context
        refusal = (
            self._early_refusal(principal) if self._early_refusal is not None and admits else None
        )
        if refusal is not None:
            wait = retry_after(refusal.retry_after_s or 1.0)
            context.set_trailing_metadata((("retry-after", wait),))
            await context.abort(
                grpc.StatusCode.RESOURCE_EXHAUSTED, f"{refusal.code}: {refusal.message}"
            )
        return principal

    def _unary(self, behavior: Any, needed: str, admits: bool) -> Any:
        async def unary(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            principal = await self._principal(context, needed, admits)
            token = PRINCIPAL.set(principal)
            try:
                return await behavior(request, context)
            finally:
                PRINCIPAL.reset(token)

        return unary

    def _streaming(self, behavior: Any, needed: str, admits: bool) -> Any:
        async def streaming(
            request: Any, context: grpc.aio.ServicerContext[Any, Any]
        ) -> AsyncIterator[Any]:
            principal = await self._principal(context, needed, admits)
            token = PRINCIPAL.set(principal)
            try:
                async with contextlib.aclosing(behavior(request, context)) as responses:
                    async for response in responses:
                        yield response
            finally:
                with contextlib.suppress(ValueError):  # reset from another context
                    PRINCIPAL.reset(token)

        return streaming
