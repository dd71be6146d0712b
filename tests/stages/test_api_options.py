"""Issue 12 plumbing: request v2 options (v1 still read), their per-model-version check in
preprocess, and postprocess's n choices and logprobs (ids to token text, cut at a stop)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from genwire_postprocess.handlers import Postprocessor
from genwire_postprocess.logprobs import output_logprobs
from genwire_preprocess.handlers import Preprocessor
from genwire_preprocess.options import shadow_sampling
from tokenizers import Tokenizer

from genwire.errors import PermanentError
from genwire.events import (
    ChoiceOutput,
    Event,
    GenerationChunk,
    GenerationResult,
    Guided,
    Sampling,
    TokenEvent,
    TokenLogprob,
)
from genwire.request import (
    MODEL_OPTIONS,
    ErrorCode,
    GenerationRequest,
    fingerprint,
    packaged_schema,
    parse_request,
)
from genwire.tokenization import AssetStore

from .conftest import MODEL, FakeStore

TEXT = "The quick brown fox jumps over the lazy dog."


# -- request schema v2 ----------------------------------------------------------------------


def test_a_plain_request_is_still_written_and_read_as_v1() -> None:
    request = parse_request(b'{"prompt": "hi", "max_tokens": 5}', key=b"r1")
    assert request.schema_version == 1
    _, value = request.to_kafka()
    data = json.loads(value)
    # Nothing a v1 reader would refuse (v1 forbids unknown fields).
    assert set(data) <= set(packaged_schema(1)["properties"])
    assert data["schema_version"] == 1
    v1 = parse_request(b'{"schema_version": 1, "prompt": "hi"}', key=b"r2")
    assert v1.schema_version == 1 and v1.n == 1 and v1.logprobs is False


def test_v2_fields_make_a_v2_record_and_a_v1_record_cannot_use_them() -> None:
    request = parse_request(b'{"prompt": "hi", "n": 2, "logprobs": true}', key=b"r1")
    assert request.schema_version == 2
    assert json.loads(request.to_kafka()[1])["n"] == 2
    with pytest.raises(PermanentError) as info:
        parse_request(b'{"schema_version": 1, "prompt": "hi", "n": 2}', key=b"r1")
    assert info.value.code == ErrorCode.INVALID_REQUEST and info.value.param == "n"


def test_the_fingerprint_of_a_v1_request_ignores_v2_defaults() -> None:
    a = parse_request(b'{"prompt": "hi"}', key=b"r1")
    b = parse_request(b'{"prompt": "hi", "n": 1, "logprobs": false}', key=b"r1")
    c = parse_request(b'{"prompt": "hi", "n": 2}', key=b"r1")
    assert fingerprint(a) == fingerprint(b) != fingerprint(c)


def test_the_fingerprint_of_logit_bias_ignores_its_key_order() -> None:
    a = parse_request(b'{"prompt": "hi", "logit_bias": {"5": 1.0, "12": -2.0}}', key=b"r1")
    b = parse_request(b'{"prompt": "hi", "logit_bias": {"12": -2.0, "5": 1.0}}', key=b"r1")
    c = parse_request(b'{"prompt": "hi", "logit_bias": {"12": -2.0, "5": 1.5}}', key=b"r1")
    assert fingerprint(a) == fingerprint(b) != fingerprint(c)


@pytest.mark.parametrize(
    ("body", "code", "param"),
    [
        ({"n": 0}, ErrorCode.OUT_OF_RANGE, "n"),
        ({"n": 17}, ErrorCode.OUT_OF_RANGE, "n"),
        ({"logprobs": True, "top_logprobs": 21}, ErrorCode.OUT_OF_RANGE, "top_logprobs"),
        ({"top_logprobs": 2}, ErrorCode.OUT_OF_RANGE, "top_logprobs"),
        ({"presence_penalty": 2.5}, ErrorCode.OUT_OF_RANGE, "presence_penalty"),
        ({"frequency_penalty": -3}, ErrorCode.OUT_OF_RANGE, "frequency_penalty"),
        ({"repetition_penalty": 0}, ErrorCode.OUT_OF_RANGE, "repetition_penalty"),
        ({"min_p": 1.5}, ErrorCode.OUT_OF_RANGE, "min_p"),
        ({"logit_bias": {"5": 101}}, ErrorCode.OUT_OF_RANGE, "logit_bias"),
        ({"logit_bias": {"x": 1}}, ErrorCode.INVALID_REQUEST, "logit_bias"),
        ({"min_tokens": 10, "max_tokens": 5}, ErrorCode.OUT_OF_RANGE, "min_tokens"),
        ({"stop_token_ids": [-1]}, ErrorCode.OUT_OF_RANGE, "stop_token_ids"),
        ({"guided": {"kind": "xml"}}, ErrorCode.INVALID_REQUEST, "guided"),
    ],
)
def test_bad_options_name_their_field(body: dict[str, object], code: str, param: str) -> None:
    with pytest.raises(PermanentError) as info:
        parse_request(json.dumps({"prompt": "hi", **body}).encode(), key=b"r1")
    assert info.value.code == code
    assert info.value.param == param
    assert param in info.value.message


# -- preprocess: the model version declares what it honours -------------------------------


@pytest.fixture
def repo_with_options(model_repo: Path, tmp_path: Path) -> AssetStore:
    """The test repository with version 3 declaring every option; 2 declaring none."""
    repo = tmp_path / "repo"
    shutil.copytree(model_repo, repo)
    v3 = repo / MODEL / "3"
    shutil.copytree(repo / MODEL / "2", v3)
    manifest = json.loads((v3 / "manifest.json").read_text())
    (v3 / "manifest.json").write_text(
        json.dumps({**manifest, "request_options": list(MODEL_OPTIONS)})
    )
    return AssetStore(repo)


def _request(**fields: object) -> GenerationRequest:
    return GenerationRequest.model_validate({"request_id": "r1", "prompt": "The quick", **fields})


@pytest.mark.parametrize(
    ("fields", "option"),
    [
        ({"n": 2}, "n"),
        ({"logprobs": True}, "logprobs"),
        ({"logprobs": True, "top_logprobs": 3}, "logprobs"),  # the first one not declared
        ({"presence_penalty": 0.5}, "presence_penalty"),
        ({"frequency_penalty": 0.5}, "frequency_penalty"),
        ({"repetition_penalty": 1.2}, "repetition_penalty"),
        ({"min_p": 0.1}, "min_p"),
        ({"logit_bias": {"5": 1.0}}, "logit_bias"),
        ({"min_tokens": 2}, "min_tokens"),
        ({"ignore_eos": True}, "ignore_eos"),
        ({"guided": {"kind": "json_object"}}, "guided"),
    ],
)
async def test_an_option_the_version_does_not_declare_is_refused(
    repo_with_options: AssetStore, fields: dict[str, object], option: str
) -> None:
    pre = Preprocessor(repo_with_options, default_model=MODEL)
    with pytest.raises(PermanentError) as info:
        await pre.handle(_request(model_version="2", **fields))
    assert info.value.code == ErrorCode.UNSUPPORTED_PARAMETER
    assert info.value.param == option and f"'{option}'" in info.value.message
    prepared = await pre.handle(_request(model_version="3", **fields))  # declared: carried
    assert prepared.sampling.model_dump(include=set(fields) - {"logit_bias", "guided"}) == {
        k: v for k, v in fields.items() if k not in ("logit_bias", "guided")
    }


async def test_every_option_reaches_the_sampling(repo_with_options: AssetStore) -> None:
    pre = Preprocessor(repo_with_options, default_model=MODEL)
    prepared = await pre.handle(
        _request(
            model_version="3",
            n=3,
            logprobs=True,
            top_logprobs=2,
            logit_bias={"7": -100.0},
            stop_token_ids=[9],
            guided={"kind": "regex", "spec": "[a-z]+"},
            max_tokens=8,
        )
    )
    s = prepared.sampling
    assert (s.n, s.logprobs, s.top_logprobs, s.logit_bias) == (3, True, 2, {7: -100.0})
    assert s.guided == Guided(kind="regex", spec="[a-z]+")
    assert s.stop_token_ids[-1] == 9 and s.stop_token_ids[0] == 0  # the EOS id stays first


async def test_ignore_eos_leaves_the_eos_ids_out_of_the_stop_ids(
    repo_with_options: AssetStore,
) -> None:
    """The model stops on every id in stop_token_ids: with ignore_eos the EOS id must not be
    among them (only the caller's), or ignore_eos would change nothing."""
    pre = Preprocessor(repo_with_options, default_model=MODEL)
    plain = await pre.handle(_request(model_version="3", stop_token_ids=[9]))
    eos = [i for i in plain.sampling.stop_token_ids if i != 9]
    assert eos  # the model's EOS id is there without ignore_eos
    prepared = await pre.handle(
        _request(model_version="3", ignore_eos=True, stop_token_ids=[9], max_tokens=8)
    )
    assert prepared.sampling.ignore_eos
    assert prepared.sampling.stop_token_ids == [9]


async def test_a_shadow_copy_keeps_the_options_or_is_not_made(
    repo_with_options: AssetStore,
) -> None:
    """A shadow version gets the caller's stop ids (its own EOS ids, none under ignore_eos), and
    one that does not declare an option cannot take the copy (silently ignored there, it would
    skew the comparison)."""
    pre = Preprocessor(repo_with_options, default_model=MODEL)
    request = _request(model_version="3", ignore_eos=True, stop_token_ids=[9], max_tokens=8)
    prepared = await pre.handle(request)
    declared = await repo_with_options.aget(MODEL, "3")
    copy = shadow_sampling(request, declared, prepared.sampling, max_generation_tokens=100)
    assert copy.stop_token_ids == [9] and copy.ignore_eos
    plain = _request(model_version="3", stop_token_ids=[9])
    copy = shadow_sampling(
        plain, declared, (await pre.handle(plain)).sampling, max_generation_tokens=100
    )
    assert copy.stop_token_ids == [*declared.eos_token_ids, 9]
    older = await repo_with_options.aget(MODEL, "2")
    with pytest.raises(PermanentError) as info:
        shadow_sampling(request, older, prepared.sampling, max_generation_tokens=100)
    assert info.value.param == "ignore_eos"


async def test_token_ids_outside_the_vocabulary_and_the_budget(
    repo_with_options: AssetStore, tokenizer: Tokenizer
) -> None:
    pre = Preprocessor(repo_with_options, default_model=MODEL, max_generation_tokens=100)
    vocab = tokenizer.get_vocab_size(with_added_tokens=True)
    for fields, param in (
        ({"logit_bias": {str(vocab): 1.0}}, "logit_bias"),
        ({"stop_token_ids": [vocab + 5]}, "stop_token_ids"),
        ({"n": 4, "max_tokens": 30}, "n"),
    ):
        with pytest.raises(PermanentError) as info:
            await pre.handle(_request(model_version="3", **fields))
        assert info.value.code == ErrorCode.OUT_OF_RANGE and info.value.param == param
    with pytest.raises(PermanentError) as info:
        await pre.handle(
            GenerationRequest.model_validate(
                {"request_id": "r1", "prompt_token_ids": [1, vocab], "model_version": "3"}
            )
        )
    assert info.value.param == "prompt_token_ids"


async def test_token_id_prompts_skip_tokenization(
    repo_with_options: AssetStore, tokenizer: Tokenizer
) -> None:
    pre = Preprocessor(repo_with_options, default_model=MODEL)
    ids = tokenizer.encode("The quick brown fox").ids
    prepared = await pre.handle(
        GenerationRequest.model_validate({"request_id": "r1", "prompt_token_ids": ids})
    )
    assert prepared.input_ids == ids


# -- postprocess: n choices and logprobs ---------------------------------------------------


def _lps(ids: list[int]) -> list[TokenLogprob]:
    return [
        TokenLogprob(token_id=i, logprob=-0.5 - k, top=[(i, -0.5 - k), (3, -4.0)])
        for k, i in enumerate(ids)
    ]


def test_output_logprobs_have_token_text_and_offsets(
    assets: AssetStore, tokenizer: Tokenizer
) -> None:
    decode = assets.get(MODEL, "2").decode
    ids = tokenizer.encode(TEXT).ids
    full = output_logprobs(decode, ids, _lps(ids), len(TEXT))
    assert len(full) == len(ids)
    assert "".join(lp.token for lp in full) == TEXT
    assert all(TEXT[lp.text_offset :].startswith(lp.token) for lp in full)
    assert full[0].top[1].token == decode([3]) and full[0].bytes == list(full[0].token.encode())
    cut = TEXT.index("fox")
    short = output_logprobs(decode, ids, _lps(ids), cut)
    # Tokens that start inside the text are kept (one may straddle the cut), no later one.
    joined = "".join(lp.token for lp in short)
    assert joined.startswith(TEXT[:cut]) and len(joined) - len(short[-1].token) < cut
    assert len(short) < len(full)


async def _run(post: Postprocessor, chunks: list[GenerationChunk]) -> list[Event]:
    events: list[Event] = []
    for c in chunks:
        events += await post.handle(c)
    return events


async def test_n_choices_stream_separately_and_end_in_one_result(
    assets: AssetStore, tokenizer: Tokenizer
) -> None:
    post = Postprocessor(assets, FakeStore())
    texts = [TEXT, "Grüße aus Köln!", "Kafka carries requests; Triton runs the model"]
    ids = [tokenizer.encode(t).ids for t in texts]
    sampling = Sampling(n=3, logprobs=True, stop=["Triton"])
    chunks: list[GenerationChunk] = []
    for c, choice_ids in enumerate(ids):
        half = len(choice_ids) // 2
        chunks.append(
            GenerationChunk(
                request_id="n3",
                index=0,
                choice=c,
                token_ids=choice_ids[:half],
                logprobs=_lps(choice_ids[:half]),
                stream=True,
                model=MODEL,
                model_version="2",
                sampling=sampling,
            )
        )
    outputs = [  # choice 1 ended on an EOS the model counted (not in output_ids)
        ChoiceOutput(
            index=c,
            output_ids=i,
            finish_reason="length",
            logprobs=_lps(i),
            completion_tokens=len(i) + (c == 1),
        )
        for c, i in enumerate(ids)
    ]
    chunks.append(
        GenerationChunk(
            request_id="n3",
            index=1,
            final=True,
            stream=True,
            model=MODEL,
            model_version="2",
            finish_reason="length",
            prompt_tokens=3,
            completion_tokens=sum(len(i) for i in ids) + 1,
            sampling=sampling,
            output_ids=ids[0],
            logprobs=_lps(ids[0]),
            choices=outputs,
        )
    )
    events = await _run(post, chunks)
    (result,) = [e for e in events if isinstance(e, GenerationResult)]
    choices = result.all_choices()
    assert [c.text for c in choices] == [TEXT, texts[1], "Kafka carries requests; "]
    assert [c.finish_reason for c in choices] == ["length", "length", "stop"]
    assert result.text == TEXT and result.usage.completion_tokens == sum(len(i) for i in ids) + 1
    assert sum(c.completion_tokens for c in choices) == result.usage.completion_tokens
    tokens = [e for e in events if isinstance(e, TokenEvent)]
    for c, choice in enumerate(choices):
        mine = [t for t in tokens if t.choice == c]
        assert "".join(t.text for t in mine) == choice.text
        assert [t.final for t in mine][-1] and sum(t.final for t in mine) == 1
        streamed = [lp for t in mine for lp in (t.logprobs or [])]
        assert choice.logprobs is not None
        assert [lp.token_id for lp in streamed] == [lp.token_id for lp in choice.logprobs]
        offsets = [t.logprob_offset for t in mine if t.logprobs]
        assert offsets == sorted(offsets) and (not offsets or offsets[0] == 0)
    assert post.streams == {}


async def test_logprobs_of_a_single_choice_are_on_the_result(
    assets: AssetStore, tokenizer: Tokenizer
) -> None:
    post = Postprocessor(assets, FakeStore())
    ids = tokenizer.encode(TEXT).ids
    final = GenerationChunk(
        request_id="lp1",
        index=0,
        final=True,
        model=MODEL,
        model_version="2",
        finish_reason="length",
        completion_tokens=len(ids),
        sampling=Sampling(logprobs=True, top_logprobs=1, stop=["lazy"]),
        output_ids=ids,
        logprobs=_lps(ids),
    )
    (result,) = [e for e in await post.handle(final) if isinstance(e, GenerationResult)]
    assert result.choices == [] and result.logprobs is not None
    assert result.text == TEXT[: TEXT.index("lazy")]
    joined = "".join(lp.token for lp in result.logprobs)
    assert joined.startswith(result.text)
    assert len(joined) - len(result.logprobs[-1].token) < len(result.text)
    plain = final.model_copy(update={"request_id": "lp2", "sampling": Sampling()})
    (result,) = [e for e in await post.handle(plain) if isinstance(e, GenerationResult)]
    assert result.logprobs is None  # not asked for: none
