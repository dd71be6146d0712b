"""Two lifecycle traps, on the REAL broker, Redis and Triton (the ``stack`` fixture).

- A rebuild of a model whose policy names versions (the pin ``load`` made, or an operator's
  routing) keeps serving every version the policy names; the pin alone follows the new build.
  Before: the build's ``latest`` policy served only the new version and every request routed
  by the policy got ``model_not_loaded``.
- A request prepared again after a policy change (a redelivery, a Kafka client's repeat: same
  id, same body) is prepared for the version it was first resolved to.

The throwaway model ``gwtest-trap`` (copies of the default model's served version) is removed
at the end, its policy tombstoned. Run under the stack lock (``flock /tmp/gw/stack.lock``).
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import shutil
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from genwire_model.build import _keep_served
from genwire_model.lifecycle import (
    CONFIG,
    LATEST_POLICY,
    LOAD_PIN_BY,
    UP_PIN_BY,
    Lifecycle,
    LifecycleError,
    TritonControl,
    configured_versions,
)
from genwire_stack.default_model import serve_version

from genwire.events import GenerationResult, PreparedRequest, now_ms
from genwire.kafka.security import client_options
from genwire.policyfeed import delete_policy
from genwire.request import GenerationRequest
from genwire.settings import CommonSettings
from genwire.topics import Topic
from tests.common.models import copy_version

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

MODEL = "gwtest-trap"
DEFAULT = "genwire-gpt"
WAIT_S = 60.0
_POLICY_LINE = re.compile(r"^version_policy\s*:?\s*\{.*\}\s*$", re.MULTILINE)


class Trap:
    def __init__(self, stack: CommonSettings, life: Lifecycle, source: Path) -> None:
        self.stack = stack
        self.life = life
        self.source = source
        self.dir = stack.repository / MODEL

    def build(self, version: str) -> None:
        """What ``genwire model build`` does to the model folder: a new version, and the
        config rendered again with the build's ``latest`` line (kept ``specific`` if it was)."""
        copy_version(self.source, self.dir / version, MODEL, version)
        config = self.dir / CONFIG
        rendered = _POLICY_LINE.sub(LATEST_POLICY, config.read_text(), count=1)
        config.write_text(_keep_served(config, rendered))

    def serve(self, version: str) -> None:
        """The default model's bring-up of a new version (``genwire up``/``default-model``)."""
        base = f"http://{self.stack.triton_http_url}"
        serve_version(self.stack, base, MODEL, version)


@pytest.fixture(scope="module")
def trap(stack: CommonSettings) -> Iterator[Trap]:
    triton = TritonControl(stack.triton_http_url)
    life = Lifecycle(
        repository=stack.repository,
        triton=triton,
        bootstrap_servers=stack.kafka_bootstrap_servers,
        triton_grpc_url=stack.triton_grpc_url,
    )
    served = triton.served(DEFAULT)
    assert served, "the default model is not served"
    source = stack.repository / DEFAULT / served[-1]
    model_dir = stack.repository / MODEL
    shutil.rmtree(model_dir, ignore_errors=True)
    model_dir.mkdir()
    config = (stack.repository / DEFAULT / CONFIG).read_text()
    config = config.replace(f'name: "{DEFAULT}"', f'name: "{MODEL}"')
    (model_dir / CONFIG).write_text(_POLICY_LINE.sub(LATEST_POLICY, config, count=1))
    for version in ("1", "2"):
        copy_version(source, model_dir / version, MODEL, version)
    try:
        yield Trap(stack, life, source)
    finally:
        with contextlib.suppress(LifecycleError):
            triton.unload(MODEL)
        asyncio.run(delete_policy(stack.kafka_bootstrap_servers, MODEL))
        shutil.rmtree(model_dir, ignore_errors=True)
        assert DEFAULT in [m["name"] for m in triton.index() if m.get("state") == "READY"]
        triton.close()


class Client:
    """Produces requests; reads genwire.results and genwire.prepared from now on."""

    def __init__(self, settings: CommonSettings) -> None:
        boot = settings.kafka_bootstrap_servers
        self.producer = AIOKafkaProducer(bootstrap_servers=boot, **client_options())
        self.consumer = AIOKafkaConsumer(bootstrap_servers=boot, **client_options())
        self.results: dict[str, GenerationResult] = {}
        self.prepared: dict[str, list[PreparedRequest]] = {}
        self._arrived = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await self.producer.start()
        await self.consumer.start()
        tps = [
            TopicPartition(topic, p)
            for topic in (Topic.RESULTS, Topic.PREPARED)
            for p in await self.producer.partitions_for(topic)
        ]
        self.consumer.assign(tps)
        await self.consumer.seek_to_end(*tps)
        for tp in tps:
            await self.consumer.position(tp)
        self._task = asyncio.create_task(self._read())

    async def _read(self) -> None:
        while True:
            batches = await self.consumer.getmany(timeout_ms=200)
            for tp, records in batches.items():
                for record in records:
                    if tp.topic == Topic.PREPARED:
                        prepared = PreparedRequest.model_validate_json(record.value or b"")
                        self.prepared.setdefault(prepared.request_id, []).append(prepared)
                    else:
                        result = GenerationResult.model_validate_json(record.value or b"")
                        self.results.setdefault(result.request_id, result)
            if batches:
                self._arrived.set()

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self.consumer.stop()
        await self.producer.stop()

    async def send(self, request: GenerationRequest) -> None:
        key, value = request.to_kafka()
        await self.producer.send_and_wait(Topic.REQUESTS, value, key=key)

    async def until(self, check: Any, timeout_s: float = WAIT_S) -> None:
        async def wait() -> None:
            while not check():
                self._arrived.clear()
                await self._arrived.wait()

        await asyncio.wait_for(wait(), timeout_s)

    async def ask(self, **fields: Any) -> GenerationResult:
        request = _request(**fields)
        await self.send(request)
        rid = request.request_id or ""
        await self.until(lambda: rid in self.results)
        return self.results[rid]


