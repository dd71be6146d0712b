"""Per-request constraints of the decode loop: structured output and stop strings.

A :class:`RowConstraint` follows one generated sequence (one choice of a request). Before each
sampling step it says which tokens are allowed (:meth:`RowConstraint.fill_mask`, or
:func:`fill_masks` for a whole batch at once); after it, :meth:`RowConstraint.advance` takes the
sampled token and says whether the sequence ended (``"stop"``) or goes on (``None``).

- **Structured output** (``json_object``, ``json_schema``, ``regex``, ``choice``, ``grammar``) is
  enforced with llguidance: its matcher computes the allowed-token bitmask from the grammar's
  state and the tokenizer's token trie (an Earley parser over a lazily built lexer: no per-grammar
  precompilation of the whole vocabulary). The sequence ends as soon as the grammar is complete
  and allows nothing more, so no end-of-sequence token has to be sampled.
- **Stop strings** are matched on the bytes of the generated text (each token's bytes, special
  tokens contributing nothing, as the text postprocess decodes with ``skip_special_tokens``), so
  the sequence ends on the token that completes a stop string: the model does not compute past it
  and usage counts exactly the tokens generated. The token that completed the stop string is part
  of the output; postprocess cuts the text at the stop string as before (the stop string itself
  is never returned).

Only numpy and llguidance here (the module runs in Triton's Python stub): no genwire imports.
"""

from __future__ import annotations

import collections
import json
import os
import re
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

Array = npt.NDArray[Any]

KINDS = ("json_object", "json_schema", "regex", "choice", "grammar")
FINISH_STOP = "stop"

# The JSON compiler refuses keywords it cannot enforce instead of ignoring them (``lenient``
# off): a schema is honoured exactly or refused with the keyword named. JSON is written with
# Python's ``json.dumps`` separators and no other whitespace: free whitespace lets a small model
# spend its whole budget on blank lines inside an object that never closes.
JSON_OPTIONS: dict[str, Any] = {
    "lenient": False,
    "whitespace_flexible": False,
    "item_separator": ", ",
    "key_separator": ": ",
}
ANY_JSON_OBJECT = {"type": "object"}
MAX_GRAMMAR_SIZE = 200_000
"""Most symbols a compiled grammar may have (llguidance ``max_grammar_size``)."""
LEXER_FUEL = 1_000_000
"""Most work building a grammar's lexer (llguidance ``initial_lexer_fuel``, ~20 ms of it)."""
# Threads computing a batch's masks: the decode loop shares the cores with the model.
MASK_THREADS = max(1, min(4, os.cpu_count() or 1))

MAX_JSON_NESTING = 124
"""Deepest nesting of arrays and objects in a JSON spec (``json_schema``, ``choice``) and in the
``guided`` record itself, as preprocess's ``guided.MAX_JSON_NESTING`` (a test holds them equal):
the most llguidance accepts in a schema. Checked before the text is parsed: deeper, Python's
parser fails with RecursionError, not a refusal."""

_JSON_TOKENS = re.compile(r'\\.|["\[\]{}]', re.DOTALL)
"""What nesting depends on: an escape (skipped), a quote, a bracket (as preprocess's)."""


class ConstraintError(ValueError):
    """A constraint that cannot be enforced; the message names the problem."""


def _import_llguidance() -> Any:
    try:
        import llguidance
    except ImportError as exc:  # pragma: no cover - the model extra installs it
        raise ConstraintError(
            "structured output needs the llguidance package, which is not installed"
        ) from exc
    return llguidance


def json_nesting(text: str, limit: int) -> int:
    """How deep arrays and objects nest in JSON ``text`` (brackets in strings do not count),
    without parsing it; counting stops past ``limit`` (preprocess's ``guided.json_nesting``)."""
    depth = deepest = 0
    in_string = False
    for match in _JSON_TOKENS.finditer(text):
        token = match.group()
        if token == '"':
            in_string = not in_string
        elif in_string or token[0] == "\\":
            continue
        elif token in "[{":
            depth += 1
            deepest = max(deepest, depth)
            if deepest > limit:
                break
        else:
            depth -= 1
    return deepest


def _check_nesting(text: str, what: str) -> None:
    """Refuse JSON nested deeper than ``MAX_JSON_NESTING`` (the message as preprocess's)."""
    if text.count("[") + text.count("{") <= MAX_JSON_NESTING:
        return  # too few brackets to nest that deep (most specs): no scan
    if json_nesting(text, MAX_JSON_NESTING) > MAX_JSON_NESTING:
        raise ConstraintError(
            f"{what} nests arrays and objects more than {MAX_JSON_NESTING} levels deep (the limit)"
        )


