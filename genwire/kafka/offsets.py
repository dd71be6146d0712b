"""Which offset is safe to commit when records of one partition finish out of order."""

from __future__ import annotations

import heapq
import time


class PartitionOffsets:
    """Tracks in-flight offsets of one partition; commits stop below the oldest unfinished one.

    Records run concurrently, so a later record may finish first. Committing its offset would
    skip the unfinished earlier one after a crash, so the committable position is the smallest
    offset still in flight (or one past the highest finished when none is).
    """

    def __init__(self) -> None:
        self._inflight: list[int] = []
        self._done: set[int] = set()
        self._highest_done = -1
        self.head_since = time.monotonic()
        """When the oldest record in flight became the oldest: how long commits have waited."""
        self.committed: int | None = None
        """The last position the broker accepted for this partition."""
        self._uncommitted_since: float | None = None

    def started(self, offset: int) -> None:
        """A record at ``offset`` was handed to a worker."""
        if not self._inflight:
            self.head_since = time.monotonic()
        heapq.heappush(self._inflight, offset)

    def finished(self, offset: int) -> None:
        """The record at ``offset`` produced its outputs (or went to the DLQ)."""
        self._done.add(offset)
        self._highest_done = max(self._highest_done, offset)
        head = self._inflight[0] if self._inflight else None
        while self._inflight and self._inflight[0] in self._done:
            self._done.discard(heapq.heappop(self._inflight))
        now = time.monotonic()
        if self._inflight and self._inflight[0] != head:
            self.head_since = now
        if self._uncommitted_since is None and self.committable() != self.committed:
            self._uncommitted_since = now

    def was_committed(self, position: int) -> None:
        """The broker accepted ``position`` as this partition's commit."""
        self.committed = position
        self._uncommitted_since = None if position == self.committable() else time.monotonic()

    def stalled_for(self, now: float | None = None) -> float:
        """Seconds this partition has not made progress although it has work (0: it has none).

        Progress is the oldest in-flight record finishing, or a finished position reaching the
        broker. A record stuck in flight, or commits that keep failing, both count.
        """
        now = time.monotonic() if now is None else now
        waited = now - self.head_since if self._inflight else 0.0
        if self._uncommitted_since is not None:
            waited = max(waited, now - self._uncommitted_since)
        return waited

    def committable(self) -> int | None:
        """The next offset to commit (Kafka commits "next to read"), or None if nothing new."""
        if self._inflight:
            return self._inflight[0]
        return self._highest_done + 1 if self._highest_done >= 0 else None

    @property
    def pending(self) -> int:
        """How many records are still in flight."""
        return len(self._inflight)
