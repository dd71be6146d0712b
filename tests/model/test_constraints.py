"""Constraints of the decode loop (runtime/constraints.py) against a real model tokenizer.

Structured output is driven by an adversarial stand-in for the model: random logits, so every
token the mask allows gets sampled sooner or later. Whatever is sampled, the text must parse
and validate. Stop strings are checked against a reference that decodes the whole text again
after every token.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import jsonschema  # type: ignore[import-untyped]
import numpy as np
import pytest
from genwire_model import DEFAULT_MODEL_NAME
from genwire_model.runtime.constraints import (
    ConstraintCompiler,
    ConstraintError,
    RowConstraint,
    Vocabulary,
    apply_masks,
    fill_masks,
    parse_guided,
)
from genwire_model.runtime.sampling import log_softmax
from tokenizers import Tokenizer

from genwire.settings import CommonSettings

EOS = 0


@pytest.fixture(scope="module")
def tokenizer_file(request: pytest.FixtureRequest) -> Path:
    """The default model's tokenizer (what `genwire up` serves), else the tiny test model's."""
    found = sorted(
        (CommonSettings().repository / DEFAULT_MODEL_NAME).glob("*/tokenizer.json"),
        key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else -1,
    )
    if found:
        return found[-1]
    checkpoint: Path = request.getfixturevalue("tiny_checkpoint")
    return checkpoint / "tokenizer.json"


@pytest.fixture(scope="module")
def hf(tokenizer_file: Path) -> Tokenizer:
    return Tokenizer.from_file(str(tokenizer_file))


@pytest.fixture(scope="module")
def vocab(tokenizer_file: Path, hf: Tokenizer) -> Vocabulary:
    return Vocabulary.from_file(tokenizer_file, hf.get_vocab_size(), [EOS])


def decode(hf: Tokenizer, ids: Sequence[int]) -> str:
    """The text as postprocess decodes it."""
    return hf.decode(list(ids), skip_special_tokens=True)


def run(
    vocab: Vocabulary,
    rows: list[RowConstraint],
    seed: int,
    steps: int = 400,
    favour: bytes = b'"}]',
) -> tuple[list[list[int]], list[str | None]]:
    """Sample each row from random logits under its mask until it ends (or ``steps``).

    Tokens holding one of ``favour``'s bytes get a bonus, so strings and containers close
    within the budget; every other allowed token keeps a fair chance.
    """
    rng = np.random.default_rng(seed)
    size = vocab.vocab_size
    bonus = np.array(
        [6.0 if any(b in vocab.token_bytes[t] for b in favour) else 0.0 for t in range(size)]
    )
    tokens: list[list[int]] = [[] for _ in rows]
    reasons: list[str | None] = [None] * len(rows)
    live = list(range(len(rows)))
    for _ in range(steps):
        if not live:
            break
        logits = (rng.normal(size=(len(live), size)) * 2.0 + bonus).astype(np.float32)
        apply_masks(logits, fill_masks([rows[i] for i in live], size))
        probs = np.exp(log_softmax(logits))
        still = []
        for r, i in enumerate(live):
            token = int(rng.choice(size, p=probs[r] / probs[r].sum()))
            tokens[i].append(token)
            reasons[i] = rows[i].advance(token)
            if reasons[i] is None:
                still.append(i)
        live = still
    return tokens, reasons


SCHEMAS: dict[str, dict[str, Any]] = {
    "person": {
        "type": "object",
        "properties": {
            "name": {"type": "string", "maxLength": 12},
            "age": {"type": "integer", "minimum": 0, "maximum": 130},
            "email": {"type": "string", "format": "email", "maxLength": 30},
            "tags": {"type": "array", "items": {"enum": ["a", "b", "c"]}, "maxItems": 3},
            "ok": {"type": "boolean"},
        },
        "required": ["name", "age", "tags", "ok"],
        "additionalProperties": False,
    },
    "nested_refs": {
        "$defs": {
            "point": {
                "type": "object",
                "properties": {"x": {"type": "number"}, "y": {"type": "number"}},
                "required": ["x", "y"],
                "additionalProperties": False,
            }
        },
        "type": "object",
        "properties": {
            "kind": {"const": "path"},
            "points": {
                "type": "array",
                "items": {"$ref": "#/$defs/point"},
                "minItems": 1,
                "maxItems": 3,
            },
            "closed": {"anyOf": [{"type": "boolean"}, {"type": "null"}]},
        },
        "required": ["kind", "points", "closed"],
        "additionalProperties": False,
    },
    "pattern_and_enum": {
        "type": "object",
        "properties": {
            "code": {"type": "string", "pattern": "^[A-Z]{2}-[0-9]{3}$"},
            "level": {"enum": ["low", "mid", "high"]},
            "score": {"type": "number", "minimum": -1, "maximum": 1},
        },
        "required": ["code", "level", "score"],
        "additionalProperties": False,
    },
    "top_level_array": {
        "type": "array",
        "items": {"type": "integer", "minimum": 0, "maximum": 9},
        "minItems": 2,
        "maxItems": 5,
    },
}


@pytest.mark.parametrize("name", sorted(SCHEMAS))
def test_json_schema_output_parses_and_validates(
    vocab: Vocabulary, hf: Tokenizer, name: str
) -> None:
    schema = SCHEMAS[name]
    rows = [vocab.constraint(("json_schema", json.dumps(schema))) for _ in range(6)]
    assert all(r is not None for r in rows)
    tokens, reasons = run(vocab, [r for r in rows if r is not None], seed=len(name))
    for ids, reason in zip(tokens, reasons, strict=True):
        text = decode(hf, ids)
        assert reason == "stop", f"the grammar did not complete: {text!r}"
        value = json.loads(text)
        jsonschema.validate(value, schema)


def test_json_object_is_a_json_object(vocab: Vocabulary, hf: Tokenizer) -> None:
    rows = [vocab.constraint(("json_object", "")) for _ in range(6)]
    tokens, reasons = run(vocab, [r for r in rows if r is not None], seed=7)
    for ids, reason in zip(tokens, reasons, strict=True):
        assert reason == "stop"
        assert isinstance(json.loads(decode(hf, ids)), dict)


def test_regex_choice_and_grammar(vocab: Vocabulary, hf: Tokenizer) -> None:
    regex = r"[0-9]{3}-[a-z]{2,4}( ok)?"
    choices = ["yes", "no", "maybe so", "naïve café"]
    lark = 'start: "(" item ("," item)* ")"\nitem: /[a-c]/'
    gbnf = 'root ::= "say " ("hi" | "bye") "!"'
    cases: list[tuple[tuple[str, str], Callable[[str], bool]]] = [
        (("regex", regex), lambda t: re.fullmatch(regex, t) is not None),
        (("choice", json.dumps(choices)), lambda t: t in choices),
        (("grammar", lark), lambda t: re.fullmatch(r"\([a-c](,[a-c])*\)", t) is not None),
        (("grammar", gbnf), lambda t: t in ("say hi!", "say bye!")),
    ]
    for (kind, spec), valid in cases:
        rows = [vocab.constraint((kind, spec)) for _ in range(6)]
        tokens, reasons = run(vocab, [r for r in rows if r is not None], seed=3, favour=b")")
        for ids, reason in zip(tokens, reasons, strict=True):
            text = decode(hf, ids)
            assert reason == "stop" and valid(text), (kind, text)
    # Every choice is reachable (the mask does not cut one off).
    seen = set()
    for seed in range(40):
        rows = [vocab.constraint(("choice", json.dumps(choices)))]
        tokens, _ = run(vocab, [r for r in rows if r is not None], seed=seed, favour=b"")
        seen.add(decode(hf, tokens[0]))
    assert seen == set(choices)


def test_a_complete_grammar_ends_the_row_without_eos(vocab: Vocabulary, hf: Tokenizer) -> None:
    row = vocab.constraint(("choice", '["yes"]'))
    assert row is not None
    ids = hf.encode("yes", add_special_tokens=False).ids
    reasons = [row.advance(t) for t in ids]
    assert reasons == [None] * (len(ids) - 1) + ["stop"]


def test_eos_ends_an_accepting_row(vocab: Vocabulary, hf: Tokenizer) -> None:
    row = vocab.constraint(("regex", "[0-9]+"))
    assert row is not None
    assert row.advance(hf.encode("12", add_special_tokens=False).ids[0]) is None
    allowed = row.allowed()
    assert allowed is not None and allowed[EOS]  # "12" may end here
    assert row.advance(EOS) == "stop"


def test_mask_allows_exactly_what_the_grammar_accepts(vocab: Vocabulary) -> None:
    row = vocab.constraint(("regex", "(ab|ac)d"))
    assert row is not None
    allowed = row.allowed()
    assert allowed is not None and allowed.dtype == np.bool_
    assert allowed.shape == (vocab.vocab_size,)
    for token in np.flatnonzero(allowed):
        bytes_ = vocab.token_bytes[token]
        assert bytes_ and (b"abd".startswith(bytes_) or b"acd".startswith(bytes_)), bytes_
    assert not allowed[EOS]
    # A forbidden token is refused: the row cannot go on.
    forbidden = int(np.flatnonzero(~allowed)[5])
    with pytest.raises(ConstraintError, match="not allowed"):
        row.advance(forbidden)


def test_batch_masks_equal_row_masks_and_apply(vocab: Vocabulary) -> None:
    rows: list[RowConstraint | None] = [
        vocab.constraint(("regex", "[a-z]+")),
        None,
        vocab.constraint(stop=["x"]),  # stop strings only: no mask
        vocab.constraint(("json_object", "")),
    ]
    masks = fill_masks(rows, vocab.vocab_size)
    assert masks is not None
    index, allowed = masks
    assert index.tolist() == [0, 3]
    for slot, row in enumerate(index):
        constraint = rows[int(row)]
        assert constraint is not None
        row_mask = constraint.allowed()
        assert row_mask is not None
        np.testing.assert_array_equal(allowed[slot], row_mask)
    logits = np.zeros((4, vocab.vocab_size), np.float32)
    apply_masks(logits, masks)
    assert np.isneginf(logits[0][~allowed[0]]).all() and (logits[0][allowed[0]] == 0).all()
    assert (logits[1] == 0).all() and (logits[2] == 0).all()
    assert fill_masks([None, rows[2]], vocab.vocab_size) is None


def stop_reference(hf: Tokenizer, ids: list[int], stops: list[str]) -> int | None:
    """Index of the token after which the decoded text first contains a stop string."""
    for i in range(len(ids)):
        text = decode(hf, ids[: i + 1])
        if any(s in text for s in stops):
            return i
    return None


def stopped_at(vocab: Vocabulary, ids: list[int], stops: list[str]) -> int | None:
    row = vocab.constraint(stop=stops)
    assert row is not None and row.allowed() is None
    for i, token in enumerate(ids):
        if row.advance(token) == "stop":
            return i
    return None


STOP_TEXT = (
    "The result is 42. Next, the café serves crème brûlée; end of story.\n"
    "Second line: call foo(bar) and return.\nThird"
)


@pytest.mark.parametrize(
    "stops",
    [
        ["."],
        ["\n"],
        ["Next"],
        ["é"],
        ["brûlée;"],
        ["end of story"],
        ["foo(bar)", "Second"],
        ["return.\nThi"],
        ["absent", "nowhere"],
        [" t", "xyz"],
    ],
)
def test_stop_strings_match_the_decoded_text(
    vocab: Vocabulary, hf: Tokenizer, stops: list[str]
) -> None:
    ids = hf.encode(STOP_TEXT, add_special_tokens=False).ids
    assert stopped_at(vocab, ids, stops) == stop_reference(hf, ids, stops)


def test_stop_strings_on_random_token_streams(vocab: Vocabulary, hf: Tokenizer) -> None:
    """Multi-byte characters split across tokens, special tokens in between: same as decoding."""
    rng = np.random.default_rng(11)
    size = vocab.vocab_size
    checked = 0
    for trial in range(60):
        ids = [int(t) for t in rng.integers(0, size, 60)]
        ids[int(rng.integers(0, 60))] = EOS  # a special token adds no text
        text = decode(hf, ids)
        # A stop string taken from the decoded text itself (so it does occur), 1-6 characters.
        start = int(rng.integers(0, max(1, len(text) - 6)))
        stops = [text[start : start + int(rng.integers(1, 7))] or "x"]
        if "\ufffd" in stops[0]:
            # Decoding shows invalid bytes as U+FFFD; the decode loop matches a stop's own bytes
            # (EF BF BD), so such a stop ends the text at postprocess's cut (docs/api.md).
            got, ref = stopped_at(vocab, ids, stops), stop_reference(hf, ids, stops)
            assert got is None or (ref is not None and got >= ref), (trial, stops)
            continue
        checked += 1
        assert stopped_at(vocab, ids, stops) == stop_reference(hf, ids, stops), (trial, stops)
    assert checked >= 20  # the tiny tokenizer's random streams decode to many U+FFFD


def test_special_tokens_add_no_text(vocab: Vocabulary, hf: Tokenizer) -> None:
    ids = hf.encode("<|endoftext|>", add_special_tokens=False).ids
    assert ids == [EOS]
    assert (
        stopped_at(vocab, [*ids, *hf.encode(" end", add_special_tokens=False).ids], ["|"]) is None
    )


def test_compiler_builds_one_independent_row_per_choice(
    tokenizer_file: Path, hf: Tokenizer
) -> None:
    compiler = ConstraintCompiler(tokenizer_file.parent, hf.get_vocab_size(), (EOS,))
    assert compiler.build("", ()) is None
    rows = compiler.build(json.dumps({"kind": "choice", "spec": '["ab", "cd"]'}), ["zz"], n=3)
    assert rows is not None and len(rows) == 3
    first = hf.encode("ab", add_special_tokens=False).ids
    for token in first:
        rows[0].advance(token)
    # The other choices are still at the start: "cd" is open to them, not to the first.
    other = hf.encode("cd", add_special_tokens=False).ids[0]
    allowed0, allowed1 = rows[0].allowed(), rows[1].allowed()
    assert allowed0 is not None and allowed1 is not None
    assert allowed1[other] and not allowed0[other]
    stops = compiler.build("", ["\n"], n=2)
    assert stops is not None and len(stops) == 2 and all(r.allowed() is None for r in stops)


@pytest.mark.parametrize(
    ("guided", "message"),
    [
        ({"kind": "json_schema", "spec": '{"type": "integr"}'}, "Invalid type: integr"),
        ({"kind": "json_schema", "spec": '{"if": {}, "then": {}}'}, "Unimplemented keys"),
        ({"kind": "json_schema", "spec": "{not json"}, "not valid JSON"),
        ({"kind": "json_schema", "spec": "false"}, "no output can match"),
        ({"kind": "json_schema", "spec": '{"$ref": "#/$defs/gone"}'}, "does not exist"),
        ({"kind": "regex", "spec": "a(b"}, "unclosed group"),
        ({"kind": "regex", "spec": ""}, "regex is empty"),
        ({"kind": "choice", "spec": "[]"}, "non-empty list"),
        ({"kind": "choice", "spec": '["a", 1]'}, "non-empty string"),
        ({"kind": "grammar", "spec": "start: missing"}, "unknown name"),
        ({"kind": "xml", "spec": ""}, "unknown structured-output kind"),
    ],
)
def test_bad_specs_are_refused_naming_the_problem(
    tokenizer_file: Path, hf: Tokenizer, guided: dict[str, str], message: str
) -> None:
    compiler = ConstraintCompiler(tokenizer_file.parent, hf.get_vocab_size(), (EOS,))
    with pytest.raises(ConstraintError, match=re.escape(message)):
        compiler.build(json.dumps(guided), [])


def test_parse_guided_and_empty_stop() -> None:
    assert parse_guided("") is None
    assert parse_guided('{"kind": "regex", "spec": "a"}') == ("regex", "a")
    assert parse_guided('{"kind": "json_object"}') == ("json_object", "")
    for bad in ("[1]", '{"spec": "a"}', '{"kind": "regex", "spec": 3}', "nope"):
        with pytest.raises(ConstraintError):
            parse_guided(bad)


def test_empty_stop_string_is_refused(vocab: Vocabulary) -> None:
    with pytest.raises(ConstraintError, match="empty"):
        vocab.constraint(stop=["ok", ""])


def test_a_too_large_grammar_is_refused(tokenizer_file: Path, hf: Tokenizer) -> None:
    props = {f"f{i}": {"enum": [f"v{j}" for j in range(10)]} for i in range(20)}
    spec = json.dumps({"kind": "json_schema", "spec": json.dumps({"properties": props})})
    size = hf.get_vocab_size()
    assert ConstraintCompiler(tokenizer_file.parent, size, (EOS,)).build(spec, []) is not None
    small = ConstraintCompiler(tokenizer_file.parent, size, (EOS,), max_grammar_size=100)
    with pytest.raises(ConstraintError, match=r"grammar size .* too big"):
        small.build(spec, [])
    tight = ConstraintCompiler(tokenizer_file.parent, size, (EOS,), lexer_fuel=1000)
    with pytest.raises(ConstraintError, match="too big"):
        tight.build(spec, [])


def test_model_vocabulary_wider_than_the_tokenizer(tokenizer_file: Path, hf: Tokenizer) -> None:
    """Logits padded past the tokenizer's ids (common for GPU-friendly sizes): never allowed."""
    size = hf.get_vocab_size()
    wide = Vocabulary.from_file(tokenizer_file, size + 40, [EOS])
    row = wide.constraint(("json_object", ""), stop=["}"])
    assert row is not None
    allowed = row.allowed()
    assert allowed is not None and allowed.shape == (size + 40,)
    assert not allowed[size:].any() and allowed[:size].any()
    masks = fill_masks([row], size + 40)
    assert masks is not None and masks[1].shape == (1, size + 40)
    stops = wide.constraint(stop=["x"])
    assert stops is not None and stops.advance(size + 5) is None  # a padded id has no text