def grammar_text(kind: str, spec: str) -> str:
    """The llguidance grammar of a structured-output request (not yet checked).

    ``spec`` is the JSON schema text (``json_schema``), a regular expression (``regex``), a JSON
    list of strings (``choice``), a Lark or GBNF grammar (``grammar``), or empty (``json_object``).
    Raises :class:`ConstraintError` when ``spec`` is not even of the right shape.
    """
    llguidance = _import_llguidance()
    matcher = llguidance.LLMatcher
    if kind == "json_object":
        if spec.strip():  # honoured or refused: a schema here would otherwise be dropped
            raise ConstraintError(
                "kind json_object takes no spec (it allows any JSON object); "
                "send a schema with kind json_schema"
            )
        return str(matcher.grammar_from_json_schema(ANY_JSON_OBJECT, overrides=JSON_OPTIONS))
    if kind == "json_schema":
        _check_nesting(spec, "the JSON schema")
        try:
            schema = json.loads(spec)
        except json.JSONDecodeError as exc:
            raise ConstraintError(f"the JSON schema is not valid JSON: {exc}") from None
        if schema is True:
            schema = {}  # any JSON value
        if schema is False:
            raise ConstraintError("the JSON schema is false: no output can match it")
        if not isinstance(schema, dict):
            raise ConstraintError(
                f"a JSON schema is an object (or true/false), got {type(schema).__name__}"
            )
        try:
            return str(matcher.grammar_from_json_schema(schema, overrides=JSON_OPTIONS))
        except (ValueError, TypeError) as exc:
            raise ConstraintError(f"the JSON schema cannot be used: {exc}") from None
    if kind == "regex":
        if not spec:
            raise ConstraintError("the regex is empty")
        return str(matcher.grammar_from_regex(spec))
    if kind == "choice":
        _check_nesting(spec, "the choice list")
        try:
            choices = json.loads(spec)
        except json.JSONDecodeError as exc:
            raise ConstraintError(f"the choices are not a JSON list: {exc}") from None
        if not isinstance(choices, list) or not choices:
            raise ConstraintError("the choices must be a non-empty list of strings")
        if not all(isinstance(c, str) and c for c in choices):
            raise ConstraintError("every choice must be a non-empty string")
        # A Lark alternative of string literals (JSON string syntax is Lark's literal syntax).
        return str(
            matcher.grammar_from_lark("start: " + " | ".join(json.dumps(c) for c in choices))
        )
    if kind == "grammar":
        if not spec.strip():
            raise ConstraintError("the grammar is empty")
        from llguidance import grammar_from

        try:
            return str(grammar_from("grammar", spec))
        except ValueError as exc:  # GBNF that does not convert to Lark
            raise ConstraintError(str(exc)) from None
    raise ConstraintError(f"unknown structured-output kind {kind!r}: one of {', '.join(KINDS)}")


def parser_limits(
    max_grammar_size: int = MAX_GRAMMAR_SIZE, initial_lexer_fuel: int = LEXER_FUEL
) -> Any:
    """Bounds on compiling a grammar (symbols, lexer work): a huge schema fails, not hangs."""
    llguidance = _import_llguidance()
    return llguidance.LLParserLimits(
        max_grammar_size=max_grammar_size,
        initial_lexer_fuel=initial_lexer_fuel,
        verbose_errors=False,  # errors reach callers: no parser internals in them
    )


