"""Preprocess routing: the policy decides the version and arm once; shadow copies."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import httpx
import pytest
from genwire_preprocess.handlers import Preprocessor
from genwire_preprocess.routing import split_model
from stages.conftest import CHAT_TEMPLATE, EOS, train_tokenizer

from genwire.errors import PermanentError
from genwire.policy import ModelPolicy
from genwire.request import ErrorCode, GenerationRequest
from genwire.tokenization import AssetStore

MODEL = "m"


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Versions 1, 2 (context 128) and 3 (context 16: too short for long prompts)."""
    root = tmp_path_factory.mktemp("repository")
    tok = train_tokenizer()
    for version, context in (("1", 128), ("2", 128), ("3", 16)):
        vdir = root / MODEL / version
        vdir.mkdir(parents=True)
        tok.save(str(vdir / "tokenizer.json"))
        (vdir / "tokenizer_config.json").write_text(
            json.dumps({"chat_template": CHAT_TEMPLATE, "eos_token": EOS})
        )
        (vdir / "manifest.json").write_text(json.dumps({"context_length": context}))
    return root


class ServedStub:
    def __init__(self, version: str | None) -> None:
        self.version = version
        self.asked = 0

    async def served(self, model: str) -> str | None:
        self.asked += 1
        return self.version


def pre(repo: Path, policies: dict[str, ModelPolicy], served: str | None = "1") -> Preprocessor:
    return Preprocessor(
        AssetStore(repo),
        default_model=MODEL,
        versions=ServedStub(served),
        policies=policies.get,
    )


def req(rid: str, **kw: object) -> GenerationRequest:
    data: dict[str, object] = {"request_id": rid, "prompt": "The quick brown fox", "max_tokens": 4}
    data.update(kw)
    return GenerationRequest.model_validate(data)


async def test_without_policy_the_served_version_is_pinned(repo: Path) -> None:
    p = pre(repo, {}, served="2")
    (out,) = await p.handle_routed(req("a"))
    assert (out.model_version, out.arm, out.shadow) == ("2", "default", False)


async def test_weights_split_and_every_event_names_version_and_arm(repo: Path) -> None:
    policy = ModelPolicy(
        model=MODEL, aliases={"champion": "1", "challenger": "2"}, weights={"1": 70, "2": 30}
    )
    p = pre(repo, {MODEL: policy})
    seen: Counter[tuple[str, str]] = Counter()
    for i in range(300):
        (out,) = await p.handle_routed(req(f"r{i}"))
        seen[(out.model_version, out.arm)] += 1
        again = await p.handle(req(f"r{i}"))  # a redelivery resolves the same way
        assert again.model_version == out.model_version
    assert set(seen) == {("1", "champion"), ("2", "challenger")}
    assert 50 < seen[("2", "challenger")] < 130


async def test_sticky_user_metadata(repo: Path) -> None:
    policy = ModelPolicy(
        model=MODEL, aliases={"champion": "1"}, weights={"1": 50, "2": 50}, sticky="user"
    )
    p = pre(repo, {MODEL: policy})
    for user in ("ann", "ben", "cat"):
        versions = {
            (await p.handle(req(f"{user}{i}", metadata={"user": user}))).model_version
            for i in range(20)
        }
        assert len(versions) == 1


async def test_pins_by_version_and_alias(repo: Path) -> None:
    policy = ModelPolicy(model=MODEL, aliases={"champion": "1", "challenger": "2"})
    p = pre(repo, {MODEL: policy})
    out = await p.handle(req("a", model_version="2"))
    assert (out.model_version, out.arm) == ("2", "pinned")
    out = await p.handle(req("b", model=f"{MODEL}:challenger"))
    assert (out.model, out.model_version, out.arm) == (MODEL, "2", "challenger")
    out = await p.handle(req("c", model=f"{MODEL}:1"))
    assert (out.model_version, out.arm) == ("1", "pinned")
    for bad, code in (
        (req("d", model=f"{MODEL}:nope"), ErrorCode.MODEL_NOT_FOUND),
        (req("e", model=f"{MODEL}:9"), ErrorCode.MODEL_NOT_FOUND),
        (req("f", model=f"{MODEL}:1", model_version="2"), ErrorCode.INVALID_REQUEST),
    ):
        with pytest.raises(PermanentError) as info:
            await p.handle(bad)
        assert info.value.code == code


