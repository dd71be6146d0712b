"""Constraints inside the real decode loop (in-process scheduler, tiny model, no Triton).

Stop strings end the generation on the token that completes them, usage counts exactly the
tokens generated, and structured output from the real model always parses and validates.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import jsonschema  # type: ignore[import-untyped]
import pytest
from genwire_model.repository import ModelVersion

from tests.model.decode import Collect, Model, decode


@pytest.fixture(scope="module")
def model(tiny_version: ModelVersion) -> Model:
    return Model.load(tiny_version)


def generate(
    model: Model, prompt: list[int], guided: str = "", stop: Sequence[str] = (), **kw: Any
) -> Collect:
    """With the model's eos ids, and the constraints the compiler builds for ``guided`` and
    ``stop``, as the served model does."""
    built = model.compiler.build(guided, tuple(stop), 1)
    return decode(
        model,
        prompt,
        model.eos,
        guided=guided,
        stop=tuple(stop),
        constraints=list(built) if built is not None else None,
        **{"max_tokens": 40, "temperature": 0.0, **kw},
    )


def first_completing(model: Model, ids: list[int], stop: str) -> int | None:
    """Index of the token whose text first completes ``stop``."""
    for i in range(len(ids)):
        if stop in model.text(ids[: i + 1]):
            return i
    return None


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_stop_string_ends_on_its_token_and_usage_counts_exactly(model: Model, seed: int) -> None:
    prompt = model.tokenizer.encode("Return the number of").ids
    free = generate(model, prompt, temperature=0.9, seed=seed, max_tokens=40)
    free_text = model.text(free.tokens)
    # A stop string that occurs in the free text, past its first token.
    candidates = [free_text[i : i + 2] for i in range(len(free_text) // 2, len(free_text) - 2)]
    stop = next((c for c in candidates if c.strip()), None)
    assert stop is not None, free_text
    k = first_completing(model, free.tokens, stop)
    assert k is not None
    stopped = generate(model, prompt, temperature=0.9, seed=seed, max_tokens=40, stop=[stop])
    assert stopped.tokens == free.tokens[: k + 1]  # the same tokens, up to the one completing it
    assert stopped.final.finish_reason == "stop"
    assert stopped.final.completion_tokens == k + 1  # exactly what was generated
    assert stopped.final.completion_tokens < free.final.completion_tokens or k + 1 == len(
        free.tokens
    )


SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 4},
        "count": {"type": "integer", "minimum": 0, "maximum": 99},
        "kind": {"enum": ["a", "b"]},
        "flags": {"type": "array", "items": {"type": "boolean"}, "maxItems": 1},
    },
    "required": ["name", "count", "kind", "flags"],
    "additionalProperties": False,
}


@pytest.mark.parametrize("seed", range(4))
def test_real_model_json_output_parses_and_validates(model: Model, seed: int) -> None:
    prompt = model.tokenizer.encode("The default value is").ids
    guided = json.dumps({"kind": "json_schema", "spec": json.dumps(SCHEMA)})
    out = generate(model, prompt, temperature=1.0, seed=seed, max_tokens=56, guided=guided)
    assert out.final.finish_reason == "stop", model.text(out.tokens)
    value = json.loads(model.text(out.tokens))
    jsonschema.validate(value, SCHEMA)
    assert out.final.completion_tokens >= len(out.tokens)


def test_real_model_choice(model: Model) -> None:
    prompt = model.tokenizer.encode("Create a new").ids
    choices = ["alpha", "beta gamma", "delta"]
    guided = json.dumps({"kind": "choice", "spec": json.dumps(choices)})
    for seed in range(3):
        out = generate(model, prompt, temperature=1.0, seed=seed, guided=guided)
        assert out.final.finish_reason == "stop"
        assert model.text(out.tokens) in choices


def test_stopbench_runs_and_saves_tokens(
    tiny_version: ModelVersion, capsys: pytest.CaptureFixture[str]
) -> None:
    from genwire_model import stopbench

    code = stopbench.main(
        [
            "--version-dir",
            str(tiny_version.path),
            "--requests",
            "6",
            "--max-tokens",
            "40",
            "--stop",
            " ",
        ]
    )
    figures = json.loads(capsys.readouterr().out)
    assert code == 0 and figures["same_text"] == 6 and figures["errors"] == 0
    assert figures["stopped_requests"] > 0
    assert figures["tokens_generated_stopped_after"] < figures["tokens_generated_stopped_before"]


def test_helpers_of_the_bench() -> None:
    from genwire_model.stopbench import ModeResult, cut, summary

    assert cut("a. b. c", [".", "b"]) == ("a", True)
    assert cut("abc", ["x"]) == ("abc", False)
    before = ModeResult("before", 2.0, [10, 8, 5], ["a", "b", "c"], [True, True, False], 0)
    after = ModeResult("after", 1.0, [3, 2, 5], ["a", "b", "c"], [True, True, False], 0)
    figures = summary(before, after)
    assert figures["stopped_requests"] == 2
    assert figures["tokens_generated_stopped_before"] == 18
    assert figures["tokens_generated_stopped_after"] == 5
    assert figures["same_text"] == 3
    assert figures["tokens_saved_fraction"] == pytest.approx(1 - 5 / 18)


def test_a_built_version_carries_the_constraints(tiny_version: ModelVersion) -> None:
    """constraints.py is copied into the version and the manifest declares ``guided``, so
    preprocess lets structured output through to a model that can enforce it."""
    assert (tiny_version.path / "genwire_runtime" / "constraints.py").is_file()
    assert "guided" in tiny_version.manifest["request_options"]
