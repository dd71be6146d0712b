"""The top-level ``stream`` and ``n`` of a JSON object too large to parse again, by a scan.

A refused request's error chunk must say whether it streams and how many choices it has (each
choice's token stream ends with its own final event), even when the value is too large to
parse once more. Only the object's own (top-level) keys count: ``"n"`` inside a
``response_format`` schema or ``"stream"`` inside ``metadata`` is not the request's, and, as
in ``json.loads``, the last of duplicate keys wins.

The scan is linear and its Python-level work is per top-level key and per container holding
more than ``_NESTING`` levels (never per byte): a string (escapes included) or a container up
to ``_NESTING`` levels deep is skipped by one regex match, and possessive quantifiers keep a
failed match from backtracking and keep no state per repeat (atomic groups, the other way to
say it, keep state for every repeat until the match ends: hundreds of megabytes for a value of
short items); ``MAX_STEPS`` bounds the Python-level work of a value built to defeat that.
Python before 3.11.5 matches possessive quantifiers wrongly (gh-106052; Debian 12's python3.11
is 3.11.2): there ``SCANS`` is False and ``stream_and_n`` finds the keys at any depth instead
(``_anywhere``: a nested ``"n"`` or ``"stream"`` can mislead it). The scan is no validator
(brackets are counted, not paired by kind; tokens inside a container are not checked): a
malformed, truncated or over-budget value yields what its complete top-level pairs before the
fault said, else the defaults (no ``stream``, ``n`` 1), where ``json.loads`` would give the
defaults alone: a truncated streamed request whose ``stream`` came before the cut still has
its stream ended.
"""

from __future__ import annotations

import json
import re
import sys

SCANS = sys.version_info >= (3, 11, 5)
"""Whether this Python's ``re`` matches possessive quantifiers right (gh-106052)."""

_WS = rb"[ \t\n\r]*+"  # JSON's whitespace (json.loads accepts no other)
_STRING = rb'"[^"\\]*+(?:\\.[^"\\]*+)*+"'  # with re.DOTALL: a backslash escapes any byte
_PLAIN = rb'[^"{}\[\]]++'  # inside a container: numbers, literals, ",", ":" and whitespace
_NESTING = 10
"""Levels of containers one regex match skips: a deeper one costs a Python step a bracket."""


def _container(levels: int) -> bytes:
    """A container holding containers at most ``levels - 1`` deep. Brackets are not paired
    by kind (``[}`` closes): the scan counts depth, it does not validate."""
    pattern = rb"[{\[](?:" + _PLAIN + b"|" + _STRING + rb")*+[}\]]"
    for _ in range(levels - 1):
        pattern = rb"[{\[](?:" + _PLAIN + b"|" + _STRING + b"|" + pattern + rb")*+[}\]]"
    return pattern


_OBJECT_START = re.compile(rb"(?:\xef\xbb\xbf)?" + _WS + rb"\{" + _WS)  # json.loads takes a BOM
_KEY = re.compile(b"(" + _STRING + b")" + _WS + b":" + _WS, re.DOTALL)
_AFTER_VALUE = re.compile(_WS + rb"([,}])" + _WS)
_STRING_VALUE = re.compile(_STRING, re.DOTALL)
_SCALAR = re.compile(rb'[^,:{}\[\]" \t\n\r]++')
_RUN = re.compile(
    b"(?:" + _PLAIN + b"|" + _STRING + b"|" + _container(_NESTING) + b")*+", re.DOTALL
)
"""Content inside a container up to its next bracket that ``_container`` cannot skip."""
_INT = re.compile(rb"-?(?:0|[1-9][0-9]{0,8})")
"""An integer literal short enough to convert (``int`` refuses over 4300 digits; a valid
``n`` has at most two)."""
_MAX_KEY_BYTES = 2 + 6 * len("stream")
"""The longest key that can decode to ``stream`` or ``n``: each character a ``\\uXXXX``."""

MAX_STEPS = 200_000
"""Python-level steps a scan takes at most (about 0.5–1.5 µs each): one per top-level key, two
more for each top-level value that is a container, and two for each container inside such a
value that spans more than ``_NESTING`` levels (itself included). A value that needs more
(e.g. 67,000 top-level keys whose values are arrays) stops there with what it found, which
may miss a later ``stream`` or ``n``."""


