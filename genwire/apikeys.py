"""API keys: their format, their records in Redis (hashed, never the key itself), and how a
client finds the key it sends.

A key is ``gw-`` and 43 URL-safe base64 characters (32 random bytes). Redis holds only its
SHA-256: a fast hash is enough for a secret with 256 bits of entropy (there is nothing to
brute-force, unlike a password). The first 12 hex digits of the hash are the key's public
``id`` (shown by ``genwire keys list``, accepted by ``genwire keys revoke``).

Redis layout (docs/security.md):

- ``genwire:apikey:<sha256>``: the key's record (JSON of :class:`KeyRecord`); a revoked key keeps
  its record with ``revoked_ms`` set, so callers are told "revoked" rather than "unknown".
- ``genwire:apikeys``: hash ``sha256 -> name``, the index ``list`` and ``revoke`` read.
- ``genwire:apikeys:seq`` and ``genwire:apikeys:changes``: a counter bumped by every create and
  revoke, and a sorted set ``sha256 -> seq``: gateways read the counter and drop the keys that
  changed from their cache.
- channel ``genwire:apikeys:changed``: the new counter, published by the same script, so a
  gateway reads a change at once (revocation reaches every gateway in milliseconds); it also
  reads the counter when its subscription is (re)made and every poll interval, for a change
  announced while it was not listening.

Clients (the ``genwire`` CLI, ``genwire bench``, the demo, the test harnesses) send
:func:`resolve_api_key`: ``GENWIRE_API_KEY`` when set, else the key ``genwire up`` saved under
``GENWIRE_HOME`` (:func:`saved_key_path`).
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import os
import re
import secrets
import time
from collections.abc import AsyncIterator, Iterable
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field

KEY_PREFIX = "gw-"
KEY_PATTERN = re.compile(r"^gw-[A-Za-z0-9_-]{43}$")
"""What a well-formed key looks like (anything else is rejected before any lookup)."""
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
"""Key names: they become metric labels and usage rows, so they are short and plain."""

SCOPE_GENERATE = "generate"
SCOPE_FEEDBACK = "feedback"
SCOPE_ADMIN = "admin"
SCOPES = (SCOPE_GENERATE, SCOPE_FEEDBACK, SCOPE_ADMIN)
"""``admin`` implies every other scope."""

ENV_API_KEY = "GENWIRE_API_KEY"
SAVED_KEY_FILE = "api-key"
"""File name of the admin key ``genwire up`` creates, under ``GENWIRE_HOME`` (mode 0600)."""
ADMIN_KEY_NAME = "admin"

RECORD_PREFIX = "genwire:apikey:"
INDEX_KEY = "genwire:apikeys"
SEQ_KEY = "genwire:apikeys:seq"
CHANGES_KEY = "genwire:apikeys:changes"
CHANGES_KEPT = 10_000
"""Changes remembered for the gateways' pollers (older ones: a poller that far behind drops
its whole cache)."""
CHANGES_CHANNEL = "genwire:apikeys:changed"
"""Pub/sub channel: the new counter, published with every change (``KeyStore.changes``)."""


_CHANGED = """
local seq = redis.call('INCR', KEYS[1])
for i = 3, #ARGV do redis.call('ZADD', KEYS[2], seq, ARGV[i]) end
redis.call('ZREMRANGEBYRANK', KEYS[2], 0, -tonumber(ARGV[1]) - 1)
redis.pcall('PUBLISH', ARGV[2], seq)
return seq
"""
"""Bump the change counter, list the changed hashes under it and announce it, atomically. The
announcement is best effort (``pcall``: a Redis user not allowed to publish on the channel
still makes the change, and the gateways' poll reads it); the writes before it are not undone
by anything after them, so nothing after them may fail the script."""


class ApiKeyError(ValueError):
    """A key operation the caller asked for cannot be done (bad name, unknown key...)."""


class KeyRecord(BaseModel):
    """What Redis keeps about a key (never the key)."""

    name: str
    """Who holds it (a team or a service): usage and metrics are per name."""
    hash: str
    """SHA-256 of the key, hex."""
    scopes: list[str]
    rpm: int | None = None
    """Requests per minute (None: no limit)."""
    tpm: int | None = None
    """Tokens (prompt + completion) per minute."""
    tokens_per_day: int | None = None
    """Tokens per UTC day."""
    capture_content: bool = False
    """Opt in to prompt and completion text in the gateway's spans (redacted)."""
    created_ms: float = Field(default_factory=lambda: time.time() * 1000.0)
    revoked_ms: float | None = None

    @property
    def id(self) -> str:
        """The key's public id: the first 12 hex digits of its hash."""
        return self.hash[:12]

    @property
    def revoked(self) -> bool:
        return self.revoked_ms is not None

    @property
    def limited(self) -> bool:
        """Whether any rate limit or quota applies."""
        return bool(self.rpm or self.tpm or self.tokens_per_day)

    def allows(self, scope: str) -> bool:
        """Whether the key may do what ``scope`` covers (``admin`` covers everything)."""
        return scope in self.scopes or SCOPE_ADMIN in self.scopes


def new_key() -> str:
    """A fresh random key."""
    return KEY_PREFIX + secrets.token_urlsafe(32)


def hash_key(key: str) -> str:
    """The SHA-256 (hex) a key is stored and looked up under."""
    return hashlib.sha256(key.encode()).hexdigest()


def same_hash(a: str, b: str) -> bool:
    """Constant-time comparison of two hashes."""
    return hmac.compare_digest(a.encode(), b.encode())


def well_formed(key: str) -> bool:
    """Whether ``key`` has the shape of a genwire key."""
    return KEY_PATTERN.fullmatch(key) is not None


def check_name(name: str) -> str:
    if NAME_PATTERN.fullmatch(name) is None:
        raise ApiKeyError(
            f"invalid key name {name!r}: 1-64 characters, letters, digits, '.', '_' or '-', "
            "starting with a letter or digit"
        )
    return name


def check_scopes(scopes: Iterable[str]) -> list[str]:
    chosen = sorted({s.strip() for s in scopes if s.strip()})
    unknown = [s for s in chosen if s not in SCOPES]
    if unknown or not chosen:
        raise ApiKeyError(
            f"scopes must be among {', '.join(SCOPES)} (got {', '.join(unknown) or 'none'})"
        )
    return chosen


def check_limit(what: str, value: int | None) -> int | None:
    if value is not None and value < 1:
        raise ApiKeyError(f"{what} must be at least 1 (or left unset for no limit)")
    return value


# -- the saved key and the client side ---------------------------------------------------------


def home_dir() -> Path:
    """``GENWIRE_HOME``, default ``~/.cache/genwire`` (as ``genwire.settings``)."""
    value = os.environ.get("GENWIRE_HOME")
    return Path(value).expanduser() if value else Path.home() / ".cache" / "genwire"


def saved_key_path(home: Path | None = None) -> Path:
    """Where ``genwire up`` saves the admin key it creates."""
    return (home or home_dir()) / SAVED_KEY_FILE


def read_saved_key(home: Path | None = None) -> str | None:
    """The saved key, or None when there is none (or it cannot be read)."""
    try:
        text = saved_key_path(home).read_text().strip()
    except OSError:
        return None
    return text or None


def save_key(key: str, home: Path | None = None) -> Path:
    """Write ``key`` to the saved-key file, readable by its owner only (0600)."""
    path = saved_key_path(home)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(fd, 0o600)  # an older file with wider rights: narrowed before the key is in it
    with os.fdopen(fd, "w") as f:
        f.write(key + "\n")
    return path


def resolve_api_key(explicit: str | None = None) -> str | None:
    """The key a client sends: ``explicit``, else ``GENWIRE_API_KEY``, else the saved key."""
    if explicit:
        return explicit
    return os.environ.get(ENV_API_KEY) or read_saved_key()


def auth_headers(key: str | None = None) -> dict[str, str]:
    """HTTP headers that authenticate a request (empty when no key is known)."""
    resolved = resolve_api_key(key)
    return {"authorization": f"Bearer {resolved}"} if resolved else {}


def auth_metadata(key: str | None = None) -> tuple[tuple[str, str], ...]:
    """gRPC metadata that authenticates a call (empty when no key is known)."""
    resolved = resolve_api_key(key)
    return (("authorization", f"Bearer {resolved}"),) if resolved else ()


# -- the store ---------------------------------------------------------------------------------


def record_key(key_hash: str) -> str:
    return RECORD_PREFIX + key_hash


class KeyStore:
    """Keys in Redis (``redis.asyncio`` client)."""

    def __init__(self, redis: Any) -> None:
        self.redis = redis

    async def get(self, key_hash: str) -> KeyRecord | None:
        """The record stored under ``key_hash`` (None: no such key). Redis errors propagate."""
        raw = await self.redis.get(record_key(key_hash))
        return KeyRecord.model_validate_json(raw) if raw is not None else None

    async def create(
        self,
        name: str,
        scopes: Iterable[str],
        *,
        rpm: int | None = None,
        tpm: int | None = None,
        tokens_per_day: int | None = None,
        capture_content: bool = False,
    ) -> tuple[str, KeyRecord]:
        """A new key (returned once, never stored) and its record."""
        key = new_key()
        record = KeyRecord(
            name=check_name(name),
            hash=hash_key(key),
            scopes=check_scopes(scopes),
            rpm=check_limit("rpm", rpm),
            tpm=check_limit("tpm", tpm),
            tokens_per_day=check_limit("tokens-per-day", tokens_per_day),
            capture_content=capture_content,
        )
        await self.put(record)
        return key, record

    async def put(self, record: KeyRecord) -> None:
        """Store ``record`` (new or changed) and tell the gateways it changed."""
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.set(record_key(record.hash), record.model_dump_json())
            pipe.hset(INDEX_KEY, record.hash, record.name)
            await pipe.execute()
        await self._changed([record.hash])

    async def register(self, key: str, name: str, scopes: Iterable[str]) -> KeyRecord | None:
        """Store ``key`` unless Redis already knows it (revoked or not); the new record or None.

        ``genwire up`` uses it for the saved admin key, so a Redis that lost its data accepts
        the saved key again, while a key an operator revoked stays revoked.
        """
        key_hash = hash_key(key)
        record = KeyRecord(name=check_name(name), hash=key_hash, scopes=check_scopes(scopes))
        # SET NX, not "exists, then set": a revocation between the two would be overwritten
        # and the revoked key would work again.
        if not await self.redis.set(record_key(key_hash), record.model_dump_json(), nx=True):
            return None
        await self.redis.hset(INDEX_KEY, key_hash, record.name)
        await self._changed([key_hash])
        return record

    async def records(self, *, include_revoked: bool = False) -> list[KeyRecord]:
        """Every key's record, oldest first."""
        hashes = sorted(k.decode() if isinstance(k, bytes) else k for k in await self._index())
        if not hashes:
            return []
        raws = await self.redis.mget([record_key(h) for h in hashes])
        records = [KeyRecord.model_validate_json(r) for r in raws if r is not None]
        if not include_revoked:
            records = [r for r in records if not r.revoked]
        return sorted(records, key=lambda r: r.created_ms)

    async def _index(self) -> list[Any]:
        return list((await self.redis.hgetall(INDEX_KEY)).keys())

    async def revoke(self, name_or_id: str) -> list[KeyRecord]:
        """Revoke the live keys named ``name_or_id`` (or whose id it is); the revoked records."""
        chosen = [
            r for r in await self.records() if r.name == name_or_id or r.id == name_or_id.lower()
        ]
        if not chosen:
            raise ApiKeyError(f"no live key is named {name_or_id!r} or has that id")
        now = time.time() * 1000.0
        revoked = [r.model_copy(update={"revoked_ms": now}) for r in chosen]
        async with self.redis.pipeline(transaction=True) as pipe:
            for record in revoked:
                pipe.set(record_key(record.hash), record.model_dump_json())
            await pipe.execute()
        await self._changed([r.hash for r in revoked])
        return revoked

    async def _changed(self, hashes: list[str]) -> None:
        # One script: a poller that read the new counter before the changes were listed
        # would move past them and keep the changed keys cached (a revocation then waited
        # for the cache to expire, not for the next poll).
        await self.redis.eval(
            _CHANGED, 2, SEQ_KEY, CHANGES_KEY, CHANGES_KEPT, CHANGES_CHANNEL, *hashes
        )

    @contextlib.asynccontextmanager
    async def changes(self) -> AsyncIterator[Any]:
        """A ``PubSub`` subscribed to ``CHANGES_CHANNEL``: its ``get_message`` returns a message
        for each change and one for each (re)subscription (redis-py subscribes again by itself
        after a reconnect; changes made in between were not announced, so a subscription's
        confirmation means "read the counter")."""
        pubsub = self.redis.pubsub()
        try:
            await pubsub.subscribe(CHANGES_CHANNEL)
            yield pubsub
        finally:
            await pubsub.aclose()

    async def seq(self) -> int:
        """The change counter (0: nothing ever changed)."""
        raw = await self.redis.get(SEQ_KEY)
        return int(raw) if raw is not None else 0

    async def changes_since(self, seq: int) -> tuple[list[str], bool]:
        """Hashes changed after ``seq``, and whether the record of changes reaches back that
        far (False: some were forgotten; drop every cached key)."""
        rows = await self.redis.zrangebyscore(CHANGES_KEY, f"({seq}", "+inf", withscores=True)
        first = await self.redis.zrange(CHANGES_KEY, 0, 0, withscores=True)
        complete = not first or int(first[0][1]) <= seq + 1
        hashes = [m.decode() if isinstance(m, bytes) else m for m, _ in rows]
        return hashes, complete
