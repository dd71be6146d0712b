"""Which offset is safe to commit when records of one partition finish out of order."""

from __future__ import annotations

import heapq


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

    def started(self, offset: int) -> None:
        """A record at ``offset`` was handed to a worker."""
        heapq.heappush(self._inflight, offset)

    def finished(self, offset: int) -> None:
        """The record at ``offset`` produced its outputs (or went to the DLQ)."""
        self._done.add(offset)
        self._highest_done = max(self._highest_done, offset)
        while self._inflight and self._inflight[0] in self._done:
            self._done.discard(heapq.heappop(self._inflight))

    def committable(self) -> int | None:
        """The next offset to commit (Kafka commits "next to read"), or None if nothing new."""
        if self._inflight:
            return self._inflight[0]
        return self._highest_done + 1 if self._highest_done >= 0 else None

    @property
    def pending(self) -> int:
        """How many records are still in flight."""
        return len(self._inflight)
