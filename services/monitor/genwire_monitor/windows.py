"""Bounded time windows: a ring of time buckets, so memory never grows with uptime.

Bucket ``i`` holds what happened in ``[i*width, (i+1)*width)`` (event time). A window query
merges the buckets that end inside ``(now - length, now]``; buckets older than the ring's
span are overwritten, and data that old is dropped on arrival.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Generic, TypeVar

import numpy as np
from ddsketch import DDSketch

T = TypeVar("T")

SKETCH_ACCURACY = 0.01  # 1 % relative error on every quantile


class TimeRing(Generic[T]):
    """``span_s`` of history in buckets of ``width_s``, each made by ``factory``."""

    def __init__(self, width_s: float, span_s: float, factory: Callable[[], T]) -> None:
        self.width = width_s
        self.size = math.ceil(span_s / width_s) + 1
        self._factory = factory
        self._slots: list[T | None] = [None] * self.size
        self._index: list[int] = [-1] * self.size

    def index(self, t: float) -> int:
        """The bucket number of time ``t``."""
        return math.floor(t / self.width)

    def at(self, t: float, now: float) -> T | None:
        """The bucket for an event at ``t`` (created if needed); None if older than the ring."""
        idx = self.index(min(t, now))
        if idx <= self.index(now) - self.size:
            return None
        slot = idx % self.size
        if self._index[slot] != idx:
            if self._index[slot] > idx:  # a newer bucket took the slot: this one expired
                return None
            self._slots[slot] = self._factory()
            self._index[slot] = idx
        return self._slots[slot]

    def window(self, now: float, length_s: float) -> list[T]:
        """Buckets inside ``(now - length_s, now]``, oldest first."""
        last = self.index(now)
        first = last - max(1, math.ceil(length_s / self.width)) + 1
        out = []
        for idx in range(max(first, last - self.size + 1), last + 1):
            slot = idx % self.size
            item = self._slots[slot]
            if self._index[slot] == idx and item is not None:
                out.append(item)
        return out


def new_sketch() -> DDSketch:
    """A DDSketch with the monitor's accuracy."""
    return DDSketch(relative_accuracy=SKETCH_ACCURACY)


def merged(sketches: list[DDSketch]) -> DDSketch:
    """One sketch with every value of ``sketches`` (mergeable: no accuracy lost)."""
    out = new_sketch()
    for sketch in sketches:
        if sketch.count:
            out.merge(sketch)
    return out


class CounterRing:
    """Good/total event counts per time bucket, summed over any window (numpy, fast)."""

    def __init__(self, width_s: float, span_s: float) -> None:
        self.width = width_s
        self.size = math.ceil(span_s / width_s) + 1
        self._index = np.full(self.size, -1, dtype=np.int64)
        self._good = np.zeros(self.size, dtype=np.int64)
        self._total = np.zeros(self.size, dtype=np.int64)
        self._earliest = np.full(self.size, math.inf)  # each bucket's earliest event (since)

    def add(self, t: float, now: float, good: bool) -> bool:
        """Count one event at ``t``; False if it is older than the ring holds."""
        t = min(t, now)
        idx = math.floor(t / self.width)
        if idx <= math.floor(now / self.width) - self.size:
            return False
        slot = idx % self.size
        if self._index[slot] != idx:
            if self._index[slot] > idx:
                return False
            self._index[slot] = idx
            self._good[slot] = 0
            self._total[slot] = 0
            self._earliest[slot] = math.inf
        self._earliest[slot] = min(self._earliest[slot], t)
        self._total[slot] += 1
        if good:
            self._good[slot] += 1
        return True

    def window(self, now: float, length_s: float) -> tuple[int, int]:
        """``(good, total)`` inside ``(now - length_s, now]``."""
        last = math.floor(now / self.width)
        first = last - max(1, math.ceil(length_s / self.width)) + 1
        mask = (self._index >= first) & (self._index <= last)
        return int(self._good[mask].sum()), int(self._total[mask].sum())

    def since(self, start: float, now: float, length_s: float = math.inf) -> tuple[int, int]:
        """``(good, total)`` of the events at or after ``start`` in the buckets ``window`` takes
        for ``length_s`` (all the ring holds by default): the bucket holding ``start`` counts
        whole when its earliest event is not before ``start``, else it is left out (never an
        event from before ``start``; at worst the rest of that bucket is missed). The same
        buckets whatever ``now`` is; with ``start`` before the window, exactly ``window``."""
        last = math.floor(now / self.width)
        first = last - self.size + 1  # what the ring holds
        if length_s != math.inf:
            first = max(first, last - max(1, math.ceil(length_s / self.width)) + 1)
        cut = math.floor(start / self.width)
        slot = cut % self.size
        if self._index[slot] == cut and self._earliest[slot] < start:
            cut += 1
        mask = (self._index >= max(first, cut)) & (self._index <= last)
        return int(self._good[mask].sum()), int(self._total[mask].sum())
