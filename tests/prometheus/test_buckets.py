"""The latency histograms' edges: the SLO thresholds, and room for the longest deadline.

A histogram's last finite edge caps ``histogram_quantile``: every p99 past it reads as that
edge, so the buckets must reach as far as a request may wait.
"""

from __future__ import annotations

from genwire_gateway.config import GatewaySettings
from genwire_monitor.histogram import LATENCY_BUCKETS_S

from genwire.metrics import LATENCY_BUCKETS


def test_buckets_reach_the_gateways_deadlines() -> None:
    settings = GatewaySettings()
    assert max(LATENCY_BUCKETS) >= settings.request_timeout_s
    assert max(LATENCY_BUCKETS) >= settings.max_timeout_s
    assert max(LATENCY_BUCKETS_S) >= settings.max_timeout_s  # the monitor's own histogram


def test_buckets_keep_the_slo_edges_in_order() -> None:
    """The SLO rules read the bucket whose edge is the threshold (generate_slo_rules.py)."""
    assert {0.5, 1, 10} <= set(LATENCY_BUCKETS)
    assert list(LATENCY_BUCKETS) == sorted(set(LATENCY_BUCKETS))
