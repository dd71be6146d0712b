"""``genwire bench --profile`` against the running stack (``make up``): one short kafka phase,
py-spy on every genwire service; each service gets its files and a non-empty table.

Run it under the stack lock: ``flock /tmp/gw/stack.lock pytest tests/bench/test_profile_stack.py``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from genwire_bench.profile import parse_collapsed, py_spy

from genwire.settings import CommonSettings

pytestmark = [pytest.mark.integration, pytest.mark.slow]

SERVICES = ("gateway", "preprocess", "inference", "postprocess", "monitor")


def test_profile_one_target(tmp_path: Path) -> None:
    settings = CommonSettings()
    run_dir = settings.home.expanduser() / "run"
    if not (run_dir / "gateway.pid").exists():
        pytest.skip("the stack is not running: start it with `make up`")
    if py_spy() is None:
        pytest.skip("py-spy is not installed")
    out = tmp_path / "profile"
    genwire = Path(sys.executable).parent / "genwire"
    proc = subprocess.run(
        [
            *(str(genwire), "bench", "--targets", "kafka", "-c", "2", "-n", "6"),
            *("--warmup", "1", "--rounds", "2", "--no-traces", "--profile", str(out), "-q"),
        ],
        check=False,
        capture_output=True,
        text=True,
        timeout=500,
        env=os.environ.copy(),
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    folder = out / "kafka_c2"
    summary = json.loads((out / "summary.json").read_text())
    phase = summary["phases"]["kafka c=2"]
    services = {s["service"]: s for s in phase["services"]}
    assert set(SERVICES) <= set(services), (services.keys(), phase["not_profiled"])
    for name in SERVICES:
        stacks = parse_collapsed((folder / f"{name}.collapsed.txt").read_text())
        # The raw file keeps every sample, busy and waiting; the tables count the busy ones.
        every = services[name]["samples"] + services[name]["waiting"]
        assert services[name]["samples"] > 0
        assert sum(stacks.values()) == every
        assert (folder / f"{name}.svg").read_text().startswith("<svg")
        scope = json.loads((folder / f"{name}.speedscope.json").read_text())
        assert sum(scope["profiles"][0]["weights"]) == every
        assert services[name]["buckets"] and services[name]["top_self"]
        assert services[name]["requests"] == 6
        # The printed table has the service's block with its buckets.
        assert f"{name} during kafka c=2:" in proc.stdout
    assert not list(folder.glob("round*")), "the rounds' raw files are merged and removed"
    # Every genwire service is profiled, and the kafka path's client is among the buckets of
    # the services that read from Kafka.
    assert any(b["name"] == "Kafka client (aiokafka)" for b in services["inference"]["buckets"])
