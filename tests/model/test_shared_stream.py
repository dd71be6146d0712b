"""The inference service's shared Triton stream against the real Triton and the tiny model:
requests multiplexed on one call, cancelled one at a time, rotated so that a version unloads,
and kept on calls of their own for a version that does not understand cancel messages."""

from __future__ import annotations

import asyncio
import shutil
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from genwire_inference.backend import ModelStep, SharedTritonStream, TritonBackend, TritonStream
from genwire_model.bench import write_echo_model
from genwire_model.build import BuildOptions, build_version

from genwire.events import PreparedRequest, Sampling
from genwire.settings import CommonSettings


def _request(model: str, rid: str, *, max_tokens: int = 12, seed: int = 0) -> PreparedRequest:
    return PreparedRequest(
        request_id=rid,
        model=model,
        model_version="1",
        input_ids=[5, 6, 7],
        sampling=Sampling(max_tokens=max_tokens, temperature=0.0, seed=seed, ignore_eos=True),
        stream=True,
    )


async def _tokens(backend: TritonBackend, request: PreparedRequest) -> list[int]:
    stream = await backend.open(request, {})
    return [t async for step in stream for t in step.token_ids]


@pytest.fixture
async def shared(served_model: tuple[str, str]) -> AsyncIterator[TritonBackend]:
    backend = TritonBackend(served_model[0], shared_stream_s=5.0)
    yield backend
    await backend.close()


async def test_requests_share_one_call_and_get_what_calls_of_their_own_get(
    served_model: tuple[str, str], shared: TritonBackend
) -> None:
    url, name = served_model
    own = TritonBackend(url, shared_stream_s=0)
    try:
        alone = await asyncio.gather(*(_tokens(own, _request(name, f"a{i}")) for i in range(4)))
    finally:
        await own.close()
    streams = [await shared.open(_request(name, f"s{i}"), {}) for i in range(4)]
    assert all(isinstance(s, SharedTritonStream) for s in streams)

    async def read(stream: TritonStream | SharedTritonStream) -> list[int]:
        return [t async for step in stream for t in step.token_ids]

    together = await asyncio.gather(*(read(s) for s in streams))
    assert together == alone and all(len(t) == 12 for t in together)
    assert shared.shared is not None and len(shared.shared.calls) == 1  # one call carried all


@pytest.mark.parametrize("shared_stream_s", [5.0, 0.0])
async def test_the_backend_asks_the_model_to_space_a_streams_responses(
    served_model: tuple[str, str], shared_stream_s: float
) -> None:
    """``min_gap_s`` reaches the model on a shared call and on a call of its own: with a gap
    longer than the generation, the first token and the final response only (60 tokens:
    without it, several responses at the budget's 5 ms unless the steps take < 0.1 ms)."""
    url, name = served_model
    backend = TritonBackend(url, shared_stream_s=shared_stream_s)
    try:
        spaced = await backend.open(_request(name, "spaced", max_tokens=60), {}, min_gap_s=60.0)
        assert isinstance(spaced, SharedTritonStream) == bool(shared_stream_s)
        sizes = [len(step.token_ids) async for step in spaced]
        plain = await backend.open(_request(name, "plain", max_tokens=60), {})
        plain_sizes = [len(step.token_ids) async for step in plain]
    finally:
        await backend.close()
    assert sizes == [1, 59]
    assert sum(plain_sizes) == 60 and len(plain_sizes) > 2


async def test_a_cancel_stops_its_request_and_not_the_others_on_the_call(
    served_model: tuple[str, str], shared: TritonBackend
) -> None:
    _, name = served_model
    first = await shared.open(_request(name, "cancelled", max_tokens=50), {})
    other = await shared.open(_request(name, "other", max_tokens=40), {})
    assert isinstance(first, SharedTritonStream) and isinstance(other, SharedTritonStream)
    seen: list[ModelStep] = []
    async for step in first:
        seen.append(step)
        if step.token_ids:
            first.cancel()
    assert seen and not any(s.finished for s in seen)  # it ended at our cancel, not at its own
    steps = [s async for s in other]
    assert steps[-1].finished and sum(len(s.token_ids) for s in steps) == 40
    assert len(await _tokens(shared, _request(name, "after"))) == 12  # the call still serves


