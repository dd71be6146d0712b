"""The fuzz scenario's cases: what Hypothesis draws, and the record each becomes.

Cases are request-schema-shaped JSON with wrong types, out-of-range values and unknown fields,
and raw values (invalid UTF-8, not JSON, empty, null, larger than preprocess accepts), each with
its key present (a valid id, an invalid one, invalid UTF-8, empty) or absent. A case knows under
which request id its answer must come back, if any (:mod:`genwire_chaos.fuzz` runs them).
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass, field
from typing import Any

from hypothesis import HealthCheck, Phase, given, seed, settings
from hypothesis import strategies as st

from genwire.events import REQUEST_ID_PATTERN

CASE_HEADER = "genwire_chaos_case"
HUGE_SIZES = (1024 * 1024 + 1, 1536 * 1024, 2 * 1024 * 1024)
"""Values past preprocess's default limit (1 MiB), but under the broker's (16 MiB)."""
FIELDS = (
    "schema_version",
    "request_id",
    "model",
    "model_version",
    "prompt",
    "messages",
    "max_tokens",
    "temperature",
    "top_p",
    "top_k",
    "seed",
    "stop",
    "stream",
    "metadata",
    "deadline_ms",
    "received_ms",
)
ID_MODES = (
    "key",
    "json",
    "both",
    "both-different",
    "none",
    "empty-key",
    "bad-key",
    "bad-utf8-key",
    "bad-json-id",
)

_NOW_MS = time.time() * 1000
"""Fixed when imported: strategies must not depend on the clock while Hypothesis draws."""


@dataclass
class FuzzCase:
    """One record to produce, and under which ids its answer may come back."""

    index: int
    kind: str
    id_mode: str
    key: bytes | None
    value: bytes | None
    required_id: str | None = None
    """A valid request id: a result under it is required."""
    match_ids: list[str] = field(default_factory=list)
    """Ids under which a result answers this case (filled in once produced)."""


# -- strategies ------------------------------------------------------------------------------------

_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=40),
)
_json_any = st.recursive(
    _scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)


def _field_values(name: str) -> st.SearchStrategy[Any]:
    """Plausible, out-of-range and wrong-typed values of one request field."""
    ints = {
        "max_tokens": (1, 32768),
        "top_k": (0, 1000),
        "seed": (0, 2**63 - 1),
        "schema_version": (1, 1),
    }
    floats = {"temperature": (0.0, 2.0), "top_p": (0.0, 1.0)}
    if name in ints:
        lo, hi = ints[name]
        good = st.integers(min_value=lo, max_value=min(hi, 64) if name == "max_tokens" else hi)
        bad = st.one_of(
            st.integers(max_value=lo - 1), st.integers(min_value=hi + 1), st.sampled_from(["5"])
        )
        return st.one_of(good, good, bad, _scalars)
    if name in floats:
        lo_f, hi_f = floats[name]
        return st.one_of(
            st.floats(min_value=lo_f, max_value=hi_f),
            st.floats(min_value=hi_f, exclude_min=True),
            st.floats(max_value=lo_f, exclude_max=True),
            _scalars,
        )
    if name == "prompt":
        return st.one_of(st.text(min_size=1, max_size=60), st.just(""), _scalars)
    if name == "messages":
        message = st.fixed_dictionaries(
            {
                "role": st.sampled_from(["user", "system", "assistant", "tool", ""]),
                "content": st.one_of(st.text(max_size=40), _scalars),
            },
            optional={"name": st.text(max_size=5)},
        )
        return st.one_of(st.lists(message, max_size=3), _json_any)
    if name == "stop":
        return st.one_of(
            st.text(min_size=1, max_size=8),
            st.lists(st.text(max_size=70), max_size=6),
            _scalars,
        )
    if name == "stream":
        return st.one_of(st.booleans(), _scalars)
    if name == "metadata":
        return st.one_of(
            st.dictionaries(st.text(max_size=70), st.text(max_size=20), max_size=20), _json_any
        )
    if name in ("deadline_ms", "received_ms"):
        return st.one_of(
            st.floats(min_value=_NOW_MS + 3_600_000, max_value=_NOW_MS + 7_200_000),
            st.floats(max_value=0.0),
            _scalars,
        )
    if name in ("model", "model_version"):
        return st.one_of(st.just("genwire-gpt"), st.text(max_size=140), st.just("7"), _scalars)
    return _json_any


@st.composite
def json_requests(draw: st.DrawFn) -> dict[str, Any]:
    """A request-shaped JSON object: some known fields (any value), maybe unknown ones."""
    names = draw(st.lists(st.sampled_from(FIELDS), unique=True, max_size=8))
    body: dict[str, Any] = {}
    if draw(st.booleans()):  # most carry a usable prompt, so deeper checks are reached
        body["prompt"] = draw(st.sampled_from(["Once upon a time", "Hello", "The robot"]))
        body["max_tokens"] = draw(st.integers(min_value=1, max_value=8))
    for name in names:
        if name != "request_id":
            body[name] = draw(_field_values(name))
    for extra in draw(st.lists(st.text(min_size=1, max_size=12), max_size=2)):
        if extra not in FIELDS:
            body[extra] = draw(_scalars)
    return body


@dataclass(frozen=True)
class Draft:
    """A drawn case before ids are assigned."""

    kind: str
    id_mode: str
    body: dict[str, Any] | None
    raw: bytes | None
    bad_id: str = ""
    bad_key: bytes = b""


_bad_ids = st.one_of(
    st.just(""),
    st.text(min_size=1, max_size=20).filter(lambda s: re.fullmatch(REQUEST_ID_PATTERN, s) is None),
    st.just("x" * 200),
    st.just("-leading-dash"),
    st.just("has space"),
)


@st.composite
def drafts(draw: st.DrawFn) -> Draft:
    """One fuzz case: JSON-shaped (most) or raw bytes, and how its id is given."""
    id_mode = draw(st.sampled_from(ID_MODES))
    bad_id = draw(_bad_ids) if id_mode in ("bad-key", "bad-json-id") else ""
    bad_key = draw(st.binary(min_size=1, max_size=8)) if id_mode == "bad-utf8-key" else b""
    kind = draw(
        st.sampled_from(
            ["json"] * 12 + ["bytes", "text", "invalid-utf8", "empty", "null", "json-array", "huge"]
        )
    )
    if kind == "json":
        return Draft(kind, id_mode, draw(json_requests()), None, bad_id, bad_key)
    raw: bytes | None
    if kind == "bytes":
        raw = draw(st.binary(min_size=1, max_size=200))
    elif kind == "text":
        raw = draw(st.text(min_size=1, max_size=200)).encode()
    elif kind == "invalid-utf8":
        prefix = draw(st.sampled_from([b'{"prompt": "', b"", b'{"prompt": "ok", "x": "']))
        raw = prefix + draw(st.sampled_from([b"\xff", b"\xc3\x28", b"\xed\xa0\x80", b"\x80"]))
        raw += b'"}' if prefix else b""
    elif kind == "empty":
        raw = b""
    elif kind == "null":
        raw = None
    elif kind == "json-array":
        raw = json.dumps(draw(st.lists(_scalars, max_size=4))).encode()
    else:
        size = draw(st.sampled_from(HUGE_SIZES))
        filler = "a" * size
        raw = json.dumps({"prompt": filler, "max_tokens": 4}).encode()
    return Draft(kind, id_mode, None, raw, bad_id, bad_key)


def generate_drafts(count: int, seed_value: int) -> list[Draft]:
    """``count`` drafts from Hypothesis (generation only: no shrinking, no example database)."""
    found: list[Draft] = []

    @seed(seed_value)
    @settings(
        max_examples=count,
        phases=[Phase.generate],
        database=None,
        deadline=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(drafts())
    def collect(draft: Draft) -> None:
        found.append(draft)

    collect()
    return found[:count]


def _valid_id(value: str) -> bool:
    return re.fullmatch(REQUEST_ID_PATTERN, value) is not None


def build_case(draft: Draft, index: int, run_id: str) -> FuzzCase:
    """Give a draft its ids and bytes."""
    rid = f"{run_id}-{index:05d}"
    mode = draft.id_mode
    key: bytes | None = None
    json_id: str | None = None
    if mode in ("key", "both"):
        key = rid.encode()
        json_id = rid if mode == "both" else None
    elif mode == "both-different":
        key, json_id = rid.encode(), f"{rid}-json"
    elif mode == "json":
        json_id = rid
    elif mode == "empty-key":
        key, json_id = b"", rid
    elif mode == "bad-key":
        key = f"{draft.bad_id} {rid}".encode()  # the space alone makes it invalid
    elif mode == "bad-utf8-key":
        key = b"\xff" + draft.bad_key + rid.encode()
    elif mode == "bad-json-id":
        json_id = f"{draft.bad_id} {rid}"
    if draft.body is not None:
        body = dict(draft.body)
        if json_id is not None:
            body["request_id"] = json_id
        try:
            value: bytes | None = json.dumps(body).encode()
        except ValueError:  # e.g. a circular structure cannot happen, but stay total
            value = b"{}"
    else:
        value = draft.raw
    if key is None and value is None:
        key = b""  # a record needs one of them: a tombstone with an empty key
    required: str | None = None
    if key:
        key_text = key.decode("utf-8", "replace")
        required = key_text if _valid_id(key_text) and _is_utf8(key) else None
    elif json_id is not None and draft.body is not None and _valid_id(json_id):
        required = json_id
    return FuzzCase(index, draft.kind, mode, key, value, required)


def _is_utf8(raw: bytes) -> bool:
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True