async def test_shadow_copy_goes_with_the_request(repo: Path) -> None:
    policy = ModelPolicy(model=MODEL, aliases={"champion": "1"}, weights={"1": 100}, shadow="2")
    p = pre(repo, {MODEL: policy})
    primary, shadow = await p.handle_routed(req("s", stream=True))
    assert (primary.model_version, primary.arm, primary.shadow) == ("1", "champion", False)
    assert (shadow.model_version, shadow.arm, shadow.shadow) == ("2", "shadow", True)
    assert shadow.request_id == primary.request_id
    assert shadow.input_ids == primary.input_ids
    assert shadow.sampling.seed == primary.sampling.seed


async def test_a_shadow_that_cannot_take_the_request_is_skipped(repo: Path) -> None:
    policy = ModelPolicy(model=MODEL, aliases={"champion": "1"}, shadow="3")
    p = pre(repo, {MODEL: policy})
    long_prompt = "The quick brown fox jumps over the lazy dog. " * 3
    (only,) = await p.handle_routed(req("t", prompt=long_prompt))
    assert only.model_version == "1" and not only.shadow
    assert p.shadows_skipped == 1
    missing = ModelPolicy(model=MODEL, aliases={"champion": "1"}, shadow="8")
    (only,) = await pre(repo, {MODEL: missing}).handle_routed(req("u"))
    assert only.model_version == "1"


async def test_policy_changes_apply_to_the_next_request(repo: Path) -> None:
    policies: dict[str, ModelPolicy] = {
        MODEL: ModelPolicy(model=MODEL, aliases={"champion": "1"}, weights={"1": 100})
    }
    p = pre(repo, policies)
    assert (await p.handle(req("x"))).model_version == "1"
    policies[MODEL] = policies[MODEL].changed(by="t", weights={"2": 100})
    assert (await p.handle(req("x"))).model_version == "2"


class RouteClaims:
    """Redis's claim + route keys, both SET NX (``RedisClaims.claim_routed``)."""

    def __init__(self) -> None:
        self.held: dict[str, str] = {}
        self.routes: dict[str, str] = {}

    async def claim(self, request_id: str, fingerprint: str) -> str:
        return self.held.setdefault(request_id, fingerprint)

    async def claim_routed(
        self, request_id: str, fingerprint: str, route: str
    ) -> tuple[str, str | None]:
        return self.held.setdefault(request_id, fingerprint), self.routes.setdefault(
            request_id, route
        )

    async def holder(self, request_id: str) -> str | None:
        return self.held.get(request_id)


async def test_a_redelivery_after_a_policy_change_keeps_its_first_route(repo: Path) -> None:
    policies: dict[str, ModelPolicy] = {
        MODEL: ModelPolicy(model=MODEL, aliases={"champion": "1"}, weights={"1": 100}, shadow="2")
    }
    claims = RouteClaims()
    p = Preprocessor(
        AssetStore(repo),
        default_model=MODEL,
        versions=ServedStub("1"),
        policies=policies.get,
        claims=claims,
    )
    first, shadow = await p.handle_routed(req("x"))
    assert (first.model_version, first.arm, shadow.model_version) == ("1", "champion", "2")
    policies[MODEL] = ModelPolicy(
        model=MODEL, aliases={"champion": "2", "previous": "1"}, weights={"2": 100}, revision=1
    )
    again = await p.handle_routed(req("x"))  # the same id and body, redelivered
    assert [(e.model_version, e.arm, e.shadow) for e in again] == [
        ("1", "champion", False),
        ("2", "shadow", True),
    ]
    assert p.routes_reused == 1
    assert (await p.handle(req("y"))).model_version == "2"  # a new request: the new policy
    claims.routes["z"] = "not a route"  # unusable: resolved again
    assert (await p.handle(req("z"))).model_version == "2"
    with pytest.raises(PermanentError) as info:  # another body under a used id
        await p.handle(req("x", prompt="another prompt"))
    assert info.value.code == ErrorCode.IDEMPOTENCY_CONFLICT


