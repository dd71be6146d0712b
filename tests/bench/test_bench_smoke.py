"""A small benchmark against the running stack (``make up``): every target answers, fairly.

Checks correctness, never speed: no errors, and the pipeline generates exactly as many tokens
as direct Triton for the same prompt and seed (else the comparison would be unfair).
"""

from __future__ import annotations

import socket

import pytest
from genwire_bench.at_model import at_model
from genwire_bench.records import MODEL_MS, SamplingSpec
from genwire_bench.runner import BenchConfig, Runner
from genwire_bench.served import measured_version
from genwire_bench.tokenizer import load_model_inputs

from genwire.errors import PermanentError
from genwire.service import loop as event_loops
from genwire.settings import CommonSettings

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def _listening(address: str) -> bool:
    host, _, port = address.rpartition(":")
    try:
        with socket.create_connection((host, int(port)), timeout=1):
            return True
    except OSError:
        return False


@pytest.mark.parametrize("loop_name", ["asyncio", "uvloop"])
def test_small_run_against_the_stack(loop_name: str) -> None:
    """On either client loop (``--event-loop``; the CLI's default runs on uvloop)."""
    settings = CommonSettings()
    needed = {
        "Triton": settings.triton_grpc_url,
        "Kafka": settings.kafka_bootstrap_servers.split(",")[0],
        "gateway": "127.0.0.1:50051",
    }
    down = [name for name, address in needed.items() if not _listening(address)]
    if down:
        pytest.skip(f"the stack is not running ({', '.join(down)} down): start it with `make up`")
    targets = ["triton", "triton-stream", "grpc", "grpc-stream", "kafka", "kafka-stream"]
    measured = measured_version(
        model="genwire-gpt",
        targets=targets,
        triton_url=settings.triton_grpc_url,
        bootstrap_servers=settings.kafka_bootstrap_servers,
    )
    try:
        inputs = load_model_inputs(settings.repository, "genwire-gpt", measured.version or None)
    except PermanentError as exc:
        pytest.skip(f"no model in the repository yet: {exc.message}")
    cfg = BenchConfig(
        targets=targets,
        requests=4,
        warmup=1,
        rounds=1,
        sampling=SamplingSpec(max_tokens=8, temperature=0.0, seed=5),
        model_version=inputs.version,
        stop_token_ids=inputs.stop_token_ids,
        triton_url=settings.triton_grpc_url,
        kafka_bootstrap=settings.kafka_bootstrap_servers,
        jaeger_url=settings.jaeger_ui_url,
        run_dir=settings.home / "run",
        trace_sample=2,
        timeout_s=30,
    )
    report = event_loops.run(Runner(cfg, inputs.tokenize).run(), loop_name)
    assert report.environment["event_loop"] == loop_name
    assert report.skipped == {}
    for summary in report.summaries:
        assert summary.errors == 0, (summary.target, summary.error_kinds)
        assert summary.e2e is not None and summary.e2e.count == 4
        assert summary.output_tokens_per_s > 0
        if summary.target.endswith("stream"):
            assert summary.ttft is not None
    assert len(report.overheads) == 4
    for overhead in report.overheads:
        assert overhead.token_mismatches == 0, overhead
    prompt_tokens = {(r.target, r.index): r.prompt_tokens for r in report.records}
    for (target, index), n in prompt_tokens.items():  # same ids went everywhere
        assert n == prompt_tokens[("triton", index)], (target, index)
    assert "triton" in report.resources["triton c=1"]
    # The model's own time per request, from the answers that carry it (every target here).
    for r in report.records:
        at = r.extra.get(MODEL_MS)
        assert at is not None and 0 < at < r.e2e_ms, (r.target, at, r.e2e_ms)
    rows = at_model(report.summaries, {o.target: o.baseline for o in report.overheads})
    assert {row.target for row in rows} == {"kafka", "kafka-stream", "grpc", "grpc-stream"}
    assert all(0 < row.held < 1 for row in rows)  # c=1: less than the one in flight
    assert all(row.direct_held is not None and 0 < row.direct_held < 1 for row in rows)
