"""The key store's change list on the real Redis, against the gateway's change poll."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from typing import Any

import pytest
from genwire_gateway.auth import Authenticator, AuthError
from redis.asyncio import Redis

from genwire import apikeys
from genwire.apikeys import SCOPE_GENERATE, KeyStore, new_key
from genwire.redisconn import connect
from genwire.settings import CommonSettings
from tests.security.support import refused_as_revoked


class _PollAfterWrites:
    """The real client; after each command that can bump the change counter, a gateway polls
    (the worst moment: between the bump and anything the store does next)."""

    def __init__(self, redis: Any, auth: list[Authenticator]) -> None:
        self._redis = redis
        self._auth = auth
        self.polls = 0

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._redis, name)
        if name not in ("incr", "eval", "evalsha"):
            return attr

        async def call(*args: Any, **kwargs: Any) -> Any:
            result = await attr(*args, **kwargs)
            for auth in self._auth:
                await auth.poll_once()
                self.polls += 1
            return result

        return call


async def test_a_poll_at_any_moment_of_a_revocation_drops_the_cached_key(
    infra: CommonSettings,
) -> None:
    redis = connect(infra.redis_url)
    try:
        store = KeyStore(redis)
        key, record = await store.create(f"poll-{uuid.uuid4().hex[:8]}", [SCOPE_GENERATE])
        auth = Authenticator(store, cache_s=3600.0)
        await auth.poll_once()  # notes where the counter is
        assert (await auth.authenticate(f"Bearer {key}", SCOPE_GENERATE)).name == record.name
        watched = _PollAfterWrites(redis, [auth])
        await KeyStore(watched).revoke(record.name)
        assert watched.polls > 0  # the poll did run inside the revocation
        await auth.poll_once()  # and the gateway keeps polling afterwards, as it does
        with pytest.raises(AuthError) as info:
            await auth.authenticate(f"Bearer {key}", SCOPE_GENERATE)
        assert "revoked" in info.value.message
    finally:
        await redis.aclose()  # type: ignore[attr-defined]


async def test_registering_a_known_key_never_brings_a_revoked_one_back(
    infra: CommonSettings,
) -> None:
    """``genwire up`` re-registers the saved admin key: one Redis lost is accepted again, one an
    operator revoked stays revoked (SET NX: no window between a check and the write)."""
    redis = connect(infra.redis_url)
    try:
        store = KeyStore(redis)
        key, name = new_key(), f"reg-{uuid.uuid4().hex[:8]}"
        first = await store.register(key, name, [SCOPE_GENERATE])
        assert first is not None and first.name == name
        assert await store.register(key, name, [SCOPE_GENERATE]) is None  # known: untouched
        await store.revoke(name)
        assert await store.register(key, name, [SCOPE_GENERATE]) is None
        auth = Authenticator(store, cache_s=3600.0)
        with pytest.raises(AuthError) as info:
            await auth.authenticate(f"Bearer {key}", SCOPE_GENERATE)
        assert "revoked" in info.value.message
    finally:
        await redis.aclose()  # type: ignore[attr-defined]


async def test_an_announced_revocation_is_read_at_once_and_a_missed_one_on_resubscribing(
    infra: CommonSettings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The watcher reads the counter when a change is announced (its poll is an hour apart
    here); a change announced while it was not listening is read once Redis dropped its
    connection and redis-py subscribed again by itself (the confirmation is the cue)."""
    redis = connect(infra.redis_url)
    name = f"watch-{uuid.uuid4().hex[:8]}"
    watched = Redis.from_url(infra.redis_url, client_name=name)  # its connections findable
    auth = Authenticator(KeyStore(watched), cache_s=3600.0, poll_s=3600.0)
    watcher = asyncio.create_task(auth.run())
    try:
        store = KeyStore(redis)
        first, first_record = await store.create(f"{name}-a", [SCOPE_GENERATE])
        second, second_record = await store.create(f"{name}-b", [SCOPE_GENERATE])
        for key in (first, second):  # cached from here on
            await auth.authenticate(f"Bearer {key}", SCOPE_GENERATE)
        async with asyncio.timeout(5):  # subscribed and the counter noted
            while not (auth.following and auth._seq is not None):  # noqa: ASYNC110
                await asyncio.sleep(0.02)

        await store.revoke(first_record.name)
        await refused_as_revoked(auth, first, 5.0)

        # The second revocation's announcement goes where nobody listens: as if the watcher
        # had been disconnected when it was made.
        monkeypatch.setattr(apikeys, "CHANGES_CHANNEL", f"genwire:test:{name}")
        await store.revoke(second_record.name)
        await asyncio.sleep(0.3)
        await auth.authenticate(f"Bearer {second}", SCOPE_GENERATE)  # still cached: not heard
        listed = await redis.execute_command("CLIENT", "LIST", "TYPE", "pubsub")
        text = listed.decode() if isinstance(listed, bytes) else str(listed)
        ids = [
            fields["id"]
            for fields in (
                dict(f.split("=", 1) for f in line.split()) for line in text.splitlines()
            )
            if fields.get("name") == name
        ]
        assert len(ids) == 1, text
        await redis.execute_command("CLIENT", "KILL", "ID", ids[0])  # only the watcher's
        await refused_as_revoked(auth, second, 5.0)
    finally:
        watcher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watcher
        await watched.aclose()
        await redis.aclose()  # type: ignore[attr-defined]
