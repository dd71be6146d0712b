"""Preprocess logic: templates, tokenization, limits, filters, seeds, error chunks."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import pytest
from genwire_postprocess.handlers import Postprocessor
from genwire_preprocess.handlers import (
    Preprocessor,
    RequestRecord,
    decode_record,
    derive_seed,
    error_chunk,
)
from genwire_stack import health
from tokenizers import Tokenizer

from genwire.errors import GenwireError, PermanentError, Rejection
from genwire.events import (
    ChatMessage,
    GenerationChunk,
    Sampling,
    TokenEvent,
    dump,
    now_ms,
)
from genwire.filters import ContentFilter
from genwire.request import ErrorCode, GenerationRequest, fingerprint, parse_request
from genwire.results import published_digest
from genwire.tokenization import AssetStore

from .conftest import CONTEXT_LENGTH, EOS, MODEL, FakeStore


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


async def test_an_unsent_max_tokens_fits_what_the_context_leaves(
    assets: AssetStore, tokenizer: Tokenizer
) -> None:
    """Left out, max_tokens is 64 but no more than the context leaves after the prompt: a
    long prompt is not refused over a limit its caller never sent (it was: prompt + 64 over
    the context), across the Kafka hop too. A short prompt keeps 64."""
    prompt = "The quick brown fox " * 20
    n = len(tokenizer.encode(prompt).ids)
    assert CONTEXT_LENGTH - 64 < n < CONTEXT_LENGTH
    pre = _pre(assets)
    request = GenerationRequest(request_id="d1", prompt=prompt)
    _, value = request.to_kafka()
    for sent in (request, parse_request(value, key=b"d1")):
        out = await pre.handle(sent)
        assert out.sampling.max_tokens == CONTEXT_LENGTH - n
    short = await pre.handle(GenerationRequest(request_id="d2", prompt="fox"))
    assert short.sampling.max_tokens == 64


async def test_a_sent_max_tokens_over_the_context_is_refused_naming_the_prompt(
    assets: AssetStore, tokenizer: Tokenizer
) -> None:
    """A limit the caller sent is checked as before; the refusal's ``param`` is the prompt's
    field (OpenAI: ``messages`` for chat), and it does not name ``max_tokens``, which a chat
    caller may have sent as ``max_completion_tokens``."""
    prompt = "The quick brown fox " * 20
    n = len(tokenizer.encode(prompt).ids)
    chat = [ChatMessage(role="user", content=prompt)]
    cases = {
        "prompt": GenerationRequest(request_id="s1", prompt=prompt, max_tokens=64),
        "messages": GenerationRequest(request_id="s2", messages=chat, max_tokens=64),
        "prompt_token_ids": GenerationRequest(
            request_id="s3", prompt_token_ids=tokenizer.encode(prompt).ids, max_tokens=64
        ),
    }
    for param, request in cases.items():
        with pytest.raises(PermanentError) as info:
            await _pre(assets).handle(request)
        err = info.value
        assert err.code == ErrorCode.CONTEXT_LENGTH_EXCEEDED and err.param == param
        assert "max_tokens" not in err.message and "(64)" in err.message
    assert f"prompt ({n} tokens)" in err.message


async def test_a_prompt_filling_the_context_is_refused_without_naming_max_tokens(
    assets: AssetStore,
) -> None:
    """No room left to generate even one token: refused, about the prompt alone."""
    with pytest.raises(PermanentError) as info:
        await _pre(assets).handle(GenerationRequest(request_id="f1", prompt="fox " * 300))
    err = info.value
    assert err.code == ErrorCode.CONTEXT_LENGTH_EXCEEDED and err.param == "prompt"
    assert "max_tokens" not in err.message and "(64)" not in err.message


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

    async def holder(self, request_id: str) -> str | None:
        return self.held.get(request_id)


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


@pytest.mark.parametrize(
    ("raw", "key", "request_id", "model"),
    [
        (b'{"model": "\\ud800", "prompt": "x"}', b"ok-1", "ok-1", "\ufffd"),
        (b'{"request_id": "\\udfff", "prompt": "x"}', None, "\ufffd", ""),
        (b'{"request_id": "j\\ud800", "model": "m\\udc00x"}', None, "j\ufffd", "m\ufffdx"),
    ],
)
def test_an_error_chunk_can_always_be_published(
    raw: bytes, key: bytes | None, request_id: str, model: str
) -> None:
    """A lone surrogate escape is valid JSON to json.loads but not encodable: the hints read
    from it are cleaned, so the error result goes out instead of the service crash-looping."""
    with pytest.raises(PermanentError) as info:
        parse_request(raw, key=key)
    assert info.value.code == ErrorCode.INVALID_JSON
    (chunk,) = error_chunk(raw, key, info.value)
    assert dump(chunk) and chunk.key()  # what the producer does: it raised before
    assert (chunk.request_id, chunk.model) == (request_id, model)
    assert chunk.error is not None and chunk.error.code == ErrorCode.INVALID_JSON


def test_an_oversize_streamed_request_still_ends_its_stream() -> None:
    """Too large to parse again, a refused value still says that it streams (read from its raw
    JSON): its error chunk ends the caller's token stream. A prompt cannot fake the key."""
    prompt = "x" * (1024 * 1024) + ' {"stream": true}, "stream": true'
    big = GenerationRequest(request_id="big", prompt="x").model_dump(exclude_none=True)
    for stream in (True, False):
        raw = json.dumps({**big, "prompt": prompt, "stream": stream}).encode()
        err = PermanentError("too large", code=ErrorCode.REQUEST_TOO_LARGE)
        (chunk,) = error_chunk(raw, b"big", err)
        assert chunk.stream is stream
    huge = b'{"prompt": "' + b"y" * (16 << 20) + b'"}'
    # This thread's CPU time (about 0.08 s here): wall time also counts the waits of a loaded
    # machine.
    started = time.thread_time()
    (chunk,) = error_chunk(huge, b"big", err)
    assert not chunk.stream and time.thread_time() - started < 1.0


