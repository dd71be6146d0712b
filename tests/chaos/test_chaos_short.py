"""The short fault profile against the real stack: what ``genwire chaos --profile short`` runs.

One stage SIGKILLed under load, Redis down for a few seconds, a couple hundred fuzz cases; the
suite exits non-zero on any loss, inconsistent duplicate, stuck partition, error result or
restarted service, and leaves every component as it found it.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from genwire.settings import CommonSettings


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_short_fault_profile_passes(stack: CommonSettings, tmp_path: Path) -> None:
    report = tmp_path / "chaos.json"
    done = subprocess.run(
        [sys.executable, "-m", "genwire_cli", "chaos", "--profile", "short", "--json", str(report)],
        capture_output=True,
        text=True,
        timeout=1100,
        check=False,
    )
    print(done.stdout[-20000:])
    print(done.stderr[-5000:], file=sys.stderr)
    data = json.loads(report.read_text())
    verdicts = {s["name"]: s["verdict"] for s in data["scenarios"]}
    assert set(verdicts) == {"kill-inference", "redis-down", "fuzz"}
    failures = {s["name"]: s["failures"] for s in data["scenarios"] if s["failures"]}
    assert done.returncode == 0 and data["passed"], failures
    for scenario in data["scenarios"]:
        figures = scenario["figures"]
        if figures is not None:
            assert figures["sent"] > 0 and figures["lost"] == 0
        assert scenario["stuck"] == []
    fuzz = next(s for s in data["scenarios"] if s["name"] == "fuzz")
    assert fuzz["extra"]["cases"] >= 200
