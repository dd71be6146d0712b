"""Preprocess logic: templates, tokenization, limits, filters, seeds, error chunks."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from genwire_preprocess.handlers import Preprocessor, derive_seed, error_chunk
from genwire_stack import health
from tokenizers import Tokenizer

from genwire.errors import PermanentError, Rejection
from genwire.events import ChatMessage, now_ms
from genwire.filters import ContentFilter
from genwire.request import ErrorCode, GenerationRequest, parse_request
from genwire.tokenization import AssetStore

from .conftest import CONTEXT_LENGTH, EOS, MODEL


def _pre(assets: AssetStore, **kw: object) -> Preprocessor:
    return Preprocessor(assets, default_model=MODEL, **kw)  # type: ignore[arg-type]


async def test_prompt_is_tokenized_with_the_models_tokenizer(
    assets: AssetStore, tokenizer: Tokenizer
) -> None:
    req = GenerationRequest(request_id="p1", prompt="The quick brown fox", max_tokens=7)
    out = await _pre(assets).handle(req)
    assert out.input_ids == tokenizer.encode("The quick brown fox").ids
    assert out.model == MODEL and out.model_version == assets.resolve(MODEL)  # pinned
    assert out.sampling.max_tokens == 7
    assert out.sampling.stop_token_ids == [tokenizer.token_to_id(EOS)]
    assert out.timings.received is not None and out.timings.prepared is not None


async def test_chat_template_is_applied(assets: AssetStore, tokenizer: Tokenizer) -> None:
    req = GenerationRequest(
        request_id="c1",
        messages=[
            ChatMessage(role="system", content="Be brief."),
            ChatMessage(role="user", content="Hello fox"),
        ],
    )
    out = await _pre(assets).handle(req)
    expected = f"<|system|>\nBe brief.{EOS}\n<|user|>\nHello fox{EOS}\n<|assistant|>\n"
    assert out.input_ids == tokenizer.encode(expected, add_special_tokens=False).ids
    assert tokenizer.token_to_id("<|assistant|>") in out.input_ids


async def test_explicit_version_and_unknown_model(assets: AssetStore) -> None:
    pre = _pre(assets)
    out = await pre.handle(GenerationRequest(request_id="v", prompt="fox", model_version="1"))
    assert out.model_version == "1"
    for bad in (
        GenerationRequest(request_id="m", prompt="fox", model="nope"),
        GenerationRequest(request_id="m", prompt="fox", model_version="9"),
    ):
        with pytest.raises(PermanentError) as info:
            await pre.handle(bad)
        assert info.value.code == ErrorCode.MODEL_NOT_FOUND


async def test_context_limit(assets: AssetStore, tokenizer: Tokenizer) -> None:
    prompt = "The quick brown fox"
    n = len(tokenizer.encode(prompt).ids)
    pre = _pre(assets)
    ok = await pre.handle(
        GenerationRequest(request_id="x", prompt=prompt, max_tokens=CONTEXT_LENGTH - n)
    )
    assert len(ok.input_ids) == n
    with pytest.raises(PermanentError) as info:
        await pre.handle(
            GenerationRequest(request_id="x", prompt=prompt, max_tokens=CONTEXT_LENGTH - n + 1)
        )
    assert info.value.code == ErrorCode.CONTEXT_LENGTH_EXCEEDED
    assert str(CONTEXT_LENGTH) in info.value.message


async def test_long_prompts_tokenize_off_the_loop_identically(assets: AssetStore) -> None:
    prompt = "fox " * 30
    inline = await _pre(assets).handle(GenerationRequest(request_id="a", prompt=prompt))
    threaded = await _pre(assets, inline_tokenize_chars=10).handle(
        GenerationRequest(request_id="a", prompt=prompt)
    )
    assert inline.input_ids == threaded.input_ids


async def test_input_filter_names_the_rule(assets: AssetStore) -> None:
    pre = _pre(assets, input_filter=ContentFilter([r"ssn=\b\d{3}-\d{2}-\d{4}\b", "secret"]))
    with pytest.raises(Rejection) as info:
        await pre.handle(GenerationRequest(request_id="f", prompt="my ssn is 123-45-6789"))
    assert info.value.code == ErrorCode.CONTENT_FILTERED
    assert "'ssn'" in info.value.message
    assert not info.value.dead_letter  # an outcome for the caller, not poison for the DLQ
    with pytest.raises(Rejection) as info:
        await pre.handle(
            GenerationRequest(
                request_id="f", messages=[ChatMessage(role="user", content="a SECRET plan")]
            )
        )
    assert "'rule1'" in info.value.message
    assert (await pre.handle(GenerationRequest(request_id="f", prompt="fine"))).input_ids


async def test_seed_is_derived_from_the_request_id(assets: AssetStore) -> None:
    pre = _pre(assets)
    a1 = await pre.handle(GenerationRequest(request_id="same", prompt="fox"))
    a2 = await pre.handle(GenerationRequest(request_id="same", prompt="fox"))
    b = await pre.handle(GenerationRequest(request_id="other", prompt="fox"))
    given = await pre.handle(GenerationRequest(request_id="same", prompt="fox", seed=7))
    assert a1.sampling.seed == a2.sampling.seed == derive_seed("same")
    assert b.sampling.seed != a1.sampling.seed
    assert given.sampling.seed == 7
    assert 0 <= derive_seed("x") < 2**63


async def test_deadlines(assets: AssetStore) -> None:
    pre = _pre(assets, default_timeout_ms=5000)
    out = await pre.handle(GenerationRequest(request_id="d", prompt="fox", received_ms=now_ms()))
    assert out.deadline_ms is not None and out.deadline_ms > now_ms()
    with pytest.raises(Rejection) as info:
        await pre.handle(GenerationRequest(request_id="d", prompt="fox", deadline_ms=now_ms() - 1))
    assert info.value.code == ErrorCode.DEADLINE_EXCEEDED


class FakeClaims:
    def __init__(self) -> None:
        self.held: dict[str, str] = {}

    async def claim(self, request_id: str, fingerprint: str) -> str:
        return self.held.setdefault(request_id, fingerprint)

    async def claim_routed(
        self, request_id: str, fingerprint: str, route: str
    ) -> tuple[str, str | None]:
        return await self.claim(request_id, fingerprint), None


class FakeVersions:
    def __init__(self, version: str | None) -> None:
        self.version = version

    async def served(self, model: str) -> str | None:
        return self.version


async def test_a_request_id_reused_for_another_request_is_refused(assets: AssetStore) -> None:
    pre = _pre(assets, claims=FakeClaims())
    first = GenerationRequest(request_id="dup", prompt="fox", max_tokens=5)
    await pre.handle(first)
    # A redelivery, or a repeat differing only in what does not change the text: accepted.
    await pre.handle(first)
    await pre.handle(first.model_copy(update={"stream": True, "metadata": {"k": "v"}}))
    with pytest.raises(PermanentError) as info:
        await pre.handle(first.model_copy(update={"prompt": "another prompt"}))
    assert info.value.code == ErrorCode.IDEMPOTENCY_CONFLICT and info.value.dead_letter
    with pytest.raises(PermanentError):
        await pre.handle(first.model_copy(update={"max_tokens": 6}))


async def test_the_served_version_is_pinned(assets: AssetStore) -> None:
    served = await _pre(assets, versions=FakeVersions("1")).handle(
        GenerationRequest(request_id="s", prompt="fox")
    )
    assert served.model_version == "1"
    unknown = await _pre(assets, versions=FakeVersions(None)).handle(
        GenerationRequest(request_id="s", prompt="fox")
    )
    assert unknown.model_version == assets.resolve(MODEL)  # the repository's newest
    asked = await _pre(assets, versions=FakeVersions("1")).handle(
        GenerationRequest(request_id="s", prompt="fox", model_version=assets.resolve(MODEL))
    )
    assert asked.model_version == assets.resolve(MODEL)  # the caller's choice wins


def test_error_chunk_addresses_the_caller() -> None:
    raw = b'{"request_id": "j9", "stream": true, "max_tokens": -1}'
    with pytest.raises(PermanentError) as info:
        parse_request(raw)
    (chunk,) = error_chunk(raw, None, info.value)
    assert chunk.request_id == "j9" and chunk.final and chunk.stream
    assert chunk.error is not None and chunk.error.code == ErrorCode.OUT_OF_RANGE
    (keyed,) = error_chunk(b"\xff garbage", b"k7", PermanentError("x", code="invalid_encoding"))
    assert keyed.request_id == "k7" and not keyed.stream
    assert error_chunk(b"garbage", None, PermanentError("x")) == []


def test_asset_store_picks_up_a_new_complete_version(model_repo: Path, tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    shutil.copytree(model_repo, repo)
    cached = AssetStore(repo, latest_ttl_s=3600)
    fresh = AssetStore(repo, latest_ttl_s=0)
    assert cached.resolve(MODEL) == fresh.resolve(MODEL) == "2"
    (repo / MODEL / "3").mkdir()  # being written: no manifest yet
    assert fresh.resolve(MODEL) == "2"
    shutil.copy(repo / MODEL / "2" / "manifest.json", repo / MODEL / "3" / "manifest.json")
    assert fresh.resolve(MODEL) == "3"
    assert cached.resolve(MODEL) == "2"  # within its TTL
    assets = fresh.get(MODEL, "2")
    assert assets.context_length == CONTEXT_LENGTH and assets.eos_token_ids == [0]


async def test_an_unknown_model_is_not_looked_up_on_triton(assets: AssetStore) -> None:
    """Found by the fuzz suite: a model name with control characters reached the Triton URL."""

    class Refusing(FakeVersions):
        async def served(self, model: str) -> str | None:
            raise AssertionError(f"asked Triton about {model!r}")

    pre = _pre(assets, versions=Refusing(None))
    with pytest.raises(PermanentError) as info:
        await pre.handle(GenerationRequest(request_id="u", prompt="fox", model="no\x19such"))
    assert info.value.code == ErrorCode.MODEL_NOT_FOUND


async def test_served_versions_survive_any_model_name(free_port: int) -> None:
    from genwire_preprocess.stores import TritonVersions

    versions = TritonVersions(f"127.0.0.1:{free_port}", timeout_s=0.5)
    try:
        assert await versions.served("weird\x19/../name") is None  # nobody listens: unknown
    finally:
        await versions.close()


@pytest.fixture
def free_port() -> int:
    return health.free_port()