def _loaded(infra: CommonSettings, name: str) -> Iterator[str]:
    """Load the model folder ``name`` of the repository; afterwards unload and remove it."""
    base = f"http://{infra.triton_http_url}"
    try:
        response = httpx.post(f"{base}/v2/repository/models/{name}/load", timeout=120.0)
        assert response.status_code == 200, response.text
        yield name
    finally:
        httpx.post(f"{base}/v2/repository/models/{name}/unload", timeout=60.0)
        shutil.rmtree(infra.repository / name, ignore_errors=True)


@pytest.fixture
def spare_model(infra: CommonSettings, tiny_checkpoint: Path) -> Iterator[str]:
    """A second tiny model, loaded here and unloaded by the test itself."""
    name = f"genwire-test-spare-{uuid.uuid4().hex[:6]}"
    build_version(tiny_checkpoint, name, infra.repository, BuildOptions(max_batch=8))
    yield from _loaded(infra, name)


async def _state_within(infra: CommonSettings, name: str, state: str, seconds: float) -> str:
    """The version's state once it is ``state``, or after ``seconds``."""
    now = ""
    async with httpx.AsyncClient(base_url=f"http://{infra.triton_http_url}") as http:
        for _ in range(max(1, int(seconds / 0.2))):
            index = (await http.post("/v2/repository/index", json={})).json()
            now = next((m.get("state", "") for m in index if m["name"] == name), "")
            if now == state:
                break
            await asyncio.sleep(0.2)
    return now


async def test_a_call_that_stays_open_holds_an_unload_and_rotation_releases_it(
    infra: CommonSettings, spare_model: str
) -> None:
    base = f"http://{infra.triton_http_url}"
    # Triton's behaviour the rotation exists for: an open call that carried the version's
    # requests keeps it UNLOADING.
    held = TritonBackend(infra.triton_grpc_url, shared_stream_s=600.0)
    rotated = TritonBackend(infra.triton_grpc_url, shared_stream_s=0.3)
    try:
        assert len(await _tokens(held, _request(spare_model, "held"))) == 12
        assert len(await _tokens(rotated, _request(spare_model, "rotated"))) == 12
        async with httpx.AsyncClient() as http:
            await http.post(f"{base}/v2/repository/models/{spare_model}/unload", timeout=60.0)
        assert await _state_within(infra, spare_model, "UNAVAILABLE", 3.0) == "UNLOADING"
        await held.close()  # its call half-closed: the unload completes
        assert await _state_within(infra, spare_model, "UNAVAILABLE", 15.0) == "UNAVAILABLE"
        assert rotated.shared is not None and not rotated.shared.calls  # ended by itself
    finally:
        await held.close()
        await rotated.close()


@pytest.fixture
def echo_model(infra: CommonSettings) -> Iterator[str]:
    """A model whose code predates cancel messages (the bench's echo model)."""
    name = f"genwire-test-echo-{uuid.uuid4().hex[:6]}"
    write_echo_model(infra.repository, name)
    yield from _loaded(infra, name)


async def test_a_version_without_cancel_messages_gets_a_call_per_request(
    served_model: tuple[str, str], shared: TritonBackend, echo_model: str
) -> None:
    _, name = served_model
    stream = await shared.open(_request(echo_model, "old", max_tokens=3), {})
    assert isinstance(stream, TritonStream)  # the probe said no: the per-request path
    assert [s.finished async for s in stream] == [False, False, True]
    assert isinstance(
        await shared.open(_request(name, "new", max_tokens=2), {}), SharedTritonStream
    )
    assert shared._cancels[(echo_model, "1")][0].result() is False
    assert shared._cancels[(name, "1")][0].result() is True


async def test_a_model_with_two_instances_refuses_cancels_and_gets_a_call_per_request(
    infra: CommonSettings, tiny_checkpoint: Path, served_model: tuple[str, str]
) -> None:
    # A cancel would reach one instance while its target runs in the other.
    name = f"genwire-test-two-{uuid.uuid4().hex[:6]}"
    build_version(tiny_checkpoint, name, infra.repository, BuildOptions(max_batch=8))
    config = infra.repository / name / "config.pbtxt"
    text = config.read_text(encoding="utf-8")
    assert "count: 1 kind: KIND_CPU" in text
    config.write_text(text.replace("count: 1 kind", "count: 2 kind"), encoding="utf-8")
    base = f"http://{infra.triton_http_url}"
    backend = TritonBackend(served_model[0], shared_stream_s=5.0)
    async with httpx.AsyncClient(base_url=base, timeout=120.0) as http:
        loaded = await http.post(f"/v2/repository/models/{name}/load")
        assert loaded.status_code == 200, loaded.text
        try:
            stream = await backend.open(_request(name, "two", max_tokens=3), {})
            assert isinstance(stream, TritonStream)
            assert [s.finished async for s in stream][-1]
        finally:
            await backend.close()
            await http.post(f"/v2/repository/models/{name}/unload")
            shutil.rmtree(infra.repository / name, ignore_errors=True)


