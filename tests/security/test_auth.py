"""API-key checks without the stack: the cache, revocation, Redis down, scopes, the HTTP
middleware's answers (OpenAI error shape, Retry-After) and the routes' scopes."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import types
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
import httpx
import pytest
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from genwire_gateway.auth import (
    ANY_SCOPE,
    RESUBSCRIBE_S,
    Authenticator,
    AuthError,
    AuthInterceptor,
    AuthMiddleware,
    Principal,
    current_principal,
    grpc_admits,
    grpc_scope,
    http_admits,
    http_scope,
)
from genwire_gateway.errors import RATE_LIMITED
from genwire_gateway.limits import LimitExceeded

from genwire.apikeys import (
    SCOPE_ADMIN,
    SCOPE_FEEDBACK,
    SCOPE_GENERATE,
    KeyRecord,
    auth_headers,
    hash_key,
    new_key,
    resolve_api_key,
    save_key,
    saved_key_path,
    well_formed,
)
from tests.security.support import refused_as_revoked


class FakeChannel:
    """A subscription that confirms itself, never announces a change, and answers a PING with
    a PONG only if ``answers_ping``."""

    def __init__(self, answers_ping: bool) -> None:
        self.pending: list[dict[str, Any]] = [{"type": "subscribe"}]
        self.answers_ping = answers_ping

    async def get_message(self, timeout: float) -> dict[str, Any] | None:  # noqa: ASYNC109  # redis-py's signature
        if self.pending:
            return self.pending.pop(0)
        await asyncio.sleep(timeout)
        return None

    async def ping(self) -> None:
        if self.answers_ping:
            self.pending.append({"type": "pong"})


class FakeStore:
    """``KeyStore``'s read side in memory; ``down`` makes every call fail like Redis would."""

    def __init__(self) -> None:
        self.records: dict[str, KeyRecord] = {}
        self.reads = 0
        self.down = False
        self._seq = 0
        self._changes: list[tuple[int, str]] = []
        self.subscribe_attempts = 0
        self.channel: str | None = None
        """None (no channel), "silent" (subscribed, then nothing) or "answering"."""

    def add(self, scopes: list[str], name: str = "team") -> tuple[str, KeyRecord]:
        key = new_key()
        record = KeyRecord(name=name, hash=hash_key(key), scopes=scopes)
        self.records[record.hash] = record
        self._change(record.hash)
        return key, record

    def revoke(self, record: KeyRecord) -> None:
        self.records[record.hash] = record.model_copy(update={"revoked_ms": 1.0})
        self._change(record.hash)

    @contextlib.asynccontextmanager
    async def changes(self) -> AsyncIterator[FakeChannel]:
        """The change channel as ``channel`` says: None, every subscription fails (Redis down
        or refusing it); else a ``FakeChannel`` that answers its PINGs or not."""
        self.subscribe_attempts += 1
        if self.channel is None:
            raise ConnectionError("no change channel")
        yield FakeChannel(answers_ping=self.channel == "answering")

    def _change(self, key_hash: str) -> None:
        self._seq += 1
        self._changes.append((self._seq, key_hash))

    async def get(self, key_hash: str) -> KeyRecord | None:
        if self.down:
            raise ConnectionError("redis down")
        self.reads += 1
        return self.records.get(key_hash)

    async def seq(self) -> int:
        if self.down:
            raise ConnectionError("redis down")
        return self._seq

    async def changes_since(self, seq: int) -> tuple[list[str], bool]:
        return [h for s, h in self._changes if s > seq], True


def _auth(store: FakeStore, **kwargs: Any) -> Authenticator:
    return Authenticator(store, **kwargs)  # type: ignore[arg-type]


async def _refusal(auth: Authenticator, header: str | None, scope: str) -> AuthError:
    with pytest.raises(AuthError) as info:
        await auth.authenticate(header, scope)
    return info.value