class Vocabulary:
    """A model's tokenizer as the constraints see it: llguidance's, and each token's bytes."""

    def __init__(
        self,
        tokenizer_json: str,
        vocab_size: int,
        eos_ids: Sequence[int],
        max_grammar_size: int = MAX_GRAMMAR_SIZE,
        lexer_fuel: int = LEXER_FUEL,
    ) -> None:
        llguidance = _import_llguidance()
        self.vocab_size = int(vocab_size)
        """The model's vocabulary: the width of its logits and of every mask."""
        self.eos_ids = frozenset(int(t) for t in eos_ids)
        self.tokenizer = llguidance.LLTokenizer(
            tokenizer_json, eos_token=sorted(self.eos_ids) or None
        )
        self.tokenizer_size = int(self.tokenizer.vocab_size)
        """llguidance's vocabulary (its masks' width); ids beyond either size are never allowed."""
        table: list[bytes] = []
        for token in range(min(self.vocab_size, self.tokenizer_size)):
            # Special tokens are skipped when postprocess decodes the text, so they add nothing.
            if self.tokenizer.is_special_token(token):
                table.append(b"")
            else:
                table.append(bytes(self.tokenizer.decode_bytes([token])))
        self.token_bytes = table
        self.limits = parser_limits(max_grammar_size, lexer_fuel)
        self._executor: Any = None
        self._templates: collections.OrderedDict[tuple[str, str], Any] = collections.OrderedDict()
        self._lock = threading.Lock()

    @classmethod
    def from_file(
        cls, path: Path, vocab_size: int, eos_ids: Sequence[int], **limits: int
    ) -> Vocabulary:
        """From a Hugging Face ``tokenizer.json`` (what every model version carries)."""
        return cls(Path(path).read_text(encoding="utf-8"), vocab_size, eos_ids, **limits)

    @property
    def executor(self) -> Any:
        """llguidance's thread pool computing a batch's masks in parallel (made on first use)."""
        if self._executor is None:
            self._executor = _import_llguidance().LLExecutor(num_threads=MASK_THREADS)
        return self._executor

    def matcher(self, kind: str, spec: str, cache: int = 64) -> Any:
        """A fresh matcher for a grammar; compiled grammars are kept (LRU) and copied."""
        key = (kind, spec)
        with self._lock:
            template = self._templates.get(key)
            if template is not None:
                self._templates.move_to_end(key)
        if template is None:
            llguidance = _import_llguidance()
            template = llguidance.LLMatcher(
                self.tokenizer, grammar_text(kind, spec), log_level=0, limits=self.limits
            )
            if template.is_error():
                raise ConstraintError(f"the {kind} cannot be compiled: {template.get_error()}")
            with self._lock:
                self._templates[key] = template
                while len(self._templates) > cache:
                    self._templates.popitem(last=False)
        return template.deep_copy()

    def constraint(
        self, guided: tuple[str, str] | None = None, stop: Sequence[str] = ()
    ) -> RowConstraint | None:
        """The constraint of one sequence, or None when it has neither grammar nor stop strings.

        Raises :class:`ConstraintError` for a grammar that cannot be compiled or an empty stop
        string. Call it off the decode loop (compiling a large schema can take milliseconds).
        """
        if guided is None and not stop:
            return None
        if any(not s for s in stop):
            raise ConstraintError("a stop string is empty")
        matcher = self.matcher(*guided) if guided is not None else None
        return RowConstraint(self, matcher, [s.encode("utf-8") for s in stop])


class RowConstraint:
    """What one sequence may generate next, and whether its last token ended it."""

    __slots__ = ("_tail", "generated", "matcher", "min_tokens", "stops", "vocab", "window")

    def __init__(self, vocab: Vocabulary, matcher: Any | None, stops: list[bytes]) -> None:
        self.vocab = vocab
        self.matcher = matcher
        self.stops = stops
        # Bytes kept of the text so far: a stop string completed by the next token starts at
        # most len(stop) - 1 bytes before that token's bytes.
        self.window = max((len(s) for s in stops), default=1) - 1
        self._tail = b""
        self.generated = 0
        # Stop strings count from this many tokens on (the request's min_tokens, set by the
        # decode loop): one completed earlier does not end the sequence (as vLLM).
        self.min_tokens = 0

    @property
    def guided(self) -> bool:
        """Whether a grammar restricts the tokens (a mask is needed before every sample)."""
        return self.matcher is not None

    def copy(self) -> RowConstraint:
        """An independent constraint in the same state (one per choice of ``n``)."""
        twin = RowConstraint(
            self.vocab, self.matcher.deep_copy() if self.matcher is not None else None, self.stops
        )
        twin._tail, twin.generated = self._tail, self.generated
        twin.min_tokens = self.min_tokens
        return twin

    def fill_mask(self, out: Array) -> None:
        """Write the allowed tokens into ``out``, a bool [vocab] row (True = allowed)."""
        if self.matcher is None:
            out[:] = True
            return
        words = np.empty(_mask_words(self.vocab.tokenizer_size), np.int32)
        self.matcher.unsafe_compute_mask_ptr(words.ctypes.data, words.nbytes)
        out[:] = _unpack(words[None, :], self.vocab.vocab_size)[0]

    def allowed(self) -> Array | None:
        """The allowed tokens as a bool [vocab] array, or None when every token is allowed."""
        if self.matcher is None:
            return None
        out = np.empty(self.vocab.vocab_size, np.bool_)
        self.fill_mask(out)
        return out

    def advance(self, token: int) -> str | None:
        """Take the sampled token: ``"stop"`` when it ended the sequence, else None.

        It ends the sequence when it completes a stop string, when the grammar is complete and
        allows nothing more, or when it is an end-of-sequence token the grammar accepts there.
        Raises :class:`ConstraintError` for a token the grammar does not allow (the mask was not
        applied); the sequence cannot go on.
        """
        self.generated += 1
        if self.matcher is not None:
            if token in self.vocab.eos_ids and self.matcher.is_accepting():
                return FINISH_STOP
            if not self.matcher.consume_token(token):
                raise ConstraintError(
                    f"token {token} is not allowed by the grammar here: "
                    f"{self.matcher.get_error() or 'rejected'}"
                )
        if self.stops:
            table = self.vocab.token_bytes
            new = table[token] if 0 <= token < len(table) else b""
            if new:
                text = self._tail + new
                tail = len(self._tail)
                self._tail = text[-self.window :] if self.window else b""
                if self.generated >= self.min_tokens:
                    for stop in self.stops:
                        # Only a match that ends inside the new bytes is new.
                        if stop in text[max(0, tail - len(stop) + 1) :]:
                            return FINISH_STOP
        if self.matcher is not None and self.matcher.is_stopped():
            return FINISH_STOP
        return None


