"""A request may not make its result hold more than ``max_logprob_entries`` logprob entries
(n × max_tokens × (1 + top_logprobs)): unbounded, n=16, max_tokens=250, top_logprobs=20 made a
7-8 MB result on the shipped model (0.5 s of postprocess's loop, ~90 of them fill Redis), and
a 2k-context model's went over Kafka's 16 MiB record limit. Refused like the generation budget:
out_of_range naming the parameter at fault, before tokenization or inference."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from genwire_preprocess.config import PreprocessSettings
from genwire_preprocess.handlers import Preprocessor
from genwire_preprocess.options import (
    DEFAULT_MAX_LOGPROB_ENTRIES,
    check_options,
    logprob_entries,
)
from tokenizers import Tokenizer, models, pre_tokenizers

from genwire.errors import PermanentError
from genwire.events import GenerationResult, OutputLogprob, ResultChoice, TopLogprob
from genwire.request import MAX_TOP_LOGPROBS, MODEL_OPTIONS, ErrorCode, GenerationRequest
from genwire.tokenization import AssetStore
from genwire.topics import MAX_RECORD_BYTES

MODEL = "genwire-gpt"


def _assets() -> Any:
    """What check_options reads of a model version: every option honoured."""
    return SimpleNamespace(
        name=MODEL, version="2", vocab_size=512, options=frozenset(MODEL_OPTIONS)
    )


def _request(**fields: Any) -> GenerationRequest:
    return GenerationRequest(request_id="r1", prompt="hi", schema_version=2, **fields)


def _refusal(request: GenerationRequest, **budgets: int) -> PermanentError:
    with pytest.raises(PermanentError) as caught:
        check_options(request, _assets(), max_generation_tokens=32_768, **budgets)
    return caught.value


def test_the_audits_request_is_refused_naming_top_logprobs() -> None:
    err = _refusal(_request(n=16, max_tokens=250, logprobs=True, top_logprobs=20))
    assert err.code == ErrorCode.OUT_OF_RANGE and err.param == "top_logprobs"
    assert (
        "84000 logprob entries" in err.message and str(DEFAULT_MAX_LOGPROB_ENTRIES) in err.message
    )


def test_logprobs_alone_past_the_budget_name_logprobs() -> None:
    """Within the generation budget (16 × 2048 = 32768) but not the logprob one."""
    err = _refusal(_request(n=16, max_tokens=2048, logprobs=True))
    assert err.code == ErrorCode.OUT_OF_RANGE and err.param == "logprobs"
    # Without logprobs the same request holds no logprob entry: the generation budget decides.
    check_options(_request(n=16, max_tokens=2048), _assets(), max_generation_tokens=32_768)


def test_the_generation_budget_is_checked_first() -> None:
    err = _refusal(_request(n=16, max_tokens=4096, logprobs=True, top_logprobs=20))
    assert err.param == "n" and "budget of 32768 tokens" in err.message


@pytest.mark.parametrize(
    "fields",
    [
        {"max_tokens": 250, "logprobs": True, "top_logprobs": MAX_TOP_LOGPROBS},
        {"n": 16, "max_tokens": 250, "logprobs": True},
        {"n": 16, "max_tokens": 250, "logprobs": True, "top_logprobs": 3},
        {"n": 3, "max_tokens": 8, "logprobs": True, "top_logprobs": 2},
        {"n": 16, "max_tokens": 2048},
    ],
)
def test_requests_within_the_default_pass(fields: dict[str, Any]) -> None:
    request = _request(**fields)
    assert logprob_entries(request) <= DEFAULT_MAX_LOGPROB_ENTRIES
    check_options(request, _assets(), max_generation_tokens=32_768)


def test_the_budget_is_exact_and_configurable(monkeypatch: pytest.MonkeyPatch) -> None:
    at = _request(n=2, max_tokens=10, logprobs=True, top_logprobs=4)  # 2 × 10 × 5 = 100
    assert logprob_entries(at) == 100
    check_options(at, _assets(), max_generation_tokens=100, max_logprob_entries=100)
    err = _refusal(at, max_logprob_entries=99)
    assert err.param == "top_logprobs"
    assert PreprocessSettings().max_logprob_entries == DEFAULT_MAX_LOGPROB_ENTRIES
    monkeypatch.setenv("GENWIRE_PREPROCESS_MAX_LOGPROB_ENTRIES", "99")
    assert PreprocessSettings().max_logprob_entries == 99


def test_a_result_at_the_default_stays_far_below_the_record_limit() -> None:
    """The largest result the default allows, counted as postprocess builds it: n = 2 (choice
    0's logprobs repeated at the top: 1.5 times the entries), 20 alternatives, and every token
    the longest entry the shipped tokenizer has (24 characters, 165 B as a TopLogprob)."""
    top, n = MAX_TOP_LOGPROBS, 2
    max_tokens = DEFAULT_MAX_LOGPROB_ENTRIES // (n * (1 + top))
    token = "\n" + " " * 23
    raw = list(token.encode())
    alt = TopLogprob(token=token, token_id=4095, logprob=-12.345678901234567, bytes=raw)
    entry = OutputLogprob(
        token=token, token_id=4095, logprob=-0.12345678359270096, bytes=raw, top=[alt] * top
    )
    lps = [entry.model_copy(update={"text_offset": 24 * i}) for i in range(max_tokens)]
    choices = [
        ResultChoice(index=i, text=token * max_tokens, logprobs=lps, finish_reason="length")
        for i in range(n)
    ]
    result = GenerationResult(
        request_id="r" * 64, text=choices[0].text, logprobs=lps, choices=choices
    )
    size = len(result.model_dump_json(exclude_none=True).encode())
    assert size < MAX_RECORD_BYTES // 2, size


@pytest.fixture
def repo(tmp_path: Path) -> AssetStore:
    """A one-version repository with a word-level tokenizer, every option declared."""
    vocab = {w: i for i, w in enumerate(["<|endoftext|>", "[UNK]", "hi", "there"])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    vdir = tmp_path / MODEL / "1"
    vdir.mkdir(parents=True)
    tok.save(str(vdir / "tokenizer.json"))
    (vdir / "tokenizer_config.json").write_text(json.dumps({"eos_token": "<|endoftext|>"}))
    manifest = {"context_length": 4096, "request_options": list(MODEL_OPTIONS)}
    (vdir / "manifest.json").write_text(json.dumps(manifest))
    return AssetStore(tmp_path)


async def test_the_preprocessor_refuses_before_tokenizing(
    repo: AssetStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    pre = Preprocessor(repo, default_model=MODEL, max_logprob_entries=1000)
    tokenized: list[str] = []

    async def encode(_assets: Any, text: str, _special: bool) -> list[int]:
        tokenized.append(text)
        return [2]

    monkeypatch.setattr(pre, "_encode", encode)
    with pytest.raises(PermanentError) as caught:
        await pre.handle(_request(n=4, max_tokens=50, logprobs=True, top_logprobs=5))
    assert caught.value.code == ErrorCode.OUT_OF_RANGE and caught.value.param == "top_logprobs"
    assert tokenized == []
    prepared = await pre.handle(_request(n=4, max_tokens=50, logprobs=True, top_logprobs=4))
    assert prepared.sampling.top_logprobs == 4 and tokenized == ["hi"]
