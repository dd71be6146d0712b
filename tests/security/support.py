"""Helpers shared by the security tests."""

from __future__ import annotations

import asyncio

from genwire_gateway.auth import Authenticator, AuthError

from genwire.apikeys import SCOPE_GENERATE


async def refused_as_revoked(auth: Authenticator, key: str, timeout_s: float) -> None:
    """Until ``key`` is refused as revoked; ``timeout_s`` is the test's bound."""
    async with asyncio.timeout(timeout_s):
        while True:
            try:
                await auth.authenticate(f"Bearer {key}", SCOPE_GENERATE)
            except AuthError as exc:
                assert "revoked" in exc.message
                return
            await asyncio.sleep(0.01)
