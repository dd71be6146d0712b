"""A stand-in for Kafka under the floor's clients: each publish is seen at once."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field


@dataclass
class EchoReplies:
    """The reader: ``expect`` a key, and its future is set when that key is published."""

    waiting: dict[bytes, asyncio.Future[float]] = field(default_factory=dict)

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    def expect(self, key: bytes) -> asyncio.Future[float]:
        self.waiting[key] = asyncio.get_running_loop().create_future()
        return self.waiting[key]

    def see(self, key: bytes) -> None:
        self.waiting.pop(key).set_result(time.perf_counter())


@dataclass
class EchoProducer:
    """The producer: keeps what it sent (and when), acknowledges at once."""

    replies: EchoReplies
    sent: list[tuple[str, bytes, bytes | None]] = field(default_factory=list)
    sent_at: list[float] = field(default_factory=list)

    async def send(
        self, topic: str, value: bytes, *, key: bytes | None = None, **_: object
    ) -> asyncio.Future[object]:
        self.sent.append((topic, value, key))
        self.sent_at.append(time.perf_counter())
        self.replies.see(key or b"")
        done: asyncio.Future[object] = asyncio.get_running_loop().create_future()
        done.set_result(None)
        return done
