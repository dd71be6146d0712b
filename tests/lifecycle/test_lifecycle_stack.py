"""The model lifecycle on the REAL broker, Redis and Triton (the ``stack`` fixture).

A test model (``gwtest-life-<run>``: two versions copied from the default model's served one) is
built into the shared repository, loaded, routed, shadowed, rolled back and promoted blue-green
under steady load; at the end it is unloaded, its policy tombstoned and its folder removed, so
the default model is served as before. Run under the stack lock (``flock /tmp/gw/stack.lock``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
import shutil
from collections import Counter
from collections.abc import AsyncIterator, Iterator

import httpx
import pytest
from genwire_model.lifecycle import Lifecycle, LifecycleError

from genwire.apikeys import auth_headers
from genwire.events import ShadowResult, now_ms
from genwire.policy import ModelPolicy
from genwire.request import ErrorCode
from genwire.settings import CommonSettings
from genwire.topics import Topic
from tests.common.models import copy_version, throwaway_model
from tests.common.traffic import WAIT_S, Traffic, eventually

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

# A name of its own per run: the stack's preprocess keeps routing a model that Triton stopped
# serving to the versions it served last (so a Triton restart fails no request), and a second
# run on the same stack would inherit the first run's (version 3, since deleted).
MODEL = f"gwtest-life-{secrets.token_hex(3)}"
DEFAULT = "genwire-gpt"

Client = Traffic[ShadowResult]
"""Requests for the test model; reads genwire.results and genwire.shadow."""


@pytest.fixture(scope="module")
def life(stack: CommonSettings) -> Iterator[Lifecycle]:
    """``MODEL`` versions 1 and 2 in the repository (not loaded); removed afterwards."""
    with throwaway_model(stack, MODEL) as (lifecycle, _):
        yield lifecycle


@pytest.fixture
async def client(stack: CommonSettings) -> AsyncIterator[Client]:
    async with Client(stack, MODEL, "life", (Topic.SHADOW, ShadowResult)) as c:
        yield c


def _gateway_url() -> str:
    from genwire_gateway.config import GatewaySettings

    cfg = GatewaySettings()
    return f"http://127.0.0.1:{cfg.port}"


async def test_a_model_that_is_not_loaded_is_answered_at_once(
    life: Lifecycle, client: Client
) -> None:
    assert life.triton.served(MODEL) == []
    result = await client.ask(deadline_ms=now_ms() + 50_000)
    assert result.error is not None
    assert result.error.code == ErrorCode.MODEL_NOT_LOADED, result.error
    assert f"genwire model load {MODEL}" in result.error.message


async def test_load_serves_a_version_and_lists_it(life: Lifecycle, client: Client) -> None:
    assert await asyncio.to_thread(life.load, MODEL, "1") == "1"
    assert life.triton.served(MODEL) == ["1"]
    result = await client.ask()
    assert result.error is None, result.error
    assert (result.model_version, result.arm) == ("1", "default")
    async with httpx.AsyncClient(base_url=_gateway_url(), headers=auth_headers()) as http:
        listing = (await http.get("/v1/models")).json()
        ids = {m["id"] for m in listing["data"]}
        assert {MODEL, f"{MODEL}:1", DEFAULT} <= ids and f"{MODEL}:2" not in ids
        one = await http.get(f"/v1/models/{MODEL}:1")
        assert one.status_code == 200 and one.json()["root"] == MODEL
        missing = await http.get(f"/v1/models/{MODEL}:2")
        assert missing.status_code == 404
        assert missing.json()["error"]["code"] == "model_not_found"


async def test_weights_sticky_users_and_arms(life: Lifecycle, client: Client) -> None:
    with pytest.raises(LifecycleError, match="not served"):
        await asyncio.to_thread(life.route, MODEL, weights={"1": 50, "2": 50}, by="test")
    await asyncio.to_thread(life.load, MODEL, "2")
    policy = await asyncio.to_thread(
        life.route,
        MODEL,
        weights={"1": 50, "2": 50},
        sticky="user",
        aliases={"challenger": "2"},
        by="test",
    )
    assert policy.champion == "1" and policy.revision >= 1

    async def both_arms() -> bool:
        seen = {(await client.ask(metadata={"user": f"u{i}"})).arm for i in range(8)}
        return seen == {"champion", "challenger"}

    await eventually(both_arms, 20.0)
    by_user: dict[str, set[str]] = {}
    results = await asyncio.gather(
        *(client.ask(metadata={"user": f"user{i % 6}"}) for i in range(24))
    )
    for i, result in enumerate(results):
        assert result.error is None, result.error
        assert result.arm == {"1": "champion", "2": "challenger"}[result.model_version]
        by_user.setdefault(f"user{i % 6}", set()).add(result.model_version)
    assert all(len(v) == 1 for v in by_user.values())  # one user, one arm
    pinned = await client.ask(model=f"{MODEL}:challenger")
    assert (pinned.model_version, pinned.arm) == ("2", "challenger")


async def _revisions(http: httpx.AsyncClient, url: str) -> float | None:
    try:
        text = (await http.get(url)).text
    except httpx.HTTPError:
        return None
    for line in text.splitlines():
        if line.startswith("genwire_policy_revision{") and f'model="{MODEL}"' in line:
            return float(line.rsplit(" ", 1)[1])
    return None


async def test_every_stage_follows_a_change_live(life: Lifecycle, client: Client) -> None:
    """Every instance that follows genwire.config (preprocess, the monitor) shows the new
    revision on its /metrics; the time it took is printed (docs/lifecycle.md)."""
    from genwire_monitor.config import MonitorSettings
    from genwire_preprocess.config import PreprocessSettings

    urls = [f"http://127.0.0.1:{PreprocessSettings().port}/metrics"]
    monitor = f"http://127.0.0.1:{MonitorSettings().port}/metrics"
    async with httpx.AsyncClient(timeout=2.0) as http:
        with contextlib.suppress(httpx.HTTPError):
            if "genwire_policy_records_total" in (await http.get(monitor)).text:
                urls.append(monitor)  # a monitor that follows genwire.config
    policy = await asyncio.to_thread(
        life.route, MODEL, weights={"1": 50, "2": 50}, reason="propagation", by="test"
    )
    started = asyncio.get_running_loop().time()
    followed: dict[str, float] = {}
    async with httpx.AsyncClient(timeout=2.0) as http:
        while len(followed) < len(urls):
            for url in urls:
                if url not in followed and await _revisions(http, url) == policy.revision:
                    followed[url] = asyncio.get_running_loop().time() - started
            assert asyncio.get_running_loop().time() - started < 30, followed
            await asyncio.sleep(0.02)
    print(
        f"revision {policy.revision} followed: "
        + ", ".join(f"{u}: {t:.2f} s" for u, t in followed.items())
    )


async def test_shadow_results_are_kept_apart(life: Lifecycle, client: Client) -> None:
    await asyncio.to_thread(life.route, MODEL, weights={"1": 100}, shadow="2", by="test")

    async def shadowed() -> bool:
        rid = await client.send(client.request())
        for _ in range(50):
            if rid in client.watched:
                return True
            await asyncio.sleep(0.1)
        return False

    await eventually(shadowed, 20.0)
    rid = await client.send(client.request())
    result = await client.result(rid)
    assert result is not None and result.error is None
    assert (result.model_version, result.arm) == ("1", "champion")
    for _ in range(100):
        if rid in client.watched:
            break
        await asyncio.sleep(0.1)
    shadow = client.watched[rid][0]
    assert (shadow.model_version, shadow.arm) == ("2", "shadow")
    assert client.results[rid].arm == "champion"  # the caller's result is the champion's


async def test_a_corrupt_config_record_keeps_the_policy_in_force(
    life: Lifecycle, client: Client, stack: CommonSettings
) -> None:
    from genwire_preprocess.config import PreprocessSettings

    # Version 1, not the newest served: a preprocess that dropped the policy would serve 2.
    before = await asyncio.to_thread(life.route, MODEL, weights={"1": 100}, shadow="", by="test")
    assert before.weights == {"1": 100}
    await eventually(lambda: _served_by(client, "1"))
    metrics = f"http://127.0.0.1:{PreprocessSettings().port}/metrics"
    async with httpx.AsyncClient(timeout=2.0) as http:
        skipped = await _skipped(http, metrics)
        await client.producer.send_and_wait(Topic.CONFIG, b"{not json", key=MODEL.encode())
        await client.producer.send_and_wait(
            Topic.CONFIG,
            json.dumps({"model": MODEL, "weights": {"1": 7}}).encode(),
            key=MODEL.encode(),
        )
        for _ in range(300):  # preprocess read both, counted and skipped them
            if await _skipped(http, metrics) >= skipped + 2:
                break
            await asyncio.sleep(0.1)
        assert await _skipped(http, metrics) >= skipped + 2
        assert await _revisions(http, metrics) == before.revision
    results = await asyncio.gather(*(client.ask() for _ in range(6)))
    assert {r.model_version for r in results} == {"1"}
    assert await asyncio.to_thread(life.policy, MODEL) == before  # corrupt ones skipped


async def _skipped(http: httpx.AsyncClient, url: str) -> float:
    text = (await http.get(url)).text
    for line in text.splitlines():
        if line.startswith('genwire_policy_records_total{outcome="skipped"}'):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


async def _served_by(client: Client, version: str) -> bool:
    return (await client.ask()).model_version == version


async def test_rollback_returns_traffic_to_the_champion(life: Lifecycle, client: Client) -> None:
    await asyncio.to_thread(life.route, MODEL, weights={"1": 20, "2": 80}, by="test")
    back: ModelPolicy = await asyncio.to_thread(life.rollback, MODEL, by="test", reason="test")
    assert back.weights == {"1": 100} and back.reason == "test"

    async def all_on_champion() -> bool:
        results = await asyncio.gather(*(client.ask() for _ in range(6)))
        return {r.model_version for r in results} == {"1"}

    await eventually(all_on_champion)


async def test_blue_green_promotion_under_steady_load(life: Lifecycle, client: Client) -> None:
    """Steady load through `promote 2`: every request answered without error, none lost."""
    stop = asyncio.Event()
    sent: list[str] = []

    async def worker(n: int) -> None:
        i = 0
        while not stop.is_set():
            sent.append(await client.send(client.request(metadata={"user": f"w{n}-{i}"})))
            await client.result(sent[-1])
            i += 1

    workers = [asyncio.create_task(worker(n)) for n in range(4)]
    await asyncio.sleep(2.0)
    policy = await asyncio.to_thread(life.promote, MODEL, "2", by="test", settle_s=2.0)
    await asyncio.sleep(3.0)  # load keeps flowing after the old version is gone
    stop.set()
    await asyncio.gather(*workers)
    results = [await client.result(rid, timeout_s=WAIT_S) for rid in sent]
    lost = [rid for rid, r in zip(sent, results, strict=True) if r is None]
    failed = [r for r in results if r is not None and r.error is not None]
    versions = Counter(r.model_version for r in results if r is not None)
    assert policy.champion == "2" and policy.aliases["previous"] == "1"
    assert lost == [], f"{len(lost)} of {len(sent)} requests lost"
    assert failed == [], f"{len(failed)} of {len(sent)} failed: {failed[0].error}"
    assert set(versions) == {"1", "2"}, versions  # the switch happened under load
    assert life.triton.served(MODEL) == ["2"]  # the old version drained and was unloaded
    print(f"blue-green: {len(sent)} requests, {dict(versions)}, 0 failed, 0 lost")


async def test_a_version_that_fails_to_load_changes_nothing(
    life: Lifecycle, client: Client, stack: CommonSettings
) -> None:
    broken = stack.repository / MODEL / "4"
    copy_version(stack.repository / MODEL / "2", broken, MODEL, "4", portable_only=True)
    (broken / "model.onnx").unlink()  # a hard link: never write through it
    (broken / "model.onnx").write_bytes(b"not an onnx graph")
    config = (stack.repository / MODEL / "config.pbtxt").read_text()
    served = life.triton.served(MODEL)
    try:
        with pytest.raises(LifecycleError, match=r"could not load|did not become ready"):
            await asyncio.to_thread(life.load, MODEL, "4")
        assert life.triton.served(MODEL) == served
        assert (stack.repository / MODEL / "config.pbtxt").read_text() == config
        assert (await client.ask()).error is None  # still serving
    finally:
        shutil.rmtree(broken, ignore_errors=True)


async def test_an_int8_version_serves_like_any_other(
    life: Lifecycle, client: Client, stack: CommonSettings
) -> None:
    """The natural canary: version 3 is version 2's graph quantized to INT8 (ONNX Runtime's
    tooling, as `build --quantize int8` does); loaded and routed like any version."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    source = stack.repository / MODEL / "2"
    target = stack.repository / MODEL / "3"
    copy_version(source, target, MODEL, "3", portable_only=True)
    (target / "model.onnx").unlink()  # a hard link to version 2's graph: never write through it
    await asyncio.to_thread(
        quantize_dynamic,
        str(source / "model.onnx"),
        str(target / "model.onnx"),
        weight_type=QuantType.QInt8,
        per_channel=True,
        op_types_to_quantize=["MatMul", "Gemm"],
    )
    assert (target / "model.onnx").stat().st_size < (source / "model.onnx").stat().st_size
    await asyncio.to_thread(life.load, MODEL, "3")
    # ONNX Runtime serves the INT8 graph itself (no fused FP32 copy beside it).
    status = json.loads((target / "runtime-status.json").read_text())
    assert status["backend"] == "onnxruntime" and status["graph"] == "model.onnx", status
    await asyncio.to_thread(
        life.route, MODEL, weights={"2": 50, "3": 50}, aliases={"challenger": "3"}, by="test"
    )

    async def both() -> bool:
        results = await asyncio.gather(*(client.ask() for _ in range(10)))
        assert all(r.error is None for r in results), [r.error for r in results]
        return {r.model_version for r in results} == {"2", "3"}

    await eventually(both, 20.0)
    int8 = await client.ask(model=f"{MODEL}:challenger")
    assert int8.error is None and int8.model_version == "3" and int8.usage.completion_tokens > 0
