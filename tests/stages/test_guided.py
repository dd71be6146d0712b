"""preprocess's structured-output check (genwire_preprocess.guided): refuse before Triton."""

from __future__ import annotations

import asyncio
import json
import shutil
from pathlib import Path
from typing import Any

import pytest
from genwire_model import DEFAULT_MODEL_NAME
from genwire_model.runtime import constraints
from genwire_preprocess import guided as check
from genwire_preprocess.guided import GuidedChecker
from genwire_preprocess.handlers import Preprocessor

from genwire.errors import PermanentError
from genwire.events import Guided
from genwire.request import ERROR_HTTP_STATUS, ErrorCode, GenerationRequest
from genwire.settings import CommonSettings
from genwire.tokenization import AssetStore, ModelAssets, load_assets

from .conftest import MODEL as STAGES_MODEL

SPECS = [
    ("json_object", ""),
    ("json_schema", '{"type": "object", "properties": {"a": {"type": "integer"}}}'),
    ("json_schema", "true"),
    (
        "json_schema",
        '{"$defs": {"n": {"type": "array", "items": {"$ref": "#/$defs/n"}}}, "$ref": "#/$defs/n"}',
    ),
    ("regex", r"[0-9]{2,3}-\w+"),
    ("choice", '["yes", "no", "naïve \\"quoted\\""]'),
    ("grammar", 'start: "a" b\nb: /[0-9]+/'),
    ("grammar", 'root ::= "x" | "y"'),
]


@pytest.fixture(scope="module")
def assets(request: pytest.FixtureRequest) -> ModelAssets:
    """The default model's assets (what `genwire up` serves), else the tiny test model's."""
    versions = sorted(
        (p for p in (CommonSettings().repository / DEFAULT_MODEL_NAME).glob("*/tokenizer.json")),
        key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else -1,
    )
    if versions:
        return load_assets(versions[-1].parent, DEFAULT_MODEL_NAME, 256)
    checkpoint: Path = request.getfixturevalue("tiny_checkpoint")
    return load_assets(checkpoint, "tiny", 64)


@pytest.mark.parametrize(("kind", "spec"), SPECS)
def test_same_grammar_as_the_model(kind: str, spec: str) -> None:
    """preprocess checks exactly what the model's decode loop will enforce."""
    assert check.grammar_text(kind, spec) == constraints.grammar_text(kind, spec)
    assert check.JSON_OPTIONS == constraints.JSON_OPTIONS
    assert (check.MAX_GRAMMAR_SIZE, check.LEXER_FUEL) == (
        constraints.MAX_GRAMMAR_SIZE,
        constraints.LEXER_FUEL,
    )


@pytest.mark.parametrize(("kind", "spec"), SPECS)
def test_good_specs_pass(assets: ModelAssets, kind: str, spec: str) -> None:
    GuidedChecker().check_sync(Guided(kind=kind, spec=spec), assets)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("kind", "spec", "param", "message"),
    [
        ("json_schema", '{"type": "integr"}', "response_format", "Invalid type: integr"),
        ("json_schema", '{"type": "array", "uniqueItems": true}', "response_format", "uniqueItems"),
        (
            "json_schema",
            '{"format": "no-such-format", "type": "string"}',
            "response_format",
            "Unknown format",
        ),
        ("json_schema", "[1, 2]", "response_format", "got list"),
        (
            "json_schema",
            '{"type": "integer", "minimum": 5, "maximum": 1}',
            "response_format",
            "Unsatisfiable",
        ),
        ("regex", "a(?=b)", "guided_regex", "look-around"),
        ("choice", "yes", "guided_choice", "not a JSON list"),
        ("grammar", "start: nowhere", "guided_grammar", "unknown name"),
        ("json_object", '{"type": "array"}', "response_format", "takes no spec"),
    ],
)
def test_bad_specs_are_invalid_request_naming_the_field(
    assets: ModelAssets, kind: str, spec: str, param: str, message: str
) -> None:
    with pytest.raises(PermanentError) as info:
        GuidedChecker().check_sync(Guided(kind=kind, spec=spec), assets)  # type: ignore[arg-type]
    err = info.value
    assert err.code == ErrorCode.INVALID_REQUEST and ERROR_HTTP_STATUS[err.code] == 400
    assert err.param == "guided"  # the request's field (HTTP names the one its caller sent)
    assert err.message.startswith(f"guided ({kind}): ") and message in err.message


def test_size_limits(assets: ModelAssets) -> None:
    props = {f"f{i}": {"enum": [f"v{j}" for j in range(10)]} for i in range(20)}
    schema = Guided(kind="json_schema", spec=json.dumps({"properties": props}))
    GuidedChecker().check_sync(schema, assets)
    with pytest.raises(PermanentError, match=r"grammar size .* too big"):
        GuidedChecker(max_grammar_size=100).check_sync(schema, assets)
    with pytest.raises(PermanentError, match="too big"):
        GuidedChecker(lexer_fuel=1000).check_sync(schema, assets)