async def test_a_bad_record_reusing_an_id_in_flight_does_not_answer_for_it(
    assets: AssetStore, tokenizer: Tokenizer
) -> None:
    """order-42 is generating; a bad record under the same id (unparseable, or failing before
    its claim) is an idempotency_conflict: DLQ, never stored, order-42's answer unchanged."""
    claims = FakeClaims()
    pre = _pre(assets, claims=claims)
    await pre.handle_record(_decode(b'{"prompt": "hello"}', b"order-42"))
    store = FakeStore()
    post = Postprocessor(assets, store)
    ids = tokenizer.encode("The quick brown fox").ids
    sampling = Sampling()
    started = GenerationChunk(
        request_id="order-42",
        index=0,
        token_ids=ids[:2],
        stream=True,
        model=MODEL,
        sampling=sampling,
    )
    events = await post.handle(started)
    for raw in (
        b'{"prompt": "other", "temperature": 5}',  # unparseable: no fingerprint
        b'{"prompt": "other", "model": "nope"}',  # before its claim
        b'{"prompt": "other", "deadline_ms": 5}',
        b"\xff not even UTF-8",
    ):
        err = await _refusal(pre, _decode(raw, b"order-42"))
        assert err.code == ErrorCode.IDEMPOTENCY_CONFLICT and err.dead_letter, raw
        assert "'order-42'" in err.message
        for chunk in error_chunk(raw, b"order-42", err):
            events += await post.handle(chunk)
    assert "order-42" not in store.data
    final = GenerationChunk(
        request_id="order-42",
        index=1,
        offset=2,
        token_ids=ids[2:],
        final=True,
        stream=True,
        model=MODEL,
        finish_reason="length",
        sampling=sampling,
        output_ids=ids,
        completion_tokens=len(ids),
    )
    events += await post.handle(final)
    answer = store.data["order-42"]
    assert answer.error is None and answer.finish_reason == "length" and answer.text
    ends = [e for e in events if isinstance(e, TokenEvent) and e.final]
    assert len(ends) == 1 and ends[0].finish_reason == "length"  # its stream ends once


async def test_an_error_before_the_claim_is_the_ids_own_when_nobody_else_holds_it(
    assets: AssetStore,
) -> None:
    claims = FakeClaims()
    pre = _pre(assets, claims=claims)
    # Nobody holds the id: the record's own error, as before.
    err = await _refusal(pre, _decode(b'{"prompt": "a", "top_k": -1}', b"free"))
    assert err.code == ErrorCode.OUT_OF_RANGE
    # The gateway claimed the id for this very request (its fingerprint; a token after it).
    late = GenerationRequest(request_id="mine", prompt="a", deadline_ms=5)
    claims.held["mine"] = fingerprint(late)
    with pytest.raises(Rejection) as info:
        await pre.handle(late)
    assert info.value.code == ErrorCode.DEADLINE_EXCEEDED
    # Too large for this stage, not for the gateway that claimed it: its own error too.
    value = GenerationRequest(request_id="large", prompt="b" * 300).to_kafka()[1]
    claims.held["large"] = fingerprint(parse_request(value, key=b"large"))
    err = await _refusal(pre, _decode(value, b"large", max_bytes=100))
    assert err.code == ErrorCode.REQUEST_TOO_LARGE
    claims.held["large"] = "another"
    err = await _refusal(pre, _decode(value, b"large", max_bytes=100))
    assert err.code == ErrorCode.IDEMPOTENCY_CONFLICT
    assert "request_too_large" in err.message


async def test_a_record_the_gateway_claimed_is_answered_though_refused_unparsed(
    assets: AssetStore,
) -> None:
    """Version skew: a gateway published what this preprocess refuses by schema (no
    fingerprint). Its claim names the digest of that very value, so the refusal is the id's
    own answer (its caller gets it), while another value under the id is still a conflict."""
    claims = FakeClaims()
    pre = _pre(assets, claims=claims)
    value = b'{"prompt": "a", "logit_bias": {"5": 1, "05": 2}}'  # a newer rule refuses it
    claims.held["skew"] = f"fp:token:{published_digest(value)}"
    err = await _refusal(pre, _decode(value, b"skew"))
    assert err.code != ErrorCode.IDEMPOTENCY_CONFLICT, err.message
    other = b'{"prompt": "b", "logit_bias": {"5": 1, "05": 2}}'
    err = await _refusal(pre, _decode(other, b"skew"))
    assert err.code == ErrorCode.IDEMPOTENCY_CONFLICT
    claims.held["old"] = "fp:token"  # an older gateway's claim: no digest, a conflict as before
    err = await _refusal(pre, _decode(value, b"old"))
    assert err.code == ErrorCode.IDEMPOTENCY_CONFLICT


def _decode(raw: bytes, key: bytes | None, max_bytes: int = 1 << 20) -> RequestRecord:
    return decode_record(raw, key, fallback_id="anon-0-1", max_bytes=max_bytes)


async def _refusal(pre: Preprocessor, record: RequestRecord) -> GenwireError:
    with pytest.raises(GenwireError) as info:
        await pre.handle_record(record)
    return info.value


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
