"""A refused value too large to parse again (over ``HINT_PARSE_BYTES``) still says its own
``stream`` and ``n``: read from its top-level keys only, as ``json.loads`` would (the last of
duplicates wins; a key spelled with escapes is the same key). A nested ``"n"`` (a
``response_format`` schema) or ``"stream"`` (``metadata``) is not the request's: taking it
sent extra or missing final token events to the caller."""

from __future__ import annotations

import json
import random
import tracemalloc

import pytest
from genwire_preprocess import handlers
from genwire_preprocess.handlers import HINT_PARSE_BYTES, error_chunk
from genwire_preprocess.hints import SCANS, scan_stream_n

from genwire.errors import PermanentError
from genwire.events import GenerationChunk
from genwire.request import MAX_N, ErrorCode

pytestmark = pytest.mark.skipif(
    not SCANS,
    reason="this Python's re matches possessive quantifiers wrongly (before 3.11.5, gh-106052): "
    "oversize values get the fallback (test_refusal_hints_fallback.py)",
)

ERR = PermanentError("too large", code=ErrorCode.REQUEST_TOO_LARGE)
PAD = "x" * (HINT_PARSE_BYTES + 16)


def _chunk(raw: bytes) -> GenerationChunk:
    (chunk,) = error_chunk(raw, b"big", ERR)
    return chunk


def _choices(chunk: GenerationChunk) -> int:
    return len(chunk.choices or [None])


def _big(**fields: object) -> bytes:
    """An oversize request: ``fields`` after a prompt padded past ``HINT_PARSE_BYTES``."""
    raw = json.dumps({"prompt": PAD, **fields}).encode()
    assert len(raw) > HINT_PARSE_BYTES
    return raw


SCHEMA = {
    "type": "json_schema",
    "json_schema": {
        "name": "pick",
        "schema": {"type": "object", "properties": {"n": 5, "stream": True}},
    },
}


@pytest.mark.parametrize(
    ("fields", "n"),
    [
        ({"response_format": SCHEMA}, 1),
        ({"response_format": SCHEMA, "stream": True}, 1),
        ({"n": 2, "response_format": SCHEMA, "stream": True}, 2),
        ({"stream": True, "response_format": SCHEMA, "n": 3}, 3),
        ({"stream": True, "logit_bias": {"n": 4}, "stop": [{"n": 6}]}, 1),
    ],
)
def test_a_nested_n_is_not_the_requests(fields: dict[str, object], n: int) -> None:
    chunk = _chunk(_big(**fields))
    assert _choices(chunk) == n
    assert chunk.stream is (fields.get("stream") is True)


@pytest.mark.parametrize(
    ("fields", "stream"),
    [
        ({"metadata": {"stream": True}}, False),
        ({"stream": False, "metadata": {"stream": True}}, False),
        ({"metadata": {"stream": True}, "stream": False}, False),
        ({"metadata": {"stream": False}, "stream": True}, True),
        ({"stream": True, "metadata": {"a": [{"stream": False}]}}, True),
    ],
)
def test_a_nested_stream_is_not_the_requests(fields: dict[str, object], stream: bool) -> None:
    chunk = _chunk(_big(**fields))
    assert chunk.stream is stream and chunk.choices is None


@pytest.mark.parametrize(
    ("tail", "stream", "n"),
    [
        (b'"stream": true, "n": 3, "stream": false, "n": 2', False, 2),
        (b'"stream": false, "n": 2, "stream": true, "n": 4', True, 4),
        (b'"n": 5, "n": "5"', False, 1),  # the last is no integer: n is 1
        (b'"stream": true, "stream": 1', False, 1),  # only a literal true streams
    ],
)
def test_the_last_top_level_duplicate_wins(tail: bytes, stream: bool, n: int) -> None:
    for pad in ("x", PAD):  # parsed (small) or scanned (oversize): the same answer
        raw = b'{"prompt": "' + pad.encode() + b'", ' + tail + b"}"
        chunk = _chunk(raw)
        assert (chunk.stream, _choices(chunk)) == (stream, n), len(raw)