_STREAM_ANYWHERE = re.compile(rb'[{,]\s*"stream"\s*:\s*(true|false)\b')
"""A ``"stream"`` key and its boolean at any depth: an unescaped quote right after ``{`` or
``,`` opens a key (inside a string a quote is escaped), so the prompt cannot fake one."""
_N_ANYWHERE = re.compile(rb'[{,]\s*"n"\s*:\s*(-?\d{1,9})(?![\d.eE])')
"""An ``"n"`` key and its integer at any depth (as ``_STREAM_ANYWHERE``)."""


def stream_and_n(raw: bytes) -> tuple[bool, int]:
    """``scan_stream_n`` where this Python's ``re`` can run it, else ``_anywhere``."""
    return scan_stream_n(raw) if SCANS else _anywhere(raw)


def _anywhere(raw: bytes) -> tuple[bool, int]:
    """The last ``stream`` and ``n`` keys at any depth: linear and in constant memory, but a
    nested key (a JSON schema's ``"n"``) is taken for the request's."""
    streams = _STREAM_ANYWHERE.findall(raw)
    ns = _N_ANYWHERE.findall(raw)
    return bool(streams) and streams[-1] == b"true", int(ns[-1]) if ns else 1


def scan_stream_n(raw: bytes, *, max_steps: int = MAX_STEPS) -> tuple[bool, int]:
    """``stream`` (True only for a literal ``true``) and ``n`` (an integer literal, else 1) of
    the JSON object ``raw``, read from its top-level keys only, the last of duplicates winning.
    ``n`` is not range-checked here. Never raises."""
    stream, n = False, 1
    start = _OBJECT_START.match(raw)
    if start is None:  # not an object: json.loads would give no dict to read
        return stream, n
    pos = start.end()
    if raw.startswith(b"}", pos):
        return stream, n
    budget = max_steps
    while budget > 0:
        budget -= 1
        key = _KEY.match(raw, pos)
        if key is None:
            break
        value = key.end()
        end, budget = _skip_value(raw, value, budget)
        after = None if end is None else _AFTER_VALUE.match(raw, end)
        if end is None or after is None:  # a pair cut off or malformed: it does not count
            break
        name = _key_name(key.group(1))
        if name is not None:
            # A longer value is no boolean and no valid n: not copied.
            literal = raw[value:end] if end - value <= 16 else b""
            if name == "stream":
                stream = literal == b"true"
            else:
                number = _INT.fullmatch(literal)
                n = int(number.group()) if number is not None else 1
        if after.group(1) == b"}":  # the object's end: what follows is no key of it
            break
        pos = after.end()
    return stream, n


def _key_name(token: bytes) -> str | None:
    """``"stream"`` or ``"n"`` when the JSON string ``token`` (quotes included) decodes to one.
    A key may be spelled with escapes (``"\\u006e"``): json.loads decodes it as ``n``."""
    if token == b'"stream"':
        return "stream"
    if token == b'"n"':
        return "n"
    if b"\\" not in token or len(token) > _MAX_KEY_BYTES:
        return None
    try:
        name = json.loads(token)
    except ValueError:  # invalid UTF-8 or a bad escape: no key json.loads would read
        return None
    return name if name in ("stream", "n") else None


def _skip_value(raw: bytes, pos: int, budget: int) -> tuple[int | None, int]:
    """The end of the JSON value at ``pos`` (None when it is cut off or malformed), and the
    budget left."""
    first = raw[pos : pos + 1]
    if first == b'"':
        string = _STRING_VALUE.match(raw, pos)
        return (None if string is None else string.end()), budget
    if first in (b"{", b"["):
        return _skip_container(raw, pos, budget)
    scalar = _SCALAR.match(raw, pos)
    return (None if scalar is None else scalar.end()), budget


def _skip_container(raw: bytes, pos: int, budget: int) -> tuple[int | None, int]:
    """The end of the container opening at ``pos``: ``_RUN`` skips what lies between the
    brackets it cannot skip, counted here."""
    depth = 0
    while budget > 0:
        budget -= 1
        bracket = raw[pos : pos + 1]
        if bracket in (b"{", b"["):
            depth += 1
        elif bracket in (b"}", b"]"):
            depth -= 1
            if depth == 0:
                return pos + 1, budget
        else:  # the value's end, or a string left open
            return None, budget
        run = _RUN.match(raw, pos + 1)  # always matches (at least "")
        pos = run.end() if run is not None else pos + 1
    return None, budget
