"""``genwire_bench.redis_persistence``: a private Redis filled with requests' keys, its snapshot
and rewrite measured, and what each schedule costs a request over its life."""

from __future__ import annotations

import json
import re
import shutil

import pytest
from genwire_bench import redis_persistence as rp
from genwire_preprocess.routing import Route

from genwire.events import GenerationResult
from genwire.request import GenerationRequest, fingerprint


def test_a_key_lives_through_ttl_over_interval_snapshots() -> None:
    assert rp.snapshots_per_life(86_400, 300) == 288
    assert rp.snapshots_per_life(3_600, 3_600) == 1


def test_rewrites_per_life_follow_the_appended_bytes_against_the_base() -> None:
    # Twice the base appended per request: the file doubles after half a TTL's requests.
    assert rp.rewrites_per_life(2_000, 1_000, 100) == 2
    # A rewrite only at 200 % growth: half as often.
    assert rp.rewrites_per_life(2_000, 1_000, 200) == 1


def test_the_values_are_what_the_services_store() -> None:
    rid = "f" * 32
    values = rp.sample_values(rid)
    result = GenerationResult.model_validate_json(values["result"])
    assert result.request_id == rid and result.usage.completion_tokens == 32
    request = GenerationRequest(request_id=rid, prompt="Tell me about Kafka.", max_tokens=32)
    assert values["claim"] == fingerprint(request)
    route = json.loads(values["route"])
    assert Route(**route).encode() == values["route"]
    assert set(values) == set(rp.KEYS)


@pytest.mark.parametrize(
    "args",
    [
        ["-n", "0"],
        ["--keys", "result,nope"],
        ["--keys", ""],
        ["--interval", "0"],
        ["--repeat", "0"],
    ],
)
def test_nonsense_is_refused(args: list[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        rp.main(args)
    assert exit_.value.code == 2


@pytest.mark.skipif(shutil.which("redis-server") is None, reason="redis-server is not installed")
def test_measures_both_passes_on_a_private_redis(capsys: pytest.CaptureFixture[str]) -> None:
    assert rp.main(["-n", "20000", "--keys", "result,claim", "--repeat", "1", "--ttl", "3000"]) == 0
    out = capsys.readouterr().out
    assert "20,000 requests stored (result, claim: 40,000 keys, TTL 3,000 s)" in out
    memory = re.search(r"^memory: ([\d,]+) B per request", out, re.M)
    assert memory is not None and 300 < int(memory[1].replace(",", "")) < 5_000
    row = r"^(RDB snapshot \(BGSAVE\)|AOF rewrite)\s+([\d.]+) s\s+([\d.]+) µs"
    rows = re.findall(row, out, re.M)
    assert [name for name, *_ in rows] == ["RDB snapshot (BGSAVE)", "AOF rewrite"]
    # The forked child's CPU (40,000 keys: ~0.1 s here), not the server's own (a few ms).
    assert all(float(cpu) >= 0.02 for _, cpu, _ in rows)
    sizes = re.findall(r"\s([\d.]+) ms\s+([\d.,]+) MiB$", out, re.M)
    assert len(sizes) == 2 and all(float(fork) > 0 and float(mib) > 1 for fork, mib in sizes)
    snapshots = re.search(r"RDB snapshots every 300 s: 10 per life, ([\d.]+) core-ms", out)
    assert snapshots is not None
    # Ten snapshots a life: ten times one pass's CPU per request.
    one_pass_us = float(rows[0][2])
    assert float(snapshots[1]) == pytest.approx(10 * one_pass_us / 1000, rel=0.05, abs=0.002)