@pytest.mark.parametrize("kind", ["json_schema", "choice"])
@pytest.mark.parametrize(
    "spec",
    [
        "[" * 5000,  # under the 64 KiB limit: Python's parser raised RecursionError (internal)
        "[" * 5000 + "]" * 5000,
        '{"type": "array", "items": ' * 2000 + "{}" + "}" * 2000,
        "[" * (check.MAX_JSON_NESTING + 1) + "]" * (check.MAX_JSON_NESTING + 1),
    ],
)
def test_a_spec_nested_too_deep_is_invalid_request(
    assets: ModelAssets, kind: str, spec: str
) -> None:
    with pytest.raises(PermanentError) as info:
        GuidedChecker().check_sync(Guided(kind=kind, spec=spec), assets)  # type: ignore[arg-type]
    err = info.value
    assert err.code == ErrorCode.INVALID_REQUEST and err.param == "guided"
    assert f"more than {check.MAX_JSON_NESTING} levels deep" in err.message


def test_the_nesting_limit_is_what_llguidance_accepts(assets: ModelAssets) -> None:
    """Up to the limit a schema compiles (the limit refuses nothing llguidance takes); one
    level more, llguidance would refuse it too."""
    deepest = check.MAX_JSON_NESTING - 1  # the schema's own object is a level
    inner = '{"type": "object", "x": ' + "[" * deepest + "]" * deepest + "}"
    assert check.json_nesting(inner, 1000) == check.MAX_JSON_NESTING
    GuidedChecker().check_sync(Guided(kind="json_schema", spec=inner), assets)
    over = '{"type": "object", "x": ' + "[" * (deepest + 1) + "]" * (deepest + 1) + "}"
    grammar = check.LLMatcher.grammar_from_json_schema(
        json.loads(over), overrides=check.JSON_OPTIONS
    )
    matcher = check.LLMatcher(GuidedChecker().tokenizer(assets), str(grammar), log_level=0)
    assert matcher.is_error() and "recursion limit" in matcher.get_error()
    # Brackets and escapes inside strings do not nest.
    assert check.json_nesting('{"a": "[[{\\"[", "b": [1, {"c": "]]"}]}', 1000) == 3


def test_async_check_and_tokenizer_cache(assets: ModelAssets) -> None:
    checker = GuidedChecker(tokenizers=1)
    asyncio.run(checker.check(None, assets))
    asyncio.run(checker.check(Guided(kind="regex", spec="[a-z]+"), assets))
    first = checker.tokenizer(assets)
    assert checker.tokenizer(assets) is first
    with pytest.raises(PermanentError, match=r"guided \(regex\)"):
        asyncio.run(checker.check(Guided(kind="regex", spec="("), assets))


@pytest.fixture
def repo_with_guided(model_repo: Path, tmp_path: Path) -> AssetStore:
    """The stages' test repository, version 1 declaring the ``guided`` option."""
    repo = tmp_path / "repo"
    shutil.copytree(model_repo, repo)
    v1 = repo / STAGES_MODEL / "1"
    manifest = json.loads((v1 / "manifest.json").read_text())
    (v1 / "manifest.json").write_text(json.dumps({**manifest, "request_options": ["guided"]}))
    return AssetStore(repo)


def test_preprocess_refuses_a_schema_that_cannot_compile(repo_with_guided: AssetStore) -> None:
    pre = Preprocessor(repo_with_guided, default_model=STAGES_MODEL)

    def request(spec: str) -> GenerationRequest:
        return GenerationRequest.model_validate(
            {
                "request_id": "g1",
                "prompt": "The quick",
                "model_version": "1",
                "guided": {"kind": "json_schema", "spec": spec},
            }
        )

    good = asyncio.run(pre.handle(request('{"type": "object"}')))
    assert good.sampling.guided == Guided(kind="json_schema", spec='{"type": "object"}')
    with pytest.raises(PermanentError) as info:
        asyncio.run(pre.handle(request('{"type": "object", "not": {}}')))
    assert info.value.code == ErrorCode.INVALID_REQUEST
    assert info.value.param == "guided" and '"not"' in info.value.message


class CountingChecker(GuidedChecker):
    """Counts compilations (each one asks for the version's tokenizer)."""

    compiles = 0

    def tokenizer(self, assets: ModelAssets) -> Any:
        self.compiles += 1
        return super().tokenizer(assets)


def test_a_constraint_that_compiled_is_not_compiled_again(assets: ModelAssets) -> None:
    checker = CountingChecker(passed=2)
    specs = [Guided(kind="regex", spec=f"[a-z]{{{i}}}") for i in range(1, 4)]
    checker.check_sync(specs[0], assets)
    asyncio.run(checker.check(specs[0], assets))
    checker.check_sync(specs[0], assets)
    assert checker.compiles == 1
    checker.check_sync(specs[1], assets)
    checker.check_sync(specs[2], assets)  # at most 2 kept: specs[0] is forgotten
    checker.check_sync(specs[0], assets)
    assert checker.compiles == 4
    bad = Guided(kind="regex", spec="(")
    for _ in range(2):  # a failure is never remembered as passed
        with pytest.raises(PermanentError):
            checker.check_sync(bad, assets)
    assert checker.compiles == 6


@pytest.mark.parametrize(
    ("kind", "spec"),
    [("json_object", '{"type": "array"}'), ("json_schema", "[1, 2]"), ("json_schema", "{")],
)
def test_the_model_refuses_a_bad_spec_as_preprocess_does(kind: str, spec: str) -> None:
    """A request that reaches Triton another way (its port, the bench's baseline) is refused
    by the model for the same reason, not served with its spec dropped."""
    with pytest.raises(check.GuidedError) as ours:
        check.grammar_text(kind, spec)
    with pytest.raises(constraints.ConstraintError) as model:
        constraints.grammar_text(kind, spec)
    assert str(model.value) == str(ours.value)