async def test_each_refusal_says_which() -> None:
    store = FakeStore()
    key, record = store.add([SCOPE_FEEDBACK])
    auth = _auth(store)
    missing = await _refusal(auth, None, SCOPE_GENERATE)
    assert (missing.status, missing.code) == (401, "invalid_api_key")
    assert "missing" in missing.message
    assert "malformed" in (await _refusal(auth, "Bearer sk-123", SCOPE_GENERATE)).message
    assert "malformed" in (await _refusal(auth, "Basic abc", SCOPE_GENERATE)).message
    assert "unknown" in (await _refusal(auth, f"Bearer {new_key()}", SCOPE_GENERATE)).message
    forbidden = await _refusal(auth, f"Bearer {key}", SCOPE_GENERATE)
    assert (forbidden.status, forbidden.code) == (403, "permission_denied")
    assert "'generate'" in forbidden.message and "feedback" in forbidden.message
    assert (await auth.authenticate(f"Bearer {key}", SCOPE_FEEDBACK)).name == "team"
    store.revoke(record)
    auth.forget()
    revoked = await _refusal(auth, f"Bearer {key}", SCOPE_FEEDBACK)
    assert revoked.status == 401 and "revoked" in revoked.message


async def test_admin_covers_every_scope_and_any_scope_takes_any_key() -> None:
    store = FakeStore()
    admin, _ = store.add([SCOPE_ADMIN])
    feedback, _ = store.add([SCOPE_FEEDBACK])
    auth = _auth(store)
    for scope in (SCOPE_GENERATE, SCOPE_FEEDBACK, SCOPE_ADMIN):
        await auth.authenticate(f"Bearer {admin}", scope)
    await auth.authenticate(f"Bearer {feedback}", ANY_SCOPE)
    assert (await _refusal(auth, f"Bearer {feedback}", SCOPE_ADMIN)).status == 403


async def test_a_cached_key_costs_no_redis_read() -> None:
    store = FakeStore()
    key, _ = store.add([SCOPE_GENERATE])
    auth = _auth(store)
    for _ in range(20):
        await auth.authenticate(f"Bearer {key}", SCOPE_GENERATE)
    assert store.reads == 1


async def test_a_revocation_reaches_the_cache_through_the_change_poll() -> None:
    store = FakeStore()
    key, record = store.add([SCOPE_GENERATE])
    auth = _auth(store, cache_s=3600)
    await auth.poll_once()  # the first read only notes where the counter is
    await auth.authenticate(f"Bearer {key}", SCOPE_GENERATE)
    store.revoke(record)
    await auth.authenticate(f"Bearer {key}", SCOPE_GENERATE)  # cached: not seen yet
    await auth.poll_once()
    assert "revoked" in (await _refusal(auth, f"Bearer {key}", SCOPE_GENERATE)).message


@pytest.mark.parametrize("channel", [None, "silent", "answering"])
async def test_the_watcher_reads_the_counter_every_poll_with_or_without_a_channel(
    channel: str | None,
) -> None:
    """No announcement comes (no channel: Redis refuses it or is restarting; or a channel that
    stays silent): the counter is still read every ``poll_s``, so a revocation arrives within
    it. A silent subscription is made again; one that answers its PINGs is kept."""
    store = FakeStore()
    store.channel = channel
    key, record = store.add([SCOPE_GENERATE])
    auth = _auth(store, cache_s=3600, poll_s=0.05)
    watcher = asyncio.create_task(auth.run())
    try:
        await auth.authenticate(f"Bearer {key}", SCOPE_GENERATE)
        async with asyncio.timeout(5):
            while auth._seq is None:  # noqa: ASYNC110  # the first read noted the counter
                await asyncio.sleep(0.01)
        store.revoke(record)
        await refused_as_revoked(auth, key, 0.5)  # ten polls; no announcement came
        # A silent channel is dropped after two polls and made again RESUBSCRIBE_S later.
        await asyncio.sleep(RESUBSCRIBE_S + 0.5)
        if channel == "answering":
            assert store.subscribe_attempts == 1 and auth.following
        elif channel == "silent":
            assert store.subscribe_attempts >= 2
        else:
            assert store.subscribe_attempts >= 1 and not auth.following
    finally:
        watcher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watcher


