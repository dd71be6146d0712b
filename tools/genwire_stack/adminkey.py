"""The admin API key of a stack: created on the first ``genwire up`` (natively) or by the
compose ``keys-init`` one-shot (``genwire keys ensure-admin``), saved (mode 0600) under
``GENWIRE_HOME``, registered again if Redis lost it; on Kubernetes a key from a Secret is
registered by a Job (``genwire keys ensure-admin --from-env``; docs/security.md)."""

from __future__ import annotations

import asyncio
from pathlib import Path

from genwire.apikeys import (
    ADMIN_KEY_NAME,
    SCOPE_ADMIN,
    KeyStore,
    hash_key,
    new_key,
    read_saved_key,
    save_key,
    saved_key_path,
    well_formed,
)
from genwire.redisconn import connect
from genwire.settings import CommonSettings
from genwire_stack.default_model import Out, quiet
from genwire_stack.errors import StackError


async def _register(redis_url: str, key: str) -> tuple[bool, bool]:
    """(newly registered, revoked) for ``key`` in the Redis at ``redis_url``."""
    redis = connect(redis_url, timeout_s=5.0)
    try:
        store = KeyStore(redis)
        added = await store.register(key, ADMIN_KEY_NAME, [SCOPE_ADMIN])
        if added is not None:
            return True, False
        record = await store.get(hash_key(key))
        return False, bool(record is not None and record.revoked)
    finally:
        await redis.aclose()  # type: ignore[attr-defined]


def ensure_admin_key(settings: CommonSettings | None = None, out: Out = quiet) -> Path:
    """Make sure the saved admin key exists and Redis knows it; returns where it is saved."""
    cfg = settings or CommonSettings()
    home = cfg.home.expanduser()
    path = saved_key_path(home)
    saved = read_saved_key(home)
    key = saved or new_key()
    try:
        added, revoked = asyncio.run(_register(cfg.redis_url, key))
    except Exception as exc:
        raise StackError(f"could not register the admin API key in Redis: {exc}") from exc
    if saved is None:
        save_key(key, home)
        out(f"created the admin API key, saved (mode 0600) in {path}")
        out("the genwire CLI, bench and demo send it; other clients: GENWIRE_API_KEY")
    elif added:
        out(f"registered the saved admin API key ({path}) again: Redis did not know it")
    elif revoked:
        out(
            f"the saved admin API key ({path}) was revoked: set GENWIRE_API_KEY to another "
            "admin key, or delete that file and run genwire up again for a new one"
        )
    return path


def register_admin_key(key: str, settings: CommonSettings | None = None) -> str:
    """Register ``key`` (e.g. from a Kubernetes Secret) as an admin key in Redis; saves no
    file. Returns ``registered`` or ``known``; a malformed or revoked key is a StackError."""
    cfg = settings or CommonSettings()
    if not well_formed(key):
        raise StackError(
            "the key is malformed: gw- and 43 URL-safe characters (genwire keys "
            "generate prints one)"
        )
    try:
        added, revoked = asyncio.run(_register(cfg.redis_url, key))
    except Exception as exc:
        raise StackError(f"could not register the admin API key in Redis: {exc}") from exc
    if revoked:
        raise StackError(
            "that key was revoked: put a new one in the Secret (genwire keys "
            "generate) and run the Job again"
        )
    return "registered" if added else "known"
