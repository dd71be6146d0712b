"""Stalled partitions from broker offsets alone: pure bookkeeping, no Kafka, no clock of its own.

A consumer group's partition is *stalled* when records wait in it (its committed offset is
below the log end offset) and that committed offset has not moved for ``threshold_s``. The
clock starts when the partition is first seen lagging, or when its committed offset last
moved, whichever is later: a partition idle for an hour that just received a record has
waited for seconds, not an hour. Only what the broker says counts, so a service that is dead,
hung or reporting itself healthy while it makes no progress is caught all the same.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

Key = tuple[str, str, int]  # (group, topic, partition)


@dataclass(frozen=True)
class PartitionSample:
    """What the broker says about one partition of a group at one moment."""

    group: str
    topic: str
    partition: int
    committed: int | None  # the group's committed offset (next to read); None: never committed
    start: int  # log start offset (older records were deleted by retention)
    end: int  # log end offset (the next offset to be written)

    @property
    def key(self) -> Key:
        """``(group, topic, partition)``."""
        return (self.group, self.topic, self.partition)

    @property
    def position(self) -> int:
        """Where the group would read next: its commit, or the log start without one.

        Without a commit (or with one below the log start, deleted by retention) a genwire
        consumer starts at the earliest record still there.
        """
        if self.committed is None or self.committed < self.start:
            return self.start
        return self.committed

    @property
    def lag(self) -> int:
        """Records waiting for the group (0 when none)."""
        return max(0, self.end - self.position)


@dataclass(frozen=True)
class PartitionStatus:
    """The verdict on one partition: its offsets and how long it has not progressed."""

    group: str
    topic: str
    partition: int
    committed: int | None
    end: int
    lag: int
    stalled_s: float  # seconds lagging with the committed offset unchanged (0: no lag)
    stalled: bool  # lag > 0 and stalled_s >= the threshold

    @property
    def key(self) -> Key:
        """``(group, topic, partition)``."""
        return (self.group, self.topic, self.partition)


@dataclass
class _State:
    committed: int | None
    since: float | None  # start of the current lagging-without-progress period; None: no lag


class StallTracker:
    """Keeps, per partition, the last committed offset and since when it has not moved."""

    def __init__(self, threshold_s: float) -> None:
        self.threshold_s = threshold_s
        self._states: dict[Key, _State] = {}
        self._latest: dict[Key, PartitionStatus] = {}

    def observe(
        self, group: str, samples: Iterable[PartitionSample], now: float
    ) -> list[PartitionStatus]:
        """Take one complete reading of ``group``; returns the verdicts of its partitions.

        A partition of ``group`` missing from ``samples`` (its topic deleted or shrunk) is
        forgotten. Other groups are untouched, so a group that could not be read this time
        keeps its last verdicts.
        """
        out: list[PartitionStatus] = []
        seen: set[Key] = set()
        for s in samples:
            if s.group != group:
                raise ValueError(f"sample of group {s.group!r} in a reading of {group!r}")
            seen.add(s.key)
            st = self._states.get(s.key)
            lag = s.lag
            if lag == 0:
                since = None
            elif st is None or st.since is None or st.committed != s.committed:
                since = now  # lag just began, or the commit moved: progress, restart the clock
            else:
                since = st.since
            self._states[s.key] = _State(s.committed, since)
            stalled_s = max(0.0, now - since) if since is not None else 0.0
            status = PartitionStatus(
                group=s.group,
                topic=s.topic,
                partition=s.partition,
                committed=s.committed,
                end=s.end,
                lag=lag,
                stalled_s=stalled_s,
                stalled=lag > 0 and stalled_s >= self.threshold_s,
            )
            self._latest[s.key] = status
            out.append(status)
        for key in [k for k in self._states if k[0] == group and k not in seen]:
            del self._states[key]
            self._latest.pop(key, None)
        return out

    def snapshot(self) -> list[PartitionStatus]:
        """The latest verdict of every partition known, ordered by group, topic, partition."""
        return [self._latest[k] for k in sorted(self._latest)]

    def stalled(self) -> list[PartitionStatus]:
        """The partitions stalled as of their latest reading."""
        return [s for s in self.snapshot() if s.stalled]
