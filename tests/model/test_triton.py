"""The model in the real Triton, through tritonclient gRPC: streaming, batching, errors."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import httpx
import pytest
from genwire_model.client import Generation, GenerationError, generate
from tritonclient.grpc.aio import InferenceServerClient

from genwire.settings import CommonSettings
from genwire.triton_io import Options

PROMPT = [5, 6, 7, 8, 9]


@pytest.fixture
async def client(served_model: tuple[str, str]) -> AsyncIterator[InferenceServerClient]:
    c = InferenceServerClient(served_model[0])
    try:
        yield c
    finally:
        await c.close()


async def gen(client: InferenceServerClient, name: str, **kw: object) -> Generation:
    args: dict[str, object] = {"temperature": 0.9, "top_p": 0.95, "seed": 11}
    args.update(kw)
    prompt = args.pop("prompt", PROMPT)
    max_tokens = args.pop("max_tokens", 12)
    return await generate(client, name, prompt, max_tokens, **args)  # type: ignore[arg-type]


async def test_streaming_and_single_response_agree(
    client: InferenceServerClient, served_model: tuple[str, str]
) -> None:
    name = served_model[1]
    streamed = await gen(client, name, max_tokens=10)
    single = await gen(client, name, max_tokens=10, stream=False)
    assert streamed.token_ids == single.token_ids
    # The first token alone at once, then chunks (the response budget,
    # stream_responses_per_s), every token once and in order; the final one carries the last.
    assert 2 <= streamed.responses <= len(streamed.token_ids)
    assert streamed.arrivals[0][1] == 1
    assert sum(count for _, count in streamed.arrivals) == 10
    assert single.responses == 1
    assert streamed.finish_reason == single.finish_reason == "length"
    assert streamed.completion_tokens == 10 and streamed.prompt_tokens == len(PROMPT)
    assert streamed.mean_logprob == pytest.approx(sum(streamed.logprobs) / 10, rel=1e-4)
    assert streamed.compute_ms > 0 and streamed.queue_ms >= 0
    # The first token comes before the whole generation is done, and after the request arrived.
    assert 0 < single.ttft_ms < single.queue_ms + single.compute_ms


async def test_same_seed_same_text_other_seed_other_text(
    client: InferenceServerClient, served_model: tuple[str, str]
) -> None:
    name = served_model[1]
    a = await gen(client, name, seed=1, max_tokens=16, temperature=1.0, top_p=1.0)
    b = await gen(client, name, seed=1, max_tokens=16, temperature=1.0, top_p=1.0)
    runs = [await gen(client, name, seed=s, max_tokens=16, temperature=1.0) for s in (2, 3)]
    assert a.token_ids == b.token_ids
    assert any(r.token_ids != a.token_ids for r in runs)


async def test_stop_token_and_max_tokens(
    client: InferenceServerClient, served_model: tuple[str, str]
) -> None:
    name = served_model[1]
    free = await gen(client, name, temperature=0.0, max_tokens=10)
    stop = free.token_ids[4]
    stopped = await gen(client, name, temperature=0.0, max_tokens=10, stop_token_ids=[stop])
    assert stopped.finish_reason == "stop"
    assert stopped.token_ids == free.token_ids[: free.token_ids.index(stop)]
    short = await gen(client, name, temperature=0.0, max_tokens=3)
    assert short.finish_reason == "length" and short.token_ids == free.token_ids[:3]


async def test_usage_counts_the_stop_token_the_model_generated(
    client: InferenceServerClient, served_model: tuple[str, str]
) -> None:
    name = served_model[1]
    free = await gen(client, name, temperature=0.0, max_tokens=10)
    stop = free.token_ids[3]
    stopped = await gen(client, name, temperature=0.0, max_tokens=10, stop_token_ids=[stop])
    assert stopped.completion_tokens == len(stopped.token_ids) + 1


async def test_n_choices_and_top_logprobs_over_grpc(
    client: InferenceServerClient, served_model: tuple[str, str]
) -> None:
    name = served_model[1]
    single = await gen(client, name, seed=5, max_tokens=8)
    many = await gen(client, name, seed=5, max_tokens=8, options=Options(n=3, top_logprobs=2))
    assert sorted(many.choices) == [0, 1, 2]
    assert many.token_ids == single.token_ids  # choice 0 = the single request
    for choice in many.choices.values():
        assert choice.finish_reason == "length" and choice.completion_tokens == 8
        assert len(choice.top_logprobs) == len(choice.token_ids) == 8
        assert all(len(top) == 2 and top[0][1] >= top[1][1] for top in choice.top_logprobs)
    assert len({tuple(c.token_ids) for c in many.choices.values()}) > 1
    biased = await gen(
        client,
        name,
        temperature=0.0,
        max_tokens=4,
        options=Options(logit_bias={33: 100.0}, presence_penalty=0.1, min_p=0.05),
    )
    assert biased.token_ids == [33] * 4


async def test_concurrent_requests_match_one_at_a_time(
    client: InferenceServerClient, served_model: tuple[str, str]
) -> None:
    name = served_model[1]
    prompts = [PROMPT, [20, 21], [30, 31, 32, 33, 34, 35, 36], [40], [50, 51, 52]] * 2
    alone = [
        (await gen(client, name, prompt=p, seed=i, max_tokens=12)).token_ids
        for i, p in enumerate(prompts)
    ]
    together = await asyncio.gather(
        *(gen(client, name, prompt=p, seed=i, max_tokens=12) for i, p in enumerate(prompts))
    )
    assert [g.token_ids for g in together] == alone


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"prompt": list(range(1, 70))}, "longer than the context window"),
        ({"temperature": -1.0}, "temperature must be"),
        ({"top_p": 0.0}, "top_p must be"),
        ({"top_k": -3}, "top_k must be"),
        ({"max_tokens": 0}, "max_tokens must be"),
        ({"prompt": [100000]}, "input_ids out of range"),
        ({"options": Options(n=17)}, "n must be"),
        ({"options": Options(top_logprobs=30)}, "top_logprobs must be"),
        ({"options": Options(logit_bias={9999: 1.0})}, "logit_bias token id 9999"),
    ],
)
async def test_bad_requests_get_a_clear_error_and_the_model_keeps_serving(
    client: InferenceServerClient,
    served_model: tuple[str, str],
    change: dict[str, object],
    message: str,
) -> None:
    name = served_model[1]
    with pytest.raises(GenerationError, match=message):
        await gen(client, name, **change)
    assert (await gen(client, name, max_tokens=2)).finish_reason == "length"


async def test_cancelled_stream_stops_and_the_model_keeps_serving(
    client: InferenceServerClient, served_model: tuple[str, str], infra: CommonSettings
) -> None:
    name = served_model[1]
    cancelled = await gen(client, name, max_tokens=50, cancel_after_tokens=3)
    assert cancelled.finish_reason == "cancelled" and len(cancelled.token_ids) < 50
    after = await gen(client, name, max_tokens=4)
    assert after.finish_reason == "length" and len(after.token_ids) == 4
    async with httpx.AsyncClient(timeout=5.0) as http:
        ready = await http.get(f"http://{infra.triton_http_url}/v2/models/{name}/ready")
    assert ready.status_code == 200
