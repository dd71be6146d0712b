"""Counting what came back: pure logic, no Kafka (unit-tested on its own).

The load generator registers every request id it sends and when the broker acknowledged it;
the results reader feeds every record of ``genwire.results`` with its arrival time. From that
the tracker tells what was lost, what failed and with which code, which ids came back more than
once and whether those duplicates agree, the longest stretch without results, and how long the
results took to flow again after each fault. Times are ``time.monotonic()`` seconds.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

STEADY_GAP_S = 2.0
"""Results are "flowing" when consecutive ones arrive at most this far apart…"""
STEADY_SPAN_S = 5.0
"""…for this long (or until the last result, when the load ended sooner)."""


@dataclass(frozen=True)
class Outcome:
    """What one result record said: its text and finish reason, or its error code."""

    text: str = ""
    finish_reason: str | None = None
    error_code: str | None = None

    @property
    def is_error(self) -> bool:
        """An error result (``error`` set)."""
        return self.error_code is not None


@dataclass(frozen=True)
class Inconsistent:
    """One request id answered differently by two of its result records."""

    request_id: str
    first: Outcome
    other: Outcome


@dataclass
class TrackerSummary:
    """The figures of one run (see ``ResultTracker.summary``)."""

    sent: int
    not_accepted: int
    results: int
    lost: int
    lost_ids: list[str]
    error_results: dict[str, int]
    error_ids: dict[str, list[str]]
    duplicate_records: int
    duplicate_ids: int
    inconsistent: list[Inconsistent]
    longest_gap_s: float
    longest_gap_at_s: float
    """When the longest gap began, in seconds since the load started."""
    recoveries_s: list[float | None] = field(default_factory=list)
    """Per fault end: seconds until results flowed again (None: they never did)."""

    @property
    def inconsistent_duplicates(self) -> int:
        """Request ids with two different answers."""
        return len(self.inconsistent)

    @property
    def error_total(self) -> int:
        """Request ids answered with an error."""
        return sum(self.error_results.values())


class ResultTracker:
    """Sent request ids, their acknowledgements, and every result record that answered them."""

    def __init__(self) -> None:
        self._expected: set[str] = set()
        self._acked: dict[str, float] = {}
        self._outcomes: dict[str, list[Outcome]] = {}
        self._arrivals: list[float] = []
        self.foreign_records = 0
        """Result records of ids this run did not send (other traffic): ignored."""

    # -- feeding ----------------------------------------------------------------------------------

    def expect(self, request_id: str) -> None:
        """Register an id before it is produced (its result may beat the acknowledgement)."""
        self._expected.add(request_id)

    def acked(self, request_id: str, at: float) -> None:
        """The broker acknowledged the request (the first acknowledgement counts)."""
        self._expected.add(request_id)
        self._acked.setdefault(request_id, at)

    def record(self, request_id: str, outcome: Outcome, at: float) -> bool:
        """One result record arrived; returns False (and ignores it) for a foreign id."""
        if request_id not in self._expected:
            self.foreign_records += 1
            return False
        self._outcomes.setdefault(request_id, []).append(outcome)
        self._arrivals.append(at)
        return True

    # -- reading ----------------------------------------------------------------------------------

    @property
    def expected(self) -> int:
        """Ids registered so far."""
        return len(self._expected)

    @property
    def acknowledged(self) -> int:
        """Ids the broker acknowledged so far."""
        return len(self._acked)

    @property
    def answered(self) -> int:
        """Ids with at least one result."""
        return len(self._outcomes)

    def outcomes(self, request_id: str) -> list[Outcome]:
        """Every result record of ``request_id``, in arrival order."""
        return list(self._outcomes.get(request_id, ()))

    def outstanding(self) -> list[str]:
        """Acknowledged ids still without a result."""
        return sorted(rid for rid in self._acked if rid not in self._outcomes)

    def arrivals(self) -> list[float]:
        """Arrival times of every result record of our ids, sorted."""
        return sorted(self._arrivals)

    def summary(
        self, *, load_start: float, fault_ends: Sequence[float] = (), examples: int = 20
    ) -> TrackerSummary:
        """Figures of the run so far; ``fault_ends`` are when each injected fault was over."""
        sent_ids = set(self._acked) | set(self._outcomes)
        lost_ids = self.outstanding()
        errors: Counter[str] = Counter()
        error_ids: dict[str, list[str]] = {}
        inconsistent: list[Inconsistent] = []
        duplicate_records = 0
        duplicate_ids = 0
        for rid, outs in self._outcomes.items():
            first_error = next((o for o in outs if o.is_error), None)
            if first_error is not None and first_error.error_code is not None:
                errors[first_error.error_code] += 1
                error_ids.setdefault(first_error.error_code, [])
                if len(error_ids[first_error.error_code]) < examples:
                    error_ids[first_error.error_code].append(rid)
            if len(outs) > 1:
                duplicate_records += len(outs) - 1
                duplicate_ids += 1
                other = next((o for o in outs[1:] if o != outs[0]), None)
                if other is not None:
                    inconsistent.append(Inconsistent(rid, outs[0], other))
        times = self.arrivals()
        gap, gap_at = longest_gap(times, load_start)
        recoveries: list[float | None] = []
        for end in fault_ends:
            recovery = recovery_after(times, end)
            if recovery is None and not lost_ids and (not times or end >= times[-1]):
                recovery = 0.0  # the fault outlasted the load, and nothing was left to answer
            recoveries.append(recovery)
        return TrackerSummary(
            sent=len(sent_ids),
            not_accepted=len(self._expected - sent_ids),
            results=len(self._outcomes),
            lost=len(lost_ids),
            lost_ids=lost_ids[:examples],
            error_results=dict(sorted(errors.items())),
            error_ids=error_ids,
            duplicate_records=duplicate_records,
            duplicate_ids=duplicate_ids,
            inconsistent=inconsistent,
            longest_gap_s=gap,
            longest_gap_at_s=gap_at,
            recoveries_s=recoveries,
        )


def longest_gap(times: Sequence[float], start: float) -> tuple[float, float]:
    """The longest stretch without a result from ``start`` to the last result, and when it began
    (seconds after ``start``). ``times`` must be sorted; with none, (0, 0)."""
    if not times:
        return 0.0, 0.0
    best, best_at = 0.0, 0.0
    previous = start
    for t in times:
        if t - previous > best:
            best, best_at = t - previous, previous - start
        previous = max(previous, t)
    return best, best_at


def recovery_after(
    times: Sequence[float],
    fault_end: float,
    *,
    steady_gap_s: float = STEADY_GAP_S,
    steady_span_s: float = STEADY_SPAN_S,
) -> float | None:
    """Seconds from ``fault_end`` until results flow again, or None if they never do.

    Flowing again: from some result at or after ``fault_end`` on, results keep arriving at most
    ``steady_gap_s`` apart for ``steady_span_s`` (or until the last result, when the run ended
    sooner). A lone straggler followed by silence does not count. ``times`` must be sorted.
    """
    n = len(times)
    i = next((k for k, t in enumerate(times) if t >= fault_end), n)
    while i < n:
        start = times[i]
        k = i
        while k + 1 < n and times[k] < start + steady_span_s:
            if times[k + 1] - times[k] > steady_gap_s:
                break
            k += 1
        else:
            return max(0.0, start - fault_end)
        i = k + 1
    return None


def count_by(values: Iterable[str]) -> dict[str, int]:
    """How many of each value, sorted by value (for the report)."""
    return dict(sorted(Counter(values).items()))