@pytest.mark.parametrize(("poll_s", "said"), [(0.25, "every 0.25 s"), (5.0, "every 1 s")])
async def test_the_loss_of_the_channel_is_told_once_with_the_reads_true_interval(
    poll_s: float, said: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Without a channel the counter is read every ``poll_s``, at most ``RESUBSCRIBE_S``
    apart: the warning says which, once."""
    store = FakeStore()  # no channel
    auth = _auth(store, cache_s=3600, poll_s=poll_s)
    with caplog.at_level(logging.WARNING, logger="genwire_gateway.auth"):
        watcher = asyncio.create_task(auth.run())
        try:
            async with asyncio.timeout(5):
                while store.subscribe_attempts < 2:  # noqa: ASYNC110  # tried again: not told twice
                    await asyncio.sleep(0.01)
        finally:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher
    told = [r.getMessage() for r in caplog.records if "not following" in r.getMessage()]
    assert len(told) == 1, told
    assert f"reading the change counter {said} until" in told[0], told


async def test_redis_down_serves_cached_keys_for_a_bounded_time_and_fails_closed() -> None:
    store = FakeStore()
    key, _ = store.add([SCOPE_GENERATE])
    auth = _auth(store, cache_s=0.0, stale_s=3600)
    await auth.authenticate(f"Bearer {key}", SCOPE_GENERATE)
    store.down = True
    # Cached: still served (its record is past cache_s, Redis cannot be read, within stale_s).
    assert (await auth.authenticate(f"Bearer {key}", SCOPE_GENERATE)).name == "team"
    unknown = await _refusal(auth, f"Bearer {new_key()}", SCOPE_GENERATE)
    assert (unknown.status, unknown.code) == (503, "unavailable")
    bounded = _auth(store, cache_s=0.0, stale_s=0.0)
    store.down = False
    await bounded.authenticate(f"Bearer {key}", SCOPE_GENERATE)
    store.down = True
    assert (await _refusal(bounded, f"Bearer {key}", SCOPE_GENERATE)).status == 503


def test_routes_and_methods_need_their_scopes() -> None:
    assert http_scope("POST", "/v1/completions") == SCOPE_GENERATE
    assert http_scope("POST", "/v1/chat/completions") == SCOPE_GENERATE
    assert http_scope("POST", "/v1/feedback") == SCOPE_FEEDBACK
    assert http_scope("GET", "/v1/models") == ANY_SCOPE
    assert http_scope("POST", "/v1/models/x/load") == SCOPE_ADMIN
    assert http_scope("GET", "/v1/unknown") == SCOPE_GENERATE
    for open_path in ("/healthz", "/readyz", "/metrics"):
        assert http_scope("GET", open_path) is None
    assert grpc_scope("/genwire.v1.GenerationService/Generate") == SCOPE_GENERATE
    assert grpc_scope("/genwire.v1.FeedbackService/Feedback") == SCOPE_FEEDBACK
    assert grpc_scope("/grpc.health.v1.Health/Check") is None
    assert grpc_scope("/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo") is None


def _app(auth: Authenticator | None) -> FastAPI:
    app = FastAPI()
    app.state.auth = auth

    @app.post("/v1/completions")
    async def completions(request: Request) -> JSONResponse:
        principal = current_principal()
        assert principal is not None
        if (await request.json()).get("limited"):
            principal.retry_after_s = 2.2
            return JSONResponse({"error": {"code": "rate_limit_exceeded"}}, 429)
        return JSONResponse({"key": principal.name})

    @app.get("/healthz")
    async def healthz() -> dict[str, bool]:
        return {"ok": True}

    app.add_middleware(AuthMiddleware)
    return app


async def test_the_middleware_answers_in_the_openai_shape_and_adds_retry_after() -> None:
    store = FakeStore()
    key, _ = store.add([SCOPE_GENERATE], name="search")
    transport = httpx.ASGITransport(app=_app(_auth(store)))
    async with httpx.AsyncClient(transport=transport, base_url="http://gw") as http:
        refused = await http.post("/v1/completions", json={})
        assert refused.status_code == 401
        assert refused.headers["www-authenticate"].startswith("Bearer")
        error = refused.json()["error"]
        assert error["code"] == "invalid_api_key" and "missing" in error["message"]
        assert set(error) == {"message", "type", "param", "code"}
        ok = await http.post("/v1/completions", json={}, headers=auth_headers(key))
        assert ok.status_code == 200 and ok.json() == {"key": "search"}
        limited = await http.post("/v1/completions", json={"limited": 1}, headers=auth_headers(key))
        assert limited.status_code == 429 and limited.headers["retry-after"] == "3"
        assert (await http.get("/healthz")).status_code == 200  # open


async def test_auth_off_lets_everything_through() -> None:
    transport = httpx.ASGITransport(app=_app(None))
    async with httpx.AsyncClient(transport=transport, base_url="http://gw") as http:
        # The route itself asserts a principal: with auth off there is none, so it fails;
        # what matters is that the middleware did not answer 401.
        with pytest.raises(AssertionError):
            await http.post("/v1/completions", json={})


def test_clients_find_the_key_in_the_environment_then_the_saved_file(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GENWIRE_HOME", str(tmp_path))
    monkeypatch.delenv("GENWIRE_API_KEY", raising=False)
    assert resolve_api_key() is None and auth_headers() == {}
    saved = new_key()
    path = save_key(saved)
    assert path == saved_key_path() and (path.stat().st_mode & 0o777) == 0o600
    path.chmod(0o644)  # an older file others could read: narrowed when a key is saved again
    save_key(saved)
    assert (path.stat().st_mode & 0o777) == 0o600
    assert resolve_api_key() == saved
    env = new_key()
    monkeypatch.setenv("GENWIRE_API_KEY", env)
    assert auth_headers() == {"authorization": f"Bearer {env}"}
    assert resolve_api_key("explicit") == "explicit"
    assert well_formed(saved) and not well_formed(saved + "x")


async def test_concurrent_checks_of_one_cold_key_all_succeed() -> None:
    store = FakeStore()
    key, _ = store.add([SCOPE_GENERATE])
    auth = _auth(store)
    names = await asyncio.gather(
        *(auth.authenticate(f"Bearer {key}", SCOPE_GENERATE) for _ in range(16))
    )
    assert {p.name for p in names} == {"team"}


async def test_a_read_the_revocation_overtook_is_not_cached() -> None:
    """Redis answers the old record, the revocation and the poll land before the gateway takes
    the answer: the answer serves that one request but is not cached for ``cache_s``."""
    store = FakeStore()
    key, record = store.add([SCOPE_GENERATE])
    auth = _auth(store, cache_s=3600)
    await auth.poll_once()
    read = store.get
    answered, resume = asyncio.Event(), asyncio.Event()

    async def slow_get(key_hash: str) -> KeyRecord | None:
        found = await read(key_hash)
        answered.set()
        await resume.wait()
        return found

    store.get = slow_get  # type: ignore[method-assign]
    first = asyncio.create_task(auth.authenticate(f"Bearer {key}", SCOPE_GENERATE))
    await answered.wait()
    store.revoke(record)
    await auth.poll_once()
    resume.set()
    assert (await first).name == "team"  # valid when Redis answered
    store.get = read  # type: ignore[method-assign]
    assert "revoked" in (await _refusal(auth, f"Bearer {key}", SCOPE_GENERATE)).message


# -- a key over its requests per minute ---------------------------------------------------------


class Aborted(Exception):
    """``context.abort`` (grpc raises to end the call)."""

    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(details)
        self.code = code


class Context:
    """A gRPC call's context: the caller's key in the metadata, aborts raised."""

    def __init__(self, key: str) -> None:
        self.key = key
        self.trailing: tuple[tuple[str, str], ...] = ()

    def invocation_metadata(self) -> tuple[tuple[str, str], ...]:
        return (("authorization", f"Bearer {self.key}"),)

    def set_trailing_metadata(self, metadata: tuple[tuple[str, str], ...]) -> None:
        self.trailing = metadata

    async def abort(self, code: grpc.StatusCode, details: str) -> None:
        raise Aborted(code, details)


def _over_rpm(checked: list[str]) -> Callable[[Principal], LimitExceeded]:
    """A gateway that remembers the key as over its rpm (its 11th Submit was refused)."""

    def early_refusal(principal: Principal) -> LimitExceeded:
        checked.append(principal.name)
        return LimitExceeded(RATE_LIMITED, "rpm", "rate limit reached: 10 requests per minute", 42)

    return early_refusal


async def _grpc_call(interceptor: AuthInterceptor, method: str, key: str) -> str:
    """Call ``method`` through the interceptor: "served", or the status it was refused with."""

    async def unary(request: object, context: object) -> str:
        return "served"

    async def streaming(request: object, context: object) -> AsyncIterator[str]:
        yield "served"

    full = f"/genwire.v1.GenerationService/{method}"
    if method == "GenerateStream":
        handler = grpc.unary_stream_rpc_method_handler(streaming)
    else:
        handler = grpc.unary_unary_rpc_method_handler(unary)

    async def continuation(details: object) -> grpc.RpcMethodHandler:
        return handler

    wrapped = await interceptor.intercept_service(continuation, types.SimpleNamespace(method=full))
    try:
        if method == "GenerateStream":
            return await anext(wrapped.unary_stream(None, Context(key)))  # type: ignore[no-any-return]
        return await wrapped.unary_unary(None, Context(key))  # type: ignore[no-any-return]
    except Aborted as exc:
        return exc.code.name


async def test_a_key_over_its_rpm_still_reads_and_cancels_its_jobs() -> None:
    """The remembered rpm refusal answers early only what takes a request slot (Generate,
    GenerateStream, Submit; the completions routes): GetResult and Cancel of the jobs the key
    was given still work, and are not counted as rate limited."""
    store = FakeStore()
    key, _ = store.add([SCOPE_GENERATE])
    auth = _auth(store)
    checked: list[str] = []
    interceptor = AuthInterceptor(lambda: auth, _over_rpm(checked))
    answers = {m: await _grpc_call(interceptor, m, key) for m in ("GetResult", "Cancel")}
    assert answers == {"GetResult": "served", "Cancel": "served"} and checked == []
    for method in ("Generate", "GenerateStream", "Submit"):
        assert await _grpc_call(interceptor, method, key) == "RESOURCE_EXHAUSTED"
    assert len(checked) == 3
    assert grpc_admits("/genwire.v1.GenerationService/Submit")
    assert not grpc_admits("/genwire.v1.GenerationService/GetResult")
    assert not grpc_admits("/genwire.v1.FeedbackService/Feedback")

    app = _app(auth)
    checked.clear()
    app.state.gateway = types.SimpleNamespace(early_refusal=_over_rpm(checked))
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://gw") as http:
        refused = await http.post("/v1/completions", json={}, headers=auth_headers(key))
        other = await http.get("/v1/unknown", headers=auth_headers(key))
    assert refused.status_code == 429 and refused.headers["retry-after"] == "42"
    assert other.status_code == 404  # a generate-scoped route that takes no slot
    assert checked == ["team"]
    assert http_admits("POST", "/v1/chat/completions") and not http_admits("GET", "/v1/models")
