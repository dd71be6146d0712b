"""Scenario reports: the verdict, the figures, a readable table and JSON."""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from genwire_chaos.tracker import TrackerSummary


@dataclass
class FaultWindow:
    """One injected fault: from when to when (seconds since the load started)."""

    label: str
    start_s: float
    end_s: float | None = None
    detail: str = ""


@dataclass
class ScenarioReport:
    """Everything one scenario measured, and whether it passed."""

    name: str
    description: str
    params: dict[str, Any] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)
    skipped: str | None = None
    figures: TrackerSummary | None = None
    faults: list[FaultWindow] = field(default_factory=list)
    stuck: list[str] = field(default_factory=list)
    stuck_settle_s: float | None = None
    restarts: dict[str, int] = field(default_factory=dict)
    """Services whose process changed during the run (beyond the faults injected)."""
    notes: list[str] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)
    duration_s: float = 0.0

    @property
    def passed(self) -> bool:
        """No failure (a skipped scenario neither passes nor fails)."""
        return not self.failures

    @property
    def verdict(self) -> str:
        """PASS, FAIL or SKIP."""
        if self.skipped is not None and not self.failures:
            return "SKIP"
        return "PASS" if self.passed else "FAIL"

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict (figures flattened, inconsistent duplicates listed)."""
        data = asdict(self)
        data["verdict"] = self.verdict
        if self.figures is not None:
            data["figures"]["inconsistent_duplicates"] = self.figures.inconsistent_duplicates
        cleaned: dict[str, Any] = _finite(data)
        return cleaned


def _finite(value: Any) -> Any:
    """JSON has no infinity or NaN: they become null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value


def _seconds(value: float | None) -> str:
    return "never" if value is None else f"{value:.1f} s"


def _errors(codes: dict[str, int]) -> str:
    return ", ".join(f"{code}={n}" for code, n in codes.items()) or "0"


COLUMNS = (
    "scenario",
    "verdict",
    "sent",
    "results",
    "lost",
    "error results",
    "dup records",
    "inconsistent",
    "longest gap",
    "recovery",
    "stuck",
    "time",
)


def row(report: ScenarioReport) -> tuple[str, ...]:
    """One table row."""
    f = report.figures
    if f is None:
        blank = ("-",) * 8
        return (report.name, report.verdict, *blank, str(len(report.stuck)), _duration(report))
    recovery = " / ".join(_seconds(r) for r in f.recoveries_s) if f.recoveries_s else "-"
    return (
        report.name,
        report.verdict,
        str(f.sent),
        str(f.results),
        str(f.lost),
        _errors(f.error_results),
        str(f.duplicate_records),
        str(f.inconsistent_duplicates),
        f"{f.longest_gap_s:.1f} s",
        recovery,
        str(len(report.stuck)),
        _duration(report),
    )


def _duration(report: ScenarioReport) -> str:
    return f"{report.duration_s:.0f} s"


def format_table(reports: list[ScenarioReport]) -> str:
    """The summary table, then each scenario's failures, notes and extra figures."""
    rows = [COLUMNS, *(row(r) for r in reports)]
    widths = [max(len(r[i]) for r in rows) for i in range(len(COLUMNS))]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    lines = [fmt.format(*r).rstrip() for r in rows]
    for report in reports:
        details = _details(report)
        if details:
            lines.append("")
            lines.append(f"{report.name} ({report.verdict}): {report.description}")
            lines.extend(f"  {d}" for d in details)
    return "\n".join(lines)


def _details(report: ScenarioReport) -> list[str]:
    out: list[str] = []
    if report.skipped:
        out.append(f"skipped: {report.skipped}")
    out.extend(f"FAILED: {failure}" for failure in report.failures)
    for fault in report.faults:
        end = "…" if fault.end_s is None else f"{fault.end_s:.1f} s"
        detail = f" ({fault.detail})" if fault.detail else ""
        out.append(f"fault: {fault.label} from {fault.start_s:.1f} s to {end}{detail}")
    f = report.figures
    if f is not None:
        if f.not_accepted:
            out.append(f"requests the broker never acknowledged: {f.not_accepted}")
        if f.lost_ids:
            out.append(f"lost (first ids): {', '.join(f.lost_ids[:10])}")
        for code, ids in f.error_ids.items():
            out.append(f"error {code} (first ids): {', '.join(ids[:5])}")
        for inc in f.inconsistent[:5]:
            out.append(f"inconsistent {inc.request_id}: {inc.first} vs {inc.other}")
        out.append(f"longest gap began {f.longest_gap_at_s:.1f} s into the load")
    if report.stuck:
        settle = "" if report.stuck_settle_s is None else f" after {report.stuck_settle_s:.0f} s"
        out.append(f"stuck partitions{settle}: {'; '.join(report.stuck)}")
    if report.restarts:
        out.append(
            "process changes: " + ", ".join(f"{k}={v}" for k, v in sorted(report.restarts.items()))
        )
    for key, value in report.extra.items():
        out.append(f"{key}: {_compact(value)}")
    out.extend(f"note: {note}" for note in report.notes)
    return out


def _compact(value: Any) -> str:
    if isinstance(value, dict):
        if any(isinstance(v, str) and " " in v for v in value.values()):
            return "; ".join(f"{k}: {v}" for k, v in value.items())
        return ", ".join(f"{k}={_compact(v)}" for k, v in value.items()) or "-"
    if isinstance(value, float):
        return f"{value:.2f}"
    if isinstance(value, list):
        return ", ".join(_compact(v) for v in value) or "-"
    return str(value)


def write_json(reports: list[ScenarioReport], path: Path, meta: dict[str, Any]) -> None:
    """``{"meta": ..., "passed": bool, "scenarios": [...]}`` to ``path``."""
    payload = {
        "meta": meta,
        "passed": all(r.passed for r in reports),
        "scenarios": [r.to_json() for r in reports],
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2, default=str) + "\n")
