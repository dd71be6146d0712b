"""``python -m genwire_bench.floor --beside-model``: the floor measured while the served model
decodes one request at a time, against the stack's Triton and broker."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from genwire_bench import floor
from genwire_bench.floor_model import beside_model

from genwire.settings import CommonSettings

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(300)]


def test_the_model_decodes_for_the_blocks_length_and_counts_what_it_served(
    stack: CommonSettings,
) -> None:
    with beside_model(stack.triton_grpc_url, "genwire-gpt", max_tokens=8) as load:
        assert load.requests == 0  # counted once it stops
        time.sleep(1.0)
    assert load.requests >= 2  # a first request before the block, more during the second


def test_a_model_triton_does_not_serve_stops_the_run_with_its_reason(
    stack: CommonSettings,
) -> None:
    with (
        pytest.raises(
            RuntimeError, match=r"gwtest-no-such-model at \S+ did not answer: .*unknown model"
        ),
        beside_model(stack.triton_grpc_url, "gwtest-no-such-model", start_timeout_s=30),
    ):
        pytest.fail("entered without a model")


def test_the_floor_reports_the_model_beside_it(stack: CommonSettings, tmp_path: Path) -> None:
    out = tmp_path / "floor.json"
    code = floor.main(
        [
            "--bootstrap-servers",
            stack.kafka_bootstrap_servers,
            "--modes",
            "bare",
            "-n",
            "20",
            "--warmup",
            "3",
            "-c",
            "1",
            "--beside-model",
            "--json",
            str(out),
        ]
    )
    assert code == 0
    report = json.loads(out.read_text())
    assert report["beside_model"]["model"] == "genwire-gpt"
    assert report["beside_model"]["requests"] >= 1
    assert [(p["mode"], p["records"]) for p in report["phases"]] == [("bare", 20)]
