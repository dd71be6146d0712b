"""The version ``genwire bench`` and ``genwire model bench`` measure, against the stack's Triton
and ``genwire.config``: the one the requests reach, not the repository's newest."""

from __future__ import annotations

import pytest
from genwire_bench.served import MeasuredVersion, measured_version
from genwire_model.bench import served_version

from genwire.settings import CommonSettings
from tests.common.models import throwaway_model

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(300)]

MODEL = "gwtest-bench-served"


def test_the_measured_version_follows_what_serves_and_the_policy(stack: CommonSettings) -> None:
    with throwaway_model(stack, MODEL) as (life, _):

        def measured(*targets: str) -> MeasuredVersion:
            return measured_version(
                model=MODEL,
                targets=list(targets),
                triton_url=stack.triton_grpc_url,
                bootstrap_servers=stack.kafka_bootstrap_servers,
            )

        life.load(MODEL, "1")  # the repository's newest is 2, never served yet
        assert measured("kafka", "triton") == MeasuredVersion("1")
        assert served_version(stack.triton_grpc_url, MODEL, stack.repository).version == 1

        life.load(MODEL, "2")  # served beside 1, which the load pinned as champion first
        assert measured("kafka", "triton") == MeasuredVersion("1")
        # Direct Triton alone: what Triton serves a request naming no version, the newest.
        assert measured("triton", "triton-stream") == MeasuredVersion("2")
        assert served_version(stack.triton_grpc_url, MODEL, stack.repository).version == 2

        life.route(MODEL, weights={"1": 80, "2": 20}, by="test")
        split = measured("grpc")
        assert split.version == "1"
        assert "version 1 80 %, version 2 20 %" in split.note

        life.route(MODEL, weights={"2": 100}, by="test")
        assert measured("kafka") == MeasuredVersion("2")