def _mask_words(vocab_size: int) -> int:
    return (vocab_size + 31) // 32


def _unpack(words: Array, vocab_size: int) -> Array:
    """int32 bitmask words [B, W] (bit i of word j = token 32 j + i) → bool [B, vocab_size]
    (tokens past the words' width: not allowed)."""
    bits = np.unpackbits(words.view(np.uint8), axis=1, bitorder="little")
    if bits.shape[1] < vocab_size:
        bits = np.pad(bits, ((0, 0), (0, vocab_size - bits.shape[1])))
    return bits[:, :vocab_size].astype(np.bool_)


def fill_masks(
    constraints: Sequence[RowConstraint | None], vocab_size: int
) -> tuple[Array, Array] | None:
    """The allowed tokens of a batch's guided rows, computed in parallel.

    Returns ``(rows, allowed)``: the indexes of the rows with a grammar and their bool
    [len(rows), vocab_size] masks, or None when no row has a grammar (nothing to mask).
    """
    rows = [i for i, c in enumerate(constraints) if c is not None and c.matcher is not None]
    if not rows:
        return None
    first = constraints[rows[0]]
    assert first is not None
    words = np.empty((len(rows), _mask_words(first.vocab.tokenizer_size)), np.int32)
    jobs = []
    for slot, row in enumerate(rows):
        constraint = constraints[row]
        assert constraint is not None
        jobs.append((constraint.matcher, slot))
    first.vocab.executor.unsafe_compute_mask_ptr(
        jobs, words.ctypes.data, words.shape[1] * 4, len(rows)
    )
    return np.asarray(rows, np.int64), _unpack(words, vocab_size)


def apply_masks(logits: Array, masks: tuple[Array, Array] | None) -> None:
    """Set the disallowed tokens' logits of the masked rows to -inf, in place."""
    if masks is None:
        return
    rows, allowed = masks
    width = logits.shape[1]
    block = logits[rows]
    block[~allowed[:, :width]] = -np.inf
    logits[rows] = block


class ConstraintCompiler:
    """Builds the constraints of a model version's requests (the decode loop's hook).

    Made once per model instance from the version folder's ``tokenizer.json``; ``build`` runs in
    Triton's ``execute`` thread, so compiling a grammar never stalls the batch.
    """

    def __init__(
        self, version_dir: Path, vocab_size: int, eos_ids: Sequence[int], **limits: int
    ) -> None:
        self.vocab = Vocabulary.from_file(
            Path(version_dir) / "tokenizer.json", vocab_size, eos_ids, **limits
        )

    def build(self, guided: str, stop: Sequence[str], n: int = 1) -> list[RowConstraint] | None:
        """One independent constraint per choice, or None when there is nothing to enforce.

        ``guided`` is "" or the JSON of a ``Guided`` event field (``{"kind": ..., "spec": ...}``).
        Raises :class:`ConstraintError` (a ValueError) naming the problem of a bad spec.
        """
        spec = parse_guided(guided)
        first = self.vocab.constraint(spec, tuple(stop))
        if first is None:
            return None
        return [first] + [first.copy() for _ in range(max(1, n) - 1)]


def parse_guided(guided: str) -> tuple[str, str] | None:
    """``(kind, spec)`` of the JSON of a ``Guided`` (see genwire.events), None for ""."""
    if not guided:
        return None
    _check_nesting(guided, "guided")
    try:
        record = json.loads(guided)
    except json.JSONDecodeError as exc:
        raise ConstraintError(f"guided is not JSON: {exc}") from None
    if not isinstance(record, dict) or not isinstance(record.get("kind"), str):
        raise ConstraintError('guided must be a JSON object {"kind": ..., "spec": ...}')
    spec = record.get("spec", "")
    if not isinstance(spec, str):
        raise ConstraintError("guided.spec must be a string")
    if record["kind"] not in KINDS:
        raise ConstraintError(
            f"unknown structured-output kind {record['kind']!r}: one of {', '.join(KINDS)}"
        )
    return record["kind"], spec
