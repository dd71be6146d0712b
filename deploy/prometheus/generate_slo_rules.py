#!/usr/bin/env python3
"""Write ``rules/genwire-slo.rules.yml``: SLIs over seven windows and multi-window burn-rate alerts.

The SRE Workbook's scheme ("Alerting on SLOs", the 30-day table; sloth generates the same):
page when the error budget burns 14.4x over 1 h AND 5 min, or 6x over 6 h AND 30 min; ticket at
3x over 1 d AND 2 h, or 1x over 3 d AND 6 h. An SLI is "bad events / all events" per window:
latency SLIs read the histogram bucket whose edge IS the threshold (no interpolation), error
SLIs the outcome codes that mean "our fault" (5xx: see SERVER_ERROR_CODES).

    python deploy/prometheus/generate_slo_rules.py          # rewrite the file
    python deploy/prometheus/generate_slo_rules.py --check  # fail if it differs (the tests do)

Standard library only; the output is plain YAML written by hand below (stable, diffable).
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

OUT = Path(__file__).resolve().parent / "rules" / "genwire-slo.rules.yml"

WINDOWS = ("5m", "30m", "1h", "2h", "6h", "1d", "3d")
"""Every window a burn-rate pair below reads."""

MIN_EVENTS = 20
"""Events a pair's short window must hold before it may fire (the monitor's ``min_events``): at
low traffic one slow request is a 100 % bad ratio, no evidence of a burn."""

SECONDS = {"5m": 300, "30m": 1800, "1h": 3600, "2h": 7200, "6h": 21600, "1d": 86400, "3d": 259200}

PAGE = (("1h", "5m", 14.4), ("6h", "30m", 6.0))
"""(long, short, burn rate): 2 % of a 30-day budget in 1 h, 5 % in 6 h."""
TICKET = (("1d", "2h", 3.0), ("3d", "6h", 1.0))
"""10 % of the budget in 1 d (sloth's extra row), 10 % in 3 d."""

SERVER_ERROR_CODES = (
    "unknown",
    "internal",
    "unavailable",
    "model_not_loaded",
    "inference_failed",
    "deadline_exceeded",
)
"""Outcome codes that are the service's fault: every genwire.request.ErrorCode whose HTTP status
is 5xx, plus the gateway's ``unknown`` (an exception no code was mapped to). Input problems
(4xx) and cancellations spend no budget. tests/prometheus checks this list against the code."""

GENERATION_METHODS = ("Generate", "GenerateStream", "/v1/completions", "/v1/chat/completions")
"""Gateway methods that run a generation (the latency SLO's population); Submit, GetResult,
Cancel and /v1/models answer from Redis or Kafka and would dilute it."""

STAGE_TOPICS = ("genwire.requests", "genwire.prepared", "genwire.generations")
"""Each stage's main input topic: control messages and replays are not requests (the stage:
rules of genwire.rules.yml select the same topics; tests/prometheus checks both)."""

TTFT_METRIC = "genwire_gateway_time_to_first_token_seconds"
"""The ttft SLI: time to first token as the caller waits it, from the gateway's receipt
(label ``entrypoint``). Requests produced straight to genwire.requests pass no gateway: the
monitor's ttft SLO (from the record's timestamp) covers them."""


@dataclass(frozen=True)
class SLI:
    """One SLI: ``slo`` and ``sli`` (latency|errors) label its series, ``by`` its breakdown."""

    slo: str
    sli: str
    objective: float
    bad: str  # PromQL with {w} for the window; a rate of bad events
    total: str  # PromQL with {w}; a rate of all events
    by: tuple[str, ...] = ()
    extra: tuple[tuple[str, str], ...] = ()  # constant labels (e.g. stage)
    doc: str = ""


def _latency(metric: str, selector: str, le: str, by: tuple[str, ...]) -> tuple[str, str]:
    group = f"sum by ({', '.join(by)}) " if by else "sum "
    total = f"{group}(rate({metric}_count{{{selector}}}[{{w}}]))"
    good = f'{group}(rate({metric}_bucket{{{selector}, le="{le}"}}[{{w}}]))'
    return f"({total} - {good})", total


def _errors(metric: str, selector: str, code_label: str, by: tuple[str, ...]) -> tuple[str, str]:
    group = f"sum by ({', '.join(by)}) " if by else "sum "
    codes = "|".join(SERVER_ERROR_CODES)
    bad = f'{group}(rate({metric}{{{selector}, {code_label}=~"{codes}"}}[{{w}}]))'
    # `or 0 * total`: no bad series yet is a ratio of 0, not "no data".
    total = f"{group}(rate({metric}{{{selector}}}[{{w}}]))"
    return f"({bad} or 0 * {total})", total


def slis() -> list[SLI]:
    """The SLOs; latency thresholds and objectives match the monitor's (docs/monitor.md)."""
    methods = "|".join(GENERATION_METHODS)
    topics = "|".join(STAGE_TOPICS)
    out: list[SLI] = []
    bad, total = _latency("genwire_request_duration_seconds", 'entrypoint=""', "10.0", ())
    out.append(
        SLI("e2e", "latency", 0.999, bad, total, doc="99.9 % of requests: receipt -> result <= 10s")
    )
    # Caller-side, like the monitor's ttft: the gateway's histogram starts when it receives the
    # request. Inference's genwire_time_to_first_token_seconds starts at its own Triton call,
    # so the wait in Kafka and in preprocess (where a backlog shows) was never in the SLO.
    bad, total = _latency(TTFT_METRIC, 'entrypoint!=""', "1.0", ())
    out.append(SLI("ttft", "latency", 0.99, bad, total, doc="99 % of gateway first tokens <= 1 s"))
    bad, total = _latency(
        "genwire_request_duration_seconds",
        f'entrypoint!="", method=~"{methods}"',
        "10.0",
        ("entrypoint",),
    )
    out.append(
        SLI(
            "gateway",
            "latency",
            0.99,
            bad,
            total,
            ("entrypoint",),
            doc="99 % of generation calls answered (last byte) <= 10 s, per entry point",
        )
    )
    for stage, le in (("preprocess", "0.5"), ("inference", "10.0"), ("postprocess", "0.5")):
        bad, total = _latency(
            "genwire_process_duration_seconds",
            f'stage="{stage}", topic=~"{topics}"',
            le,
            ("stage",),
        )
        out.append(
            SLI(
                "stage",
                "latency",
                0.99,
                bad,
                total,
                ("stage",),
                extra=(("stage", stage),),
                doc=f"99 % of {stage} records processed <= {le} s",
            )
        )
    bad, total = _errors("genwire_requests_total", 'entrypoint!=""', "code", ("entrypoint",))
    out.append(
        SLI(
            "gateway",
            "errors",
            0.99,
            bad,
            total,
            ("entrypoint",),
            doc="99 % of gateway calls without a server-side error, per entry point",
        )
    )
    bad, total = _errors("genwire_requests_total", 'outcome!=""', "outcome", ())
    out.append(
        SLI(
            "results",
            "errors",
            0.99,
            bad,
            total,
            doc="99 % of pipeline results without a server-side error (the monitor's errors SLO)",
        )
    )
    return out


def _q(text: str) -> str:
    """A YAML single-quoted scalar."""
    return "'" + text.replace("'", "''") + "'"


def _burn_expr(sli: str, pairs: tuple[tuple[str, str, float], ...]) -> list[str]:
    lines: list[str] = []
    for i, (long, short, factor) in enumerate(pairs):
        if i:
            lines.append("or")
        threshold = f"on (slo, sli) group_left () ({factor:g} * (1 - genwire_slo:objective))"
        lines += [
            "(",
            f'  genwire_slo:sli_error:ratio_rate{long}{{sli="{sli}"}} > {threshold}',
            "  and",
            f'  genwire_slo:sli_error:ratio_rate{short}{{sli="{sli}"}} > {threshold}',
            "  and",
            f'  genwire_slo:sli_events:rate{short}{{sli="{sli}"}}'
            f" * {SECONDS[short]} >= {MIN_EVENTS}",
            ")",
        ]
    return lines


ALERTS = (
    ("GenwireLatencySLOBurnPage", "latency", "page", PAGE, "latency"),
    ("GenwireLatencySLOBurnTicket", "latency", "ticket", TICKET, "latency"),
    ("GenwireErrorSLOBurnPage", "errors", "page", PAGE, "error"),
    ("GenwireErrorSLOBurnTicket", "errors", "ticket", TICKET, "error"),
)


def render() -> str:
    """The whole rule file."""
    out = [
        "# GENERATED by deploy/prometheus/generate_slo_rules.py: edit that, then run it.",
        "# SLIs (bad/total per window) and the SRE Workbook's multi-window burn-rate alerts.",
        "groups:",
        "  - name: genwire-slo-objectives",
        "    rules:",
    ]
    objectives: dict[tuple[str, str], float] = {}
    for s in slis():
        if objectives.setdefault((s.slo, s.sli), s.objective) != s.objective:
            raise ValueError(f"SLO {s.slo}/{s.sli}: one objective for all its series")
    for (slo, sli), objective in objectives.items():
        out += [
            "      - record: genwire_slo:objective",
            f"        expr: vector({objective:g})",
            "        labels:",
            f"          slo: {slo}",
            f"          sli: {sli}",
        ]
    for w in WINDOWS:
        out += [f"  - name: genwire-slo-sli-{w}", "    rules:"]
        for s in slis():
            expr = f"{s.bad} / {s.total}".replace("{w}", w)
            for record, text in (
                (f"genwire_slo:sli_error:ratio_rate{w}", expr),
                (f"genwire_slo:sli_events:rate{w}", s.total.replace("{w}", w)),
            ):
                out += [
                    f"      - record: {record}",
                    f"        expr: {_q(text)}",
                    "        labels:",
                    f"          slo: {s.slo}",
                    f"          sli: {s.sli}",
                    *(f"          {k}: {v}" for k, v in s.extra),
                ]
    out += ["  - name: genwire-slo-alerts", "    rules:"]
    for name, sli, severity, pairs, word in ALERTS:
        windows = ", ".join(f"{f:g}x over {lng} and {sh}" for lng, sh, f in pairs)
        out += [
            f"      - alert: {name}",
            "        expr: |",
            *(f"          {line}" for line in _burn_expr(sli, pairs)),
            "        labels:",
            f"          severity: {severity}",
            "        annotations:",
            "          summary: "
            + _q(f"{word} SLO {{{{ $labels.slo }}}} burns its error budget too fast"),
            "          description: "
            + _q(
                f"The {word} SLO {{{{ $labels.slo }}}}"
                "{{ if $labels.entrypoint }} ({{ $labels.entrypoint }}){{ end }}"
                "{{ if $labels.stage }} ({{ $labels.stage }}){{ end }} "
                f"spends its 30-day budget at {windows} (bad ratio over the long window: "
                "{{ $value | humanizePercentage }})."
            ),
            "          runbook_url: docs/observability.md#slos-and-burn-rate-alerts",
        ]
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail if the file is out of date")
    args = parser.parse_args(argv)
    text = render()
    if args.check:
        if not OUT.exists() or OUT.read_text() != text:
            print(f"{OUT} is out of date: run {Path(__file__).name}", file=sys.stderr)
            return 1
        return 0
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(text)
    print(OUT)
    return 0


if __name__ == "__main__":
    sys.exit(main())
