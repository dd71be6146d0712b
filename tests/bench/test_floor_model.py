"""``python -m genwire_bench.floor --beside-model``: the floor measured while the served model
decodes one request at a time, against the stack's Triton and broker."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import psutil
import pytest
from genwire_bench import floor
from genwire_bench.floor_model import beside_model

from genwire.settings import CommonSettings
from tests.common.models import throwaway_model

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(300)]


def test_the_model_decodes_for_the_blocks_length_and_counts_what_it_served(
    stack: CommonSettings,
) -> None:
    with beside_model(stack.triton_grpc_url, "genwire-gpt", max_tokens=8) as load:
        assert load.requests == 0  # counted once it stops
        time.sleep(1.0)
    # 8 tokens take ~10 ms: far more than the first answer and the one in flight at the end
    assert load.requests >= 10
    assert load.trouble() == ""


def test_a_model_triton_does_not_serve_stops_the_run_with_its_reason(
    stack: CommonSettings,
) -> None:
    with (
        pytest.raises(
            RuntimeError, match=r"gwtest-no-such-model at \S+ did not answer: .*no ready model"
        ),
        beside_model(stack.triton_grpc_url, "gwtest-no-such-model", start_timeout_s=30),
    ):
        pytest.fail("entered without a model")


def test_a_model_that_stops_answering_mid_run_is_reported(stack: CommonSettings) -> None:
    name = "gwtest-floor-beside"
    with throwaway_model(stack, name) as (life, _):
        life.load(name, "1")
        with beside_model(stack.triton_grpc_url, name, max_tokens=8) as load:
            time.sleep(0.3)
            life.triton.unload(name)
            time.sleep(1.5)
    assert load.requests >= 1 and load.failed >= 1
    assert load.trouble().startswith(f"{load.failed} request(s) failed, the last: ")


def test_a_floor_that_dies_leaves_no_model_load_behind(stack: CommonSettings) -> None:
    parent = subprocess.Popen(
        [
            sys.executable,
            "-c",
            textwrap.dedent(
                f"""
                import time
                from genwire_bench.floor_model import beside_model
                with beside_model({stack.triton_grpc_url!r}, "genwire-gpt", max_tokens=8):
                    print("decoding", flush=True)
                    time.sleep(120)
                """
            ),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert parent.stdout is not None
    assert parent.stdout.readline().strip() == "decoding"
    children = psutil.Process(parent.pid).children()
    assert children, "the model load runs in a child process"
    parent.kill()  # no finally runs: only the closed pipe tells the child
    parent.wait()
    _, alive = psutil.wait_procs(children, timeout=15)
    for proc in alive:
        proc.kill()
    assert not alive, "the model load outlived the floor that started it"


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
    assert report["beside_model"]["failed"] == 0
    assert [(p["mode"], p["records"]) for p in report["phases"]] == [("bare", 20)]
