#!/usr/bin/env python3
"""Write ``genwire.json``, the Grafana dashboard (run by the upstream image; nothing of Grafana's
code is used here). Panels read the recording rules of deploy/prometheus/rules/.

    python deploy/grafana/generate_dashboard.py          # rewrite genwire.json
    python deploy/grafana/generate_dashboard.py --check  # fail if it differs (the tests do)
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

OUT = Path(__file__).resolve().parent / "genwire.json"
DATASOURCE = {"type": "prometheus", "uid": "prometheus"}
"""The datasource deploy/grafana/provisioning/datasources/prometheus.yml provisions."""

BURN = (
    "genwire_slo:sli_error:ratio_rate{w} / on (slo, sli) group_left () (1 - genwire_slo:objective)"
)

# (row title, [(panel title, unit, [(expr, legend)], thresholds or None)])
ROWS: list[tuple[str, list[tuple[str, str, list[tuple[str, str]], list[float] | None]]]] = [
    (
        "Requests",
        [
            (
                "Gateway requests/s by entry point",
                "reqps",
                [("entrypoint:genwire_requests:rate5m", "{{entrypoint}}")],
                None,
            ),
            (
                "Gateway server-error ratio",
                "percentunit",
                [("entrypoint:genwire_request_errors:ratio_rate5m", "{{entrypoint}}")],
                [0.01],
            ),
            (
                "Results/s by outcome",
                "reqps",
                [("sum by (outcome) (model_outcome:genwire_results:rate5m)", "{{outcome}}")],
                None,
            ),
            (
                "End to end (receipt -> result)",
                "s",
                [
                    ("genwire_results:duration_seconds:p50_5m", "p50"),
                    ("genwire_results:duration_seconds:p99_5m", "p99"),
                ],
                [10.0],
            ),
        ],
    ),
    (
        "Latency per stage and entry point",
        [
            (
                "Processing time per record, p99",
                "s",
                [("stage:genwire_process_duration_seconds:p99_5m", "{{stage}}")],
                None,
            ),
            (
                "Processing time per record, p50",
                "s",
                [("stage:genwire_process_duration_seconds:p50_5m", "{{stage}}")],
                None,
            ),
            (
                "Gateway p99 by method",
                "s",
                [
                    (
                        "entrypoint_method:genwire_request_duration_seconds:p99_5m",
                        "{{entrypoint}} {{method}}",
                    )
                ],
                None,
            ),
            (
                "Time to first token p99, time per output token p50",
                "s",
                [
                    ("model:genwire_time_to_first_token_seconds:p99_5m", "ttft p99 {{model}}"),
                    ("model:genwire_time_per_output_token_seconds:p50_5m", "tpot p50 {{model}}"),
                ],
                [1.0],
            ),
        ],
    ),
    (
        "Throughput",
        [
            (
                "Records/s per stage and input topic",
                "ops",
                [("stage_topic:genwire_messages:rate5m", "{{stage}} {{topic}}")],
                None,
            ),
            (
                "Records/s by outcome",
                "ops",
                [
                    (
                        "sum by (stage, outcome) "
                        '(stage_topic_outcome:genwire_messages:rate5m{outcome!="ok"})',
                        "{{stage}} {{outcome}}",
                    )
                ],
                None,
            ),
            ("Tokens/s", "short", [("model:genwire_tokens:rate5m", "{{model}}")], None),
            ("Records in flight", "short", [("stage:genwire_inflight:sum", "{{stage}}")], None),
        ],
    ),
    (
        "Errors, DLQ and retries",
        [
            (
                "Dead letters/s by stage and code",
                "ops",
                [("stage_code:genwire_dlq:rate5m", "{{stage}} {{code}}")],
                None,
            ),
            (
                "Dead-letter share of records",
                "percentunit",
                [("stage:genwire_dlq:ratio_rate5m", "{{stage}}")],
                [0.05],
            ),
            (
                "Failed, parked, uncommitted share",
                "percentunit",
                [("stage:genwire_message_failures:ratio_rate5m", "{{stage}}")],
                None,
            ),
            (
                "Parked on genwire.retry/s",
                "ops",
                [("stage_code:genwire_retry_topic:rate5m", "{{stage}} {{code}}")],
                None,
            ),
        ],
    ),
    (
        "Kafka consumers",
        [
            (
                "Consumer lag (records)",
                "short",
                [("group_topic:genwire_consumer_lag:sum", "{{group}} {{topic}}")],
                [1000.0],
            ),
            (
                "Time to drain the lag",
                "s",
                [("group_topic:genwire_consumer_lag:drain_seconds", "{{group}} {{topic}}")],
                None,
            ),
            (
                "No commit progress (broker view)",
                "s",
                [("group_topic:genwire_consumer_stalled_seconds:max", "{{group}} {{topic}}")],
                [180.0],
            ),
            (
                "Stalled partitions (runtime view)",
                "short",
                [
                    (
                        "sum by (stage, topic) (genwire_partition_stalled)",
                        "{{stage}} {{topic}}",
                    ),
                    (
                        "min by (stage, dependency) (genwire_dependency_up)",
                        "up {{stage}} {{dependency}}",
                    ),
                ],
                None,
            ),
            (
                "Oldest record waiting for Kafka's acknowledgement (line: the default "
                "STALL_TIMEOUT_S; genwire_producer_stuck uses each service's own)",
                "s",
                [("max by (stage) (genwire_producer_unacknowledged_seconds)", "{{stage}}")],
                [60.0],
            ),
        ],
    ),
    (
        "SLO burn rate (1 = the budget lasts exactly 30 days)",
        [
            (
                "Burn rate over 1 h (page at 14.4 with 5 m)",
                "short",
                [(BURN.format(w="1h"), "{{slo}} {{sli}} {{entrypoint}}{{stage}}")],
                [14.4],
            ),
            (
                "Burn rate over 5 m",
                "short",
                [(BURN.format(w="5m"), "{{slo}} {{sli}} {{entrypoint}}{{stage}}")],
                [14.4],
            ),
            (
                "Burn rate over 6 h (page at 6 with 30 m)",
                "short",
                [(BURN.format(w="6h"), "{{slo}} {{sli}} {{entrypoint}}{{stage}}")],
                [6.0],
            ),
            (
                "Burn rate over 3 d (ticket at 1 with 6 h)",
                "short",
                [(BURN.format(w="3d"), "{{slo}} {{sli}} {{entrypoint}}{{stage}}")],
                [1.0],
            ),
        ],
    ),
]


def _panel(pid: int, x: int, y: int, title: str, unit: str, targets: list[tuple[str, str]],
           thresholds: list[float] | None) -> dict[str, Any]:  # fmt: skip
    steps: list[dict[str, Any]] = [{"color": "green", "value": None}]
    steps += [{"color": "red", "value": t} for t in thresholds or []]
    return {
        "id": pid,
        "type": "timeseries",
        "title": title,
        "datasource": DATASOURCE,
        "gridPos": {"h": 8, "w": 6, "x": x, "y": y},
        "fieldConfig": {
            "defaults": {
                "unit": unit,
                "thresholds": {"mode": "absolute", "steps": steps},
                "custom": {"thresholdsStyle": {"mode": "line" if thresholds else "off"}},
            },
            "overrides": [],
        },
        "options": {"legend": {"displayMode": "list", "placement": "bottom"}},
        "targets": [
            {"refId": chr(ord("A") + i), "datasource": DATASOURCE, "expr": e, "legendFormat": f}
            for i, (e, f) in enumerate(targets)
        ],
    }


def dashboard() -> dict[str, Any]:
    """The dashboard as Grafana's JSON model (schemaVersion 39: Grafana 10 and later)."""
    panels: list[dict[str, Any]] = []
    pid = 1
    y = 0
    for title, row in ROWS:
        panels.append(
            {
                "id": pid,
                "type": "row",
                "title": title,
                "collapsed": False,
                "gridPos": {"h": 1, "w": 24, "x": 0, "y": y},
                "panels": [],
            }
        )
        pid += 1
        y += 1
        for i, (ptitle, unit, targets, thresholds) in enumerate(row):
            panels.append(
                _panel(pid, 6 * (i % 4), y + 8 * (i // 4), ptitle, unit, targets, thresholds)
            )
            pid += 1
        y += 8 * ((len(row) + 3) // 4)
    return {
        "uid": "genwire",
        "title": "genwire",
        "description": "Per-stage latency, throughput, errors, consumer lag, DLQ and SLO burn "
        "rate (docs/observability.md).",
        "tags": ["genwire"],
        "timezone": "utc",
        "schemaVersion": 39,
        "version": 1,
        "editable": True,
        "refresh": "30s",
        "time": {"from": "now-3h", "to": "now"},
        "templating": {"list": []},
        "annotations": {"list": []},
        "panels": panels,
    }


def render() -> str:
    return json.dumps(dashboard(), indent=2) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail if genwire.json is stale")
    args = parser.parse_args(argv)
    text = render()
    if args.check:
        if not OUT.exists() or OUT.read_text() != text:
            print(f"{OUT} is out of date: run {Path(__file__).name}", file=sys.stderr)
            return 1
        return 0
    OUT.write_text(text)
    print(OUT)
    return 0


if __name__ == "__main__":
    sys.exit(main())
