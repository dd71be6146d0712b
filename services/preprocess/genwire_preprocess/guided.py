"""Structured output checked before anything reaches Triton: the grammar must compile.

A request's ``guided`` constraint (OpenAI ``response_format``, vLLM's ``guided_regex`` /
``guided_choice`` / ``guided_grammar``) is compiled here with llguidance against the model
version's own tokenizer, under the same bounds the model uses: a JSON schema with a keyword
llguidance cannot enforce, an invalid regex or grammar, or one too large to compile within the
limits is refused with an ``invalid_request`` error naming the field and the problem (HTTP 400,
gRPC INVALID_ARGUMENT, an error result over Kafka). The model compiles the same grammar again
(tools/genwire_model/runtime/constraints.py, which cannot import genwire): ``grammar_text``
here and there must stay equal, and a test compares them.
"""

from __future__ import annotations

import asyncio
import collections
import json
import re
import threading
from typing import TYPE_CHECKING, Any

import llguidance
from llguidance import LLMatcher

from genwire.errors import PermanentError
from genwire.events import Guided
from genwire.request import ErrorCode
from genwire.tokenization import ModelAssets

if TYPE_CHECKING:
    from llguidance._lib import JsonCompileOptions

KINDS = ("json_object", "json_schema", "regex", "choice", "grammar")