@pytest.mark.parametrize(
    "prompt",
    [
        PAD + ' "n": 7, "stream": true',
        PAD + ' {"n": 7}, "n": 7, ',
        PAD + '\\", "n": 7, "stream": true, "x": "',  # an escaped quote ends no string
        PAD + "\\",  # a string ending in a backslash (escaped): the next key is real
    ],
)
def test_a_prompt_cannot_fake_a_key(prompt: str) -> None:
    raw = json.dumps({"prompt": prompt, "stream": False, "n": 2}).encode()
    chunk = _chunk(raw)
    assert chunk.stream is False and _choices(chunk) == 2


def test_a_key_spelled_with_escapes_is_the_same_key() -> None:
    """``"\\u006e"`` is ``"n"`` to a JSON parser (and to the request's own parse)."""
    tail = b'"\\u0073tream": true, "\\u006e": 3, "\\u006E\\u0000": 9, "\\"n": 8'
    for pad in ("x", PAD):
        raw = b'{"prompt": "' + pad.encode() + b'", ' + tail + b"}"
        chunk = _chunk(raw)
        assert chunk.stream is True and _choices(chunk) == 3, len(raw)


@pytest.mark.parametrize(
    ("raw", "stream", "n"),
    [
        # cut inside the prompt: the pairs before the cut count
        (b'{"stream": true, "n": 3, "prompt": "' + PAD.encode(), True, 3),
        # cut inside a nested value: its nested n is no key of the request
        (b'{"n": 2, "prompt": "' + PAD.encode() + b'", "response_format": {"n": 5, "x', False, 2),
        # a pair cut off (n might have been 16) does not count
        (b'{"stream": true, "prompt": "' + PAD.encode() + b'", "n": 1', True, 1),
        (b'{"stream": true, "prompt": "' + PAD.encode() + b"\\", True, 1),
        # not an object: no keys at all
        (b'[{"stream": true, "n": 3}, "' + PAD.encode() + b'"]', False, 1),
        (b'"' + PAD.encode() + b'", {"stream": true, "n": 3}', False, 1),
        (b"\xff" * (HINT_PARSE_BYTES + 1) + b'{"stream": true, "n": 3}', False, 1),
        # malformed after a good pair: the scan stops at the fault
        (b'{"stream": true, "prompt": "' + PAD.encode() + b'"] "n": 3}', True, 1),
        (b'{"stream": true, "prompt": "' + PAD.encode() + b'" "n": 3}', True, 1),
        (b'{"n": 3, "a": 1 2, "prompt": "' + PAD.encode() + b'", "n": 4}', False, 3),
        (b'{"n": 3, "a": ' + b"[" * (HINT_PARSE_BYTES + 1), False, 3),
        # the object's end: what follows is none of its keys
        (b'{"n": 3, "prompt": "' + PAD.encode() + b'"} {"n": 4, "stream": true}', False, 3),
    ],
)
def test_a_truncated_or_malformed_value_never_raises(raw: bytes, stream: bool, n: int) -> None:
    """What the complete top-level pairs before the fault said, else the defaults."""
    assert len(raw) > HINT_PARSE_BYTES
    chunk = _chunk(raw)
    assert (chunk.stream, _choices(chunk)) == (stream, n)


@pytest.mark.parametrize(
    "n", [1.5, "3", True, None, [2], {"n": 2}, 2.0, 1e1, -3, 0, MAX_N + 1, 10**30]
)
def test_a_top_level_n_that_is_no_valid_integer_is_1(n: object) -> None:
    chunk = _chunk(_big(stream=True, n=n))
    assert chunk.stream is True and chunk.choices is None


