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
import re
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest
from genwire_model.build import _merged_config
from genwire_model.lifecycle import (
    CONFIG,
    LATEST_POLICY,
    LOAD_PIN_BY,
    UP_PIN_BY,
    Lifecycle,
    configured_versions,
)
from genwire_stack.default_model import serve_version

from genwire.events import PreparedRequest
from genwire.settings import CommonSettings
from genwire.topics import Topic
from tests.common.models import copy_version, throwaway_model
from tests.common.traffic import Traffic, eventually

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

MODEL = "gwtest-trap"
_POLICY_LINE = re.compile(r"^version_policy\s*:?\s*\{.*\}\s*$", re.MULTILINE)


def _latest(config: str) -> str:
    """``config`` with the build's ``latest`` version policy."""
    return _POLICY_LINE.sub(LATEST_POLICY, config, count=1)


Client = Traffic[PreparedRequest]
"""Requests for the test model; reads genwire.results and genwire.prepared."""


class Trap:
    def __init__(self, stack: CommonSettings, life: Lifecycle, source: Path) -> None:
        self.stack = stack
        self.life = life
        self.source = source
        self.dir = stack.repository / MODEL

    def build(self, version: str) -> None:
        """What ``genwire model build`` does to the model folder: a new version, and the
        config rendered again with the build's ``latest`` line, merged with the one it
        replaces as the build merges it (kept ``specific`` if it was)."""
        copy_version(self.source, self.dir / version, MODEL, version)
        config = self.dir / CONFIG
        config.write_text(_merged_config(config, _latest(config.read_text())))

    def serve(self, version: str) -> None:
        """The default model's bring-up of a new version (``genwire up``/``default-model``)."""
        base = f"http://{self.stack.triton_http_url}"
        serve_version(self.stack, base, MODEL, version)


@pytest.fixture(scope="module")
def trap(stack: CommonSettings) -> Iterator[Trap]:
    with throwaway_model(stack, MODEL, _latest) as (life, source):
        yield Trap(stack, life, source)


@pytest.fixture
async def client(stack: CommonSettings) -> AsyncIterator[Client]:
    async with Client(stack, MODEL, "trap", (Topic.PREPARED, PreparedRequest)) as c:
        yield c


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

    await eventually(on_three)

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

    await eventually(on_two)
    request = client.request()
    rid = await client.send(request)
    await client.until(lambda: rid in client.results)
    assert client.results[rid].model_version == "2"

    await asyncio.to_thread(life.route, MODEL, weights={"3": 100}, by="test")

    async def on_three() -> bool:
        return (await client.ask()).model_version == "3"

    await eventually(on_three)
    await client.send(request)  # the same id and body: prepared again, as a redelivery is
    await client.until(lambda: len(client.watched.get(rid, [])) >= 2)
    versions = [(p.model_version, p.arm) for p in client.watched[rid] if not p.shadow]
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
        if result.error is not None:
            # Routed to 3 before preprocess saw it go (Triton's versions are cached 2 s): it
            # fails, clearly, and only that way (docs/lifecycle.md).
            assert (result.error.code, result.model_version, result.arm) == (
                "model_not_loaded",
                "3",
                "champion",
            ), result.error
            return False
        return (result.model_version, result.arm) == ("2", "fallback")

    await eventually(fell_back)
    await asyncio.sleep(2.1)  # every preprocess instance's cache of Triton's versions is fresh
    for _ in range(5):  # from then on, every request is served by the fallback
        result = await client.ask()
        assert result.error is None, result.error
        assert (result.model_version, result.arm) == ("2", "fallback")
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