class ListedStub:
    """Triton serving ``versions`` (ascending) of every model."""

    def __init__(self, *versions: str) -> None:
        self.versions = list(versions)

    async def served(self, model: str) -> str | None:
        return self.versions[-1] if self.versions else None

    async def listed(self, model: str) -> list[str] | None:
        return list(self.versions) or None


async def test_a_policy_whose_versions_are_gone_falls_back_and_says_so(repo: Path) -> None:
    """The champion is not served (a rebuild, an unload --force, a failed restore) but other
    versions are: served by the newest one the policy names, else the newest, arm fallback."""
    policies: dict[str, ModelPolicy] = {
        MODEL: ModelPolicy(model=MODEL, aliases={"champion": "1"}, weights={"1": 100})
    }
    served = ListedStub("3")
    seen: list[tuple[str, str, str]] = []
    p = Preprocessor(
        AssetStore(repo),
        default_model=MODEL,
        versions=served,
        policies=policies.get,
        on_fallback=lambda *a: seen.append(a),
    )
    out = await p.handle(req("a"))
    assert (out.model_version, out.arm) == ("3", "fallback")
    assert seen == [(MODEL, "1", "3")] and p.router.fallbacks == 1
    # A caller's pin is never replaced (model_not_loaded comes from inference).
    assert (await p.handle(req("b", model_version="1"))).model_version == "1"
    # Served again: as the policy says.
    served.versions = ["1", "3"]
    assert (await p.handle(req("c"))).arm == "champion"
    # A canary that is not served beside a served champion stays routed (it fails; the
    # monitor rolls it back).
    policies[MODEL] = ModelPolicy(
        model=MODEL, aliases={"champion": "1", "challenger": "2"}, weights={"1": 50, "2": 50}
    )
    arms = {(await p.handle(req(f"d{i}"))).arm for i in range(40)}
    assert arms == {"champion", "challenger"}
    # Neither served: the newest served version the policy names, not just the newest.
    served.versions = ["2", "3"]
    outs = {((o := await p.handle(req(f"e{i}"))).model_version, o.arm) for i in range(40)}
    assert outs == {("2", "challenger"), ("2", "fallback")}
    # Triton serving nothing (restarting): as the policy says, nothing to fall back to.
    served.versions = []
    assert (await p.handle(req("f", metadata={}))).model_version in {"1", "2"}
    # Off: as the policy says.
    strict = Preprocessor(
        AssetStore(repo),
        default_model=MODEL,
        versions=ListedStub("3"),
        policies={MODEL: ModelPolicy(model=MODEL, aliases={"champion": "1"})}.get,
        route_fallback=False,
    )
    assert (await strict.handle(req("g"))).model_version == "1"


def test_split_model() -> None:
    assert split_model("m") == ("m", "")
    assert split_model("m:2") == ("m", "2")
    assert split_model("m:champion") == ("m", "champion")
    assert split_model(":x") == (":x", "")


async def test_the_served_version_outlives_a_triton_restart() -> None:
    """While Triton restarts (refused, then the model not loaded yet), requests stay on the
    version it served last, not the repository's newest (maybe built but never served)."""
    from genwire_preprocess.stores import TritonVersions

    answers: list[httpx.Response | Exception] = [
        httpx.Response(200, json={"name": "m", "versions": ["3"]}),
        httpx.ConnectError("refused"),
        httpx.Response(400, json={"error": "Request for unknown model: 'm' is not found"}),
        httpx.Response(200, json={"name": "m", "versions": ["4"]}),
    ]

    def triton(request: httpx.Request) -> httpx.Response:
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    versions = TritonVersions("127.0.0.1:1", cache_s=0.0)
    versions._client = httpx.AsyncClient(
        base_url="http://127.0.0.1:1", transport=httpx.MockTransport(triton)
    )
    never = TritonVersions("127.0.0.1:1", timeout_s=0.2)
    try:
        assert [await versions.served("m") for _ in range(4)] == ["3", "3", "3", "4"]
        assert await never.served("m") is None  # never told: the repository decides
    finally:
        await versions.close()
        await never.close()