def test_large_values_are_scanned() -> None:
    """10 MiB as one string, as many nested objects, and nested past any budget. A scan that
    backtracked exponentially would not end: the suite's timeout catches it (no timed
    assertion here; the figures are in the commit that brought the scan)."""
    mib = 10 << 20
    message = {"role": "user", "content": "hi {[", "x": {"n": 5, "stream": True, "y": [[{}]]}}
    deep: dict[str, object] = {"n": 9}
    for _ in range(12):
        deep = {"type": "object", "properties": {"n": deep, "stream": True}}
    cases: list[tuple[bytes, bool, int]] = [
        (json.dumps({"prompt": "y" * mib, "stream": True, "n": 2}).encode(), True, 2),
        (
            json.dumps(
                {
                    "stream": True,
                    "messages": [message] * (mib // len(json.dumps(message))),
                    "response_format": {"json_schema": {"schema": deep}},
                    "n": 3,
                }
            ).encode(),
            True,
            3,
        ),
        (b'{"n": 4, "a": ' + b'{"a": ' * (mib // 6) + b"1" + b"}" * (mib // 6) + b"}", False, 4),
        # Deep items by the ten thousand (a review's case: they used up the step budget)
        (b'{"p":"x","a":[' + b"[[[[[[[[0]]]]]]]]," * 70_000 + b'0],"stream":true,"n":2}', True, 2),
        # An array nested eight deep before the keys
        (b'{"a":[[[[[[[[]]]]]]]],"stream":true,' + b" " * mib + b'"n":5}', True, 5),
    ]
    for raw, stream, n in cases:
        chunk = _chunk(raw)
        assert (chunk.stream, _choices(chunk)) == (stream, n)


_KEYS = ["n", "stream", "a", "N", "n ", "streams", "\\u006e", "\\u0073tream", '\\"n', "n\\\\"]
_STRINGS = ["", "x", '\\"n\\": 7, ', "{[", "]}", "\\\\", "\\u00e9\\n", '\\"stream\\": true}']


def _text(rng: random.Random, depth: int) -> str:
    """Random JSON text: duplicate and escaped keys, brackets and fake keys in strings."""
    ws = rng.choice(["", " ", "\n\t "])
    kind = rng.randrange(7 if depth < 9 else 4)
    if kind == 0:
        return rng.choice(["true", "false", "null"])
    if kind == 1:
        return rng.choice(["0", "2", "-1", "16", "17", "3.0", "1e1", "123456789012"])
    if kind in (2, 3):
        return '"' + rng.choice(_STRINGS) + '"'
    if kind == 4:
        return "[" + ws + ("," + ws).join(_text(rng, depth + 1) for _ in range(3)) + "]"
    return _object(rng, depth + 1, ws)


def _object(rng: random.Random, depth: int, ws: str = " ") -> str:
    pairs = []
    for _ in range(rng.randrange(8 if depth == 0 else 5)):
        key = rng.choice(_KEYS)
        likely = {"n": ["2", "16"], "\\u006e": ["3"], "stream": ["true"]}.get(key)
        value = rng.choice(likely) if likely and rng.random() < 0.5 else _text(rng, depth)
        pairs.append(f'"{key}"{ws}:{ws}{value}')
    return "{" + ws + ("," + ws).join(pairs) + ws + "}"


def test_the_scan_reads_what_json_loads_reads(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every value scanned (no parse) gives the parse's ``stream`` and ``n``."""
    monkeypatch.setattr(handlers, "HINT_PARSE_BYTES", 0)
    rng = random.Random(7)
    for _ in range(400):
        raw = _object(rng, 0).encode()
        data = json.loads(raw)
        n = data.get("n", 1)
        valid = isinstance(n, int) and not isinstance(n, bool) and 1 <= n <= MAX_N
        assert handlers._hints(raw) == (data.get("stream") is True, "", n if valid else 1), raw


def test_a_flat_array_of_short_items_is_scanned_in_little_memory() -> None:
    """Atomic groups (the other way to write the scan) kept state for every repeat: about 80
    bytes a byte of such a value, 1.3 GB for 16 MiB, which would get preprocess killed."""
    raw = b'{"stream":true,"a":[' + b'"",' * ((4 << 20) // 3) + b'0],"n":3}'
    tracemalloc.start()
    try:
        assert scan_stream_n(raw) == (True, 3)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < len(raw) // 4, peak