def _request(**fields: Any) -> GenerationRequest:
    return GenerationRequest.model_validate(
        {
            "request_id": f"trap-{uuid.uuid4().hex[:12]}",
            "model": MODEL,
            "prompt": "The quick brown fox",
            "max_tokens": 4,
            "temperature": 0.0,
            "received_ms": now_ms(),
            **fields,
        }
    )


@pytest.fixture
async def client(stack: CommonSettings) -> AsyncIterator[Client]:
    c = Client(stack)
    await c.start()
    try:
        yield c
    finally:
        await c.stop()


async def _until(check: Any, timeout_s: float = 15.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not await check():
        assert asyncio.get_running_loop().time() < deadline, "the policy was not followed"
        await asyncio.sleep(0.2)


async def test_a_rebuild_keeps_serving_what_the_policy_names(trap: Trap, client: Client) -> None:
    life = trap.life
    await asyncio.to_thread(life.load, MODEL, "1")
    await asyncio.to_thread(life.load, MODEL, "2")  # publishes the pin on version 1
    pin = await asyncio.to_thread(life.policy, MODEL)
    assert pin is not None and (pin.champion, pin.updated_by) == ("1", LOAD_PIN_BY)
    first = await client.ask()
    assert (first.error, first.model_version, first.arm) == (None, "1", "champion")

    # A rebuild: the build keeps the versions `load` serves in config.pbtxt ...
    await asyncio.to_thread(trap.build, "3")
    assert configured_versions((trap.dir / CONFIG).read_text()) == ["1", "2"]
    # ... and the bring-up serves the new one beside them; the pin alone follows it.
    await asyncio.to_thread(trap.serve, "3")
    assert life.triton.served(MODEL) == ["1", "2", "3"]
    moved = await asyncio.to_thread(life.policy, MODEL)
    assert moved is not None
    assert (moved.champion, moved.updated_by, moved.revision) == ("3", UP_PIN_BY, 1)

    async def on_three() -> bool:
        result = await client.ask()
        assert result.error is None, result.error
        return (result.model_version, result.arm) == ("3", "champion")

    await _until(on_three)

    # An operator's routing is never moved: the next build is served beside, no traffic.
    routed = await asyncio.to_thread(
        life.route, MODEL, weights={"2": 50, "3": 50}, aliases={"challenger": "2"}, by="test"
    )
    await asyncio.to_thread(trap.build, "4")
    await asyncio.to_thread(trap.serve, "4")
    assert life.triton.served(MODEL) == ["1", "2", "3", "4"]
    kept = await asyncio.to_thread(life.policy, MODEL)
    assert kept is not None and kept.revision == routed.revision
    results = await asyncio.gather(*(client.ask() for _ in range(8)))
    for result in results:
        assert result.error is None, result.error
        assert result.model_version in {"2", "3"}


async def test_a_repeat_after_a_policy_change_keeps_its_first_version(
    trap: Trap, client: Client
) -> None:
    life = trap.life
    await asyncio.to_thread(
        life.route, MODEL, weights={"2": 100}, aliases={"challenger": "2"}, by="test"
    )

    async def on_two() -> bool:
        return (await client.ask()).model_version == "2"

    await _until(on_two)
    request = _request()
    rid = request.request_id or ""
    await client.send(request)
    await client.until(lambda: rid in client.results)
    assert client.results[rid].model_version == "2"

    await asyncio.to_thread(life.route, MODEL, weights={"3": 100}, by="test")

    async def on_three() -> bool:
        return (await client.ask()).model_version == "3"

    await _until(on_three)
    await client.send(request)  # the same id and body: prepared again, as a redelivery is
    await client.until(lambda: len(client.prepared.get(rid, [])) >= 2)
    versions = [(p.model_version, p.arm) for p in client.prepared[rid] if not p.shadow]
    assert versions == [("2", "challenger"), ("2", "challenger")]


def _preprocess_metrics_url() -> str:
    from genwire_preprocess.config import PreprocessSettings

    return f"http://127.0.0.1:{PreprocessSettings().port}/metrics"


async def test_a_champion_that_is_not_served_falls_back_and_says_so(
    trap: Trap, client: Client
) -> None:
    life = trap.life
    policy = await asyncio.to_thread(life.policy, MODEL)
    assert policy is not None and policy.live_versions() == {"3"} and policy.champion == "3"
    # Version 3 stops being served behind the policy's back (an unload --force, a restore
    # that failed): requests go to the newest served version the policy names, arm fallback.
    await asyncio.to_thread(life.serve, MODEL, ["1", "2", "4"])

    async def fell_back() -> bool:
        result = await client.ask()
        assert result.error is None, result.error
        return (result.model_version, result.arm) == ("2", "fallback")

    await _until(fell_back)
    async with httpx.AsyncClient(timeout=5.0) as http:
        text = (await http.get(_preprocess_metrics_url())).text
    line = next(
        (
            ln
            for ln in text.splitlines()
            if ln.startswith("genwire_preprocess_route_fallbacks_total{")
            and f'model="{MODEL}"' in ln
            and 'wanted="3"' in ln
        ),
        "",
    )
    assert line and float(line.rsplit(" ", 1)[1]) >= 1, text[-2000:]
    # A caller's pin is never replaced: the version it names is not served.
    pinned = await client.ask(model_version="3")
    assert pinned.error is not None and pinned.error.code == "model_not_loaded"