async def test_the_bench_on_one_stream_gets_what_it_gets_on_a_stream_each(
    served_model: tuple[str, str],
) -> None:
    from genwire_model.client import generate, generate_shared
    from tritonclient.grpc.aio import InferenceServerClient

    from genwire.triton_stream import SharedStreams

    url, name = served_model
    client = InferenceServerClient(url)
    streams = SharedStreams(client._client_stub.ModelStreamInfer, 1.0)
    try:
        own = [await generate(client, name, [5, 6, 7], 9, temperature=0.8, seed=s) for s in (1, 2)]
        one = await asyncio.gather(
            *(generate_shared(streams, name, [5, 6, 7], 9, temperature=0.8, seed=s) for s in (1, 2))
        )
        assert [g.token_ids for g in one] == [g.token_ids for g in own]
        assert all(
            g.finish_reason == o.finish_reason and g.first_token_s
            for g, o in zip(one, own, strict=True)
        )
        assert len(streams.calls) == 1
    finally:
        await streams.close(5.0)
        await client.close()


def _runtime_function(name: str) -> Any:
    """A function of the Triton model's module (which imports Triton's stub-only module, so
    it is taken from the source)."""
    import ast

    path = Path(__file__).parents[2] / "tools/genwire_model/runtime/triton_model.py"
    source = path.read_text(encoding="utf-8")
    node = next(
        n for n in ast.parse(source).body if isinstance(n, ast.FunctionDef) and n.name == name
    )
    namespace: dict[str, Any] = {"Any": Any}
    exec(compile(ast.Module([node], []), str(path), "exec"), namespace)
    return namespace[name]


@pytest.mark.parametrize(
    ("groups", "instances"),
    [
        ([{"count": 1, "kind": "KIND_CPU"}], 1),  # what genwire model build writes
        ([], 1),  # Triton's default: one instance
        ([{"count": 2, "kind": "KIND_CPU"}], 2),
        ([{"count": 1, "kind": "KIND_CPU"}, {"count": 1, "kind": "KIND_CPU"}], 2),
        ([{"count": 1, "kind": "KIND_GPU", "gpus": [0]}], 1),
        ([{"count": 1, "kind": "KIND_GPU", "gpus": [0, 1]}], 2),
        ([{"count": 1, "kind": "KIND_GPU"}], None),  # one on every GPU: unknown here
    ],
)
def test_the_model_counts_its_instances_for_cancel_requests(
    groups: list[dict[str, Any]], instances: int | None
) -> None:
    assert _runtime_function("_instances")({"instance_group": groups}) == instances


async def test_a_cancel_in_one_instance_leaves_the_same_request_in_another_alone(
    served_model: tuple[str, str],
) -> None:
    # Redelivered after a rebalance: two inference instances run the same request at once.
    url, name = served_model
    a = TritonBackend(url, shared_stream_s=30.0)
    b = TritonBackend(url, shared_stream_s=30.0)
    try:
        first = await a.open(_request(name, "dup", max_tokens=50), {})
        second = await b.open(_request(name, "dup", max_tokens=50), {})
        assert isinstance(first, SharedTritonStream) and isinstance(second, SharedTritonStream)
        async for step in first:
            if step.token_ids:
                first.cancel()
        async with asyncio.timeout(15):
            steps = [s async for s in second]
        assert steps[-1].finished and sum(len(s.token_ids) for s in steps) == 50
    finally:
        await a.close()
        await b.close()


async def test_an_unload_does_not_wait_for_another_models_requests(
    infra: CommonSettings, served_model: tuple[str, str], spare_model: str
) -> None:
    url, other = served_model
    backend = TritonBackend(url, shared_stream_s=0.3)
    try:
        assert len(await _tokens(backend, _request(spare_model, "v"))) == 12
        running = await backend.open(_request(other, "long", max_tokens=40), {})
        async with httpx.AsyncClient() as http:
            await http.post(
                f"http://{infra.triton_http_url}/v2/repository/models/{spare_model}/unload",
                timeout=60.0,
            )
        state = await _state_within(infra, spare_model, "UNAVAILABLE", 5.0)
        assert [s async for s in running][-1].finished  # read only now: it was in flight
        assert state == "UNAVAILABLE"
    finally:
        await backend.close()
