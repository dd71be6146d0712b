"""The fixed request set: same ids and seeds every run, per-request seeds."""

from __future__ import annotations

from genwire_bench.prompts import PROMPTS, build_requests
from genwire_bench.records import SamplingSpec


def test_requests_cycle_the_prompts_with_per_request_seeds() -> None:
    calls: list[str] = []

    def tokenize(text: str) -> list[int]:
        calls.append(text)
        return [len(text), 7]

    n = len(PROMPTS) + 3
    reqs = build_requests(n, SamplingSpec(max_tokens=8, seed=100), tokenize)
    assert [r.index for r in reqs] == list(range(n))
    assert reqs[len(PROMPTS)].prompt == PROMPTS[0]
    assert [r.sampling.seed for r in reqs[:3]] == [100, 101, 102]
    assert all(r.sampling.max_tokens == 8 for r in reqs)
    assert reqs[0].input_ids == (len(PROMPTS[0]), 7)
    assert len(calls) == len(PROMPTS)  # each distinct prompt is tokenized once


def test_offset_continues_the_indices() -> None:
    reqs = build_requests(2, SamplingSpec(seed=0), lambda t: [1], offset=5)
    assert [(r.index, r.sampling.seed) for r in reqs] == [(5, 5), (6, 6)]
    assert build_requests(2, SamplingSpec(), lambda t: [1]) == build_requests(
        2, SamplingSpec(), lambda t: [1]
    )
