"""Time rings stay bounded; burn-rate rules need both windows over the factor."""

from __future__ import annotations

from genwire_monitor.burnrate import evaluate, ring_for
from genwire_monitor.config import BurnRule, default_burn_rules
from genwire_monitor.windows import CounterRing, TimeRing, merged, new_sketch


def test_counter_ring_sums_only_the_window() -> None:
    ring = CounterRing(width_s=1.0, span_s=10.0)
    for t in range(100, 110):
        ring.add(t + 0.5, now=109.9, good=t % 2 == 0)
    # a window is whole buckets, the one holding ``now`` included
    assert ring.window(109.9, 10.0) == (5, 10)
    assert ring.window(109.9, 3.0) == (1, 3)  # buckets 107, 108, 109


def test_counter_ring_drops_data_older_than_its_span_and_reuses_slots() -> None:
    ring = CounterRing(width_s=1.0, span_s=5.0)
    assert ring.add(100.0, now=100.0, good=True)
    assert not ring.add(90.0, now=100.0, good=True)  # older than the ring
    ring.add(200.0, now=200.0, good=False)  # a hundred seconds later: old buckets expire
    assert ring.window(200.0, 5.0) == (0, 1)
    assert ring.size == 6  # fixed however long it runs


def test_time_ring_sketches_merge_over_the_window() -> None:
    ring = TimeRing(1.0, 10.0, new_sketch)
    for i in range(1000):
        sketch = ring.at(100.0 + i / 100, now=109.99)
        assert sketch is not None
        sketch.add(float(i + 1))
    whole = merged(ring.window(109.99, 10.0))
    assert whole.count == 1000
    assert abs(whole.get_quantile_value(0.99) - 990) / 990 < 0.02
    recent = merged(ring.window(109.99, 2.0))  # buckets 108 and 109: values 801..1000
    assert recent.count == 200


def _ring_with(bad_share: float, seconds: int, now: float, rate: int = 10) -> CounterRing:
    ring = ring_for(default_burn_rules(), scale=1.0)
    for s in range(seconds):
        for i in range(rate):
            ring.add(now - seconds + s, now, good=i >= bad_share * rate)
    return ring


def test_page_rule_fires_when_both_windows_burn_fast() -> None:
    now = 100_000.0
    ring = _ring_with(bad_share=0.5, seconds=3600, now=now)
    results = evaluate(ring, 0.99, default_burn_rules(), now, 1.0, min_events=20)
    page = results[0]
    assert page.firing
    assert round(page.long_burn) == 50  # 50 % bad against a 1 % budget


def test_no_fire_when_only_the_long_window_burned() -> None:
    """The short window resets the alert soon after the problem stops."""
    rule = BurnRule(severity="page", long_s=3600, short_s=300, factor=14.4)
    now = 100_000.0
    ring = ring_for([rule], 1.0)
    for s in range(3600):
        bad = s < 3000  # bad for 50 minutes, good for the last 10
        for _ in range(10):
            ring.add(now - 3600 + s, now, good=not bad)
    (result,) = evaluate(ring, 0.99, [rule], now, 1.0, min_events=20)
    assert result.long_burn > 14.4
    assert result.short_burn == 0
    assert not result.firing


def test_min_events_and_scale() -> None:
    rule = BurnRule(severity="page", long_s=3600, short_s=300, factor=14.4)
    ring = ring_for([rule], scale=1 / 720)  # 1 h -> 5 s, 5 min -> 0.42 s
    now = 1000.0
    for i in range(5):
        ring.add(now - 0.1 * i, now, good=False)
    (few,) = evaluate(ring, 0.99, [rule], now, 1 / 720, min_events=20)
    assert not few.firing  # 100 % bad, but 5 events are not evidence
    assert few.long.seconds == 5.0
    for i in range(30):
        ring.add(now - 0.01 * i, now, good=False)
    (many,) = evaluate(ring, 0.99, [rule], now, 1 / 720, min_events=20)
    assert many.firing


def test_counts_since_a_time_take_no_event_from_before_it_and_keep_those_after() -> None:
    """``CounterRing.since``: no event before the start counts (the start's own bucket is left
    out when it holds one: the events after the start there are missed), the start's bucket
    counts whole when its events all came at or after the start, and an event counted stays
    counted at every later ``now`` (a window of ``now - start`` would move its first bucket as
    ``now`` moves within a bucket)."""
    ring = CounterRing(width_s=30.0, span_s=3600.0)
    ring.add(57.0, 57.0, good=False)  # after the start (56), in its bucket [30, 60)
    ring.add(61.0, 61.0, good=True)  # the next bucket
    for now in (61.0, 80.0, 91.0, 100.0, 119.0, 121.0, 900.0):
        assert ring.since(56.0, now) == (1, 2), now  # the start's bucket is all after it
    ring.add(40.0, 122.0, good=False)  # a late event from before the start, same bucket
    assert ring.since(56.0, 122.0) == (1, 1)  # that bucket is left out now
    assert ring.since(40.0, 122.0) == (1, 3)
    assert ring.since(60.0, 122.0) == (1, 1)  # a start on a boundary: its bucket from there


def test_a_reused_bucket_forgets_its_earliest_event_and_since_stays_inside_the_ring() -> None:
    """A slot reused for a newer bucket starts a new earliest event (an old one would leave the
    bucket out of every ``since``), and ``since`` never counts a slot older than the ring."""
    ring = CounterRing(width_s=10.0, span_s=30.0)  # 4 slots
    ring.add(1.0, 1.0, good=False)  # bucket 0, slot 0
    ring.add(45.0, 45.0, good=True)  # bucket 4: slot 0 again
    assert ring.since(41.0, 45.0) == (1, 1)  # from bucket 4: its earliest (45) is after 41
    stale = CounterRing(width_s=10.0, span_s=30.0)
    stale.add(1.0, 1.0, good=False)  # bucket 0, never overwritten
    assert stale.since(0.0, 45.0) == (0, 0)  # bucket 4 is now: bucket 0 is out of the ring


def test_since_within_a_window_takes_the_window_s_buckets_cut_at_the_start() -> None:
    """With a length, ``since`` is ``window``'s buckets with none from before the start: equal
    to ``window`` when the start is older than the window, even for a window that is not a
    whole number of buckets (``window`` then reaches a bucket further back than ``now - length``:
    an event there from before the start must not count)."""
    ring = CounterRing(width_s=42.0, span_s=7200.0)
    now = 10_030.0  # 8 s before its bucket ends: window(1 h) starts at 6,426, now - 1 h is 6,430
    ring.add(now - 3603.0, now, good=False)  # before now - 1 h, inside window()'s buckets
    ring.add(now - 100.0, now, good=True)
    assert ring.window(now, 3600.0) == (1, 2)
    assert ring.since(now - 7200.0, now, 3600.0) == (1, 2)  # start older than the window
    assert ring.since(now - 3600.0, now, 3600.0) == (1, 1)  # start inside: the early one out
    assert ring.since(now - 50.0, now, 3600.0) == (0, 0)  # from the start's bucket: nothing
