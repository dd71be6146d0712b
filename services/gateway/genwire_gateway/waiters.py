"""Local waiters: the callers of this gateway instance waiting for a request's result or tokens.

Every instance reads every result and token (see ``fanout``); a record whose request id has no
waiter here is skipped before it is even parsed. A request id may have several waiters (two
callers repeating one idempotency key); each gets every event.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from contextlib import contextmanager

from genwire.events import GenerationResult, TokenEvent


class Failure:
    """Queued to a streaming waiter when its wait fails; the stream re-raises ``exc``."""

    __slots__ = ("exc",)

    def __init__(self, exc: BaseException) -> None:
        self.exc = exc


StreamItem = TokenEvent | GenerationResult | Failure
"""What a streaming waiter receives, in order: token chunks, then the result (or a Failure)."""


class Waiter:
    """One caller's interest in one request: its result, and its token chunks when streaming."""

    __slots__ = ("chunks", "request_id", "result")

    def __init__(self, request_id: str, *, stream: bool) -> None:
        self.request_id = request_id
        self.result: asyncio.Future[GenerationResult] = asyncio.get_running_loop().create_future()
        self.chunks: asyncio.Queue[StreamItem] | None = asyncio.Queue() if stream else None

    def fail(self, exc: BaseException) -> None:
        """End the wait with ``exc`` (a failed publish, the gateway stopping)."""
        if not self.result.done():
            self.result.set_exception(exc)
            # Nobody may await it (a stream reads chunks): don't log "never retrieved".
            self.result.exception()
        if self.chunks is not None:
            self.chunks.put_nowait(Failure(exc))


class WaiterRegistry:
    """Waiters by request id; resolved by the fan-out reader, removed by their callers."""

    def __init__(self) -> None:
        self._waiters: dict[str, list[Waiter]] = {}

    def __len__(self) -> int:
        return sum(len(w) for w in self._waiters.values())

    def wants(self, request_id: str) -> bool:
        """Whether any local caller waits for ``request_id`` (checked before parsing a record)."""
        return request_id in self._waiters

    def register(self, request_id: str, *, stream: bool = False) -> Waiter:
        """Start waiting for ``request_id``; call ``unregister`` (or use ``waiting``) after."""
        waiter = Waiter(request_id, stream=stream)
        self._waiters.setdefault(request_id, []).append(waiter)
        return waiter

    def unregister(self, waiter: Waiter) -> None:
        """Stop waiting (idempotent)."""
        waiters = self._waiters.get(waiter.request_id)
        if not waiters:
            return
        if waiter in waiters:
            waiters.remove(waiter)
        if not waiters:
            del self._waiters[waiter.request_id]

    @contextmanager
    def waiting(self, request_id: str, *, stream: bool = False) -> Iterator[Waiter]:
        """Register for the duration of a ``with`` block."""
        waiter = self.register(request_id, stream=stream)
        try:
            yield waiter
        finally:
            self.unregister(waiter)

    def resolve(self, result: GenerationResult) -> int:
        """Hand ``result`` to every waiter of its request; returns how many there were."""
        waiters = self._waiters.get(result.request_id, ())
        for waiter in waiters:
            if not waiter.result.done():
                waiter.result.set_result(result)
            if waiter.chunks is not None:
                waiter.chunks.put_nowait(result)
        return len(waiters)

    def push(self, token: TokenEvent) -> int:
        """Queue ``token`` to every streaming waiter of its request; returns how many."""
        count = 0
        for waiter in self._waiters.get(token.request_id, ()):
            if waiter.chunks is not None:
                waiter.chunks.put_nowait(token)
                count += 1
        return count

    def fail_all(self, exc: BaseException) -> None:
        """End every wait with ``exc`` (the gateway is stopping)."""
        for waiters in list(self._waiters.values()):
            for waiter in waiters:
                waiter.fail(exc)
