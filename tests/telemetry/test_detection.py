"""The detection scenario (``genwire monitor-bench --detection``): its arithmetic, and the real
engine paging when the Workbook says it should after a full long window of good traffic."""

from __future__ import annotations

import pytest
from genwire_bench.monitor.detection import HOUR, time_to_page, warmed, workbook_s
from genwire_monitor.config import default_burn_rules

RULES = default_burn_rules()


def test_the_workbooks_arithmetic() -> None:
    # 14.4x over 1 h at 0.99: 14.4 % of the hour must be bad, i.e. 8.64 min of all-bad traffic
    assert workbook_s(RULES, 0.99, 1.0) == pytest.approx(0.144 * HOUR)
    assert workbook_s(RULES, 0.99, 0.5) == pytest.approx(0.288 * HOUR)
    # 10 % bad cannot reach 14.4 % over any window: only the 6 h / 6x rule pages, after 3.6 h
    assert workbook_s(RULES, 0.99, 0.1) == pytest.approx(3.6 * HOUR)
    assert workbook_s(RULES, 0.99, 0.05) is None  # below every page rule's factor: never
    assert workbook_s(RULES, 0.999, 1.0) == pytest.approx(0.0144 * HOUR)


def test_a_full_long_window_delays_the_page_as_the_workbook_says() -> None:
    # Coarse evaluations (every production minute) keep this quick; windows scaled 1/360.
    base = warmed(0.99, 1 / 360, rate=60.0, eval_interval_s=60.0)
    measured, expected, rule = time_to_page(base, 1.0, seed=7)
    assert expected == pytest.approx(518.4)
    assert measured is not None
    # Not within the short window (5 min): a full hour of good traffic must be outweighed.
    assert measured > 300.0
    # Within two evaluations (+ the trace's completion) of the arithmetic.
    assert abs(measured - expected) <= 2 * 60.0 + 60.0
    assert "1h" in rule