# Same options as the model's constraints.py: refuse what cannot be enforced, compact JSON.
JSON_OPTIONS: JsonCompileOptions = {
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

MAX_JSON_NESTING = 124
"""Deepest nesting of arrays and objects in a JSON spec (``json_schema``, ``choice``): the most
llguidance 1.9 accepts in a schema (serde_json's recursion limit, less its own wrapping). Checked
before the spec is parsed: deeper, Python's parser would fail with RecursionError."""

_JSON_TOKENS = re.compile(r'\\.|["\[\]{}]', re.DOTALL)
"""What nesting depends on: an escape (skipped: ``\\"`` does not end a string), a quote,
a bracket. One left-to-right pass, no backtracking whatever the text."""

PARAM = "guided"
"""The ``param`` of the error: the request's field (the HTTP gateway names the field its caller
sent instead: ``response_format``, ``guided_json``, ``guided_regex``...)."""


class GuidedError(ValueError):
    """A constraint that cannot be enforced; the message names the problem."""


def grammar_text(kind: str, spec: str) -> str:
    """The llguidance grammar of a constraint (as the model's constraints.py builds it)."""
    if kind == "json_object":
        if spec.strip():  # honoured or refused: a schema here would otherwise be dropped
            raise GuidedError(
                "kind json_object takes no spec (it allows any JSON object); "
                "send a schema with kind json_schema"
            )
        return str(LLMatcher.grammar_from_json_schema(ANY_JSON_OBJECT, overrides=JSON_OPTIONS))
    if kind == "json_schema":
        _check_nesting(spec, "the JSON schema")
        try:
            schema = json.loads(spec)
        except json.JSONDecodeError as exc:
            raise GuidedError(f"the JSON schema is not valid JSON: {exc}") from None
        if schema is True:
            schema = {}  # any JSON value
        if schema is False:
            raise GuidedError("the JSON schema is false: no output can match it")
        if not isinstance(schema, dict):
            raise GuidedError(
                f"a JSON schema is an object (or true/false), got {type(schema).__name__}"
            )
        try:
            return str(LLMatcher.grammar_from_json_schema(schema, overrides=JSON_OPTIONS))
        except (ValueError, TypeError) as exc:
            raise GuidedError(f"the JSON schema cannot be used: {exc}") from None
    if kind == "regex":
        if not spec:
            raise GuidedError("the regex is empty")
        return str(LLMatcher.grammar_from_regex(spec))
    if kind == "choice":
        _check_nesting(spec, "the choice list")
        try:
            choices = json.loads(spec)
        except json.JSONDecodeError as exc:
            raise GuidedError(f"the choices are not a JSON list: {exc}") from None
        if not isinstance(choices, list) or not choices:
            raise GuidedError("the choices must be a non-empty list of strings")
        if not all(isinstance(c, str) and c for c in choices):
            raise GuidedError("every choice must be a non-empty string")
        return str(
            LLMatcher.grammar_from_lark("start: " + " | ".join(json.dumps(c) for c in choices))
        )
    if kind == "grammar":
        if not spec.strip():
            raise GuidedError("the grammar is empty")
        try:
            return str(llguidance.grammar_from("grammar", spec))
        except ValueError as exc:  # GBNF that does not convert to Lark
            raise GuidedError(str(exc)) from None
    raise GuidedError(f"unknown structured-output kind {kind!r}: one of {', '.join(KINDS)}")


def json_nesting(text: str, limit: int) -> int:
    """How deep arrays and objects nest in JSON ``text`` (brackets in strings do not count),
    without parsing it; counting stops past ``limit``. Exact for any valid prefix of JSON, so a
    parser never goes deeper than this before it fails."""
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


def _check_nesting(spec: str, what: str) -> None:
    if spec.count("[") + spec.count("{") <= MAX_JSON_NESTING:
        return  # too few brackets to nest that deep (most specs): no scan
    if json_nesting(spec, MAX_JSON_NESTING) > MAX_JSON_NESTING:
        raise GuidedError(
            f"{what} nests arrays and objects more than {MAX_JSON_NESTING} levels deep (the limit)"
        )


class GuidedChecker:
    """Compiles each request's constraint against its model version's tokenizer."""

    def __init__(
        self,
        max_grammar_size: int = MAX_GRAMMAR_SIZE,
        lexer_fuel: int = LEXER_FUEL,
        tokenizers: int = 8,
        passed: int = 256,
    ) -> None:
        self.limits = llguidance.LLParserLimits(
            max_grammar_size=max_grammar_size,
            initial_lexer_fuel=lexer_fuel,
            verbose_errors=False,  # the message goes to the caller: no parser internals
        )
        self._tokenizers: collections.OrderedDict[tuple[str, str], Any] = collections.OrderedDict()
        self._max_tokenizers = tokenizers
        self._passed: collections.OrderedDict[tuple[str, str, str, str], None] = (
            collections.OrderedDict()
        )
        """Constraints that compiled (per model version), most recent last: not compiled again."""
        self._max_passed = passed
        self._lock = threading.Lock()

    def tokenizer(self, assets: ModelAssets) -> Any:
        """llguidance's view of a model version's tokenizer (built once, ~0.1 s)."""
        key = (assets.name, assets.version)
        with self._lock:
            found = self._tokenizers.get(key)
            if found is not None:
                self._tokenizers.move_to_end(key)
                return found
        built = llguidance.LLTokenizer(
            assets.tokenizer.to_str(), eos_token=list(assets.eos_token_ids) or None
        )
        with self._lock:
            self._tokenizers[key] = built
            while len(self._tokenizers) > self._max_tokenizers:
                self._tokenizers.popitem(last=False)
        return built

    def check_sync(self, guided: Guided | None, assets: ModelAssets) -> None:
        """Raise ``PermanentError`` (invalid_request, naming the field) if it cannot compile."""
        if guided is None or self._known(guided, assets):
            return
        try:
            grammar = grammar_text(guided.kind, guided.spec)
            matcher = LLMatcher(self.tokenizer(assets), grammar, log_level=0, limits=self.limits)
            if matcher.is_error():
                raise GuidedError(f"the {guided.kind} cannot be compiled: {matcher.get_error()}")
        except GuidedError as exc:
            raise PermanentError(
                f"{PARAM} ({guided.kind}): {exc}", code=ErrorCode.INVALID_REQUEST, param=PARAM
            ) from None
        with self._lock:
            self._passed[(assets.name, assets.version, guided.kind, guided.spec)] = None
            while len(self._passed) > self._max_passed:
                self._passed.popitem(last=False)

    def _known(self, guided: Guided, assets: ModelAssets) -> bool:
        """Whether this constraint already compiled for this model version (refreshes it)."""
        key = (assets.name, assets.version, guided.kind, guided.spec)
        with self._lock:
            if key in self._passed:
                self._passed.move_to_end(key)
                return True
        return False

    async def check(self, guided: Guided | None, assets: ModelAssets) -> None:
        """``check_sync`` off the event loop (a large schema compiles in tens of ms)."""
        if guided is None or self._known(guided, assets):
            return  # the same schema again (the usual case): no compile, no thread hop
        await asyncio.to_thread(self.check_sync, guided, assets)
