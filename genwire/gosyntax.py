"""Go's own syntax for two values genwire hands to a Go process (Jaeger): checked here, first.

Go refuses a malformed ``GOMEMLIMIT`` by aborting at start, and the collector refuses a
malformed duration by not starting; a setting checked when genwire reads it fails where the
user can see which variable was wrong. Both follow Go's parsers (``runtime.parseByteCount``,
``time.ParseDuration``), including their 64-bit overflow.
"""

from __future__ import annotations

import re

INT64_MAX = 2**63 - 1
UINT64_MAX = 2**64 - 1

_BYTE_UNITS = {"B": 1, "KiB": 2**10, "MiB": 2**20, "GiB": 2**30, "TiB": 2**40}
_INT = re.compile(r"[+-]?[0-9]+")  # what strconv.ParseInt takes in base 10

# Go accepts both the micro sign (U+00B5) and the Greek mu (U+03BC).
_DURATION_UNITS_NS = {
    "ns": 1,
    "us": 10**3,
    "\u00b5s": 10**3,
    "\u03bcs": 10**3,
    "ms": 10**6,
    "s": 10**9,
    "m": 60 * 10**9,
    "h": 3600 * 10**9,
}


def byte_count(text: str) -> int:
    """Bytes of a GOMEMLIMIT value other than ``off``: an integer, then B, KiB, MiB, GiB or TiB
    (``runtime.parseByteCount``)."""
    unit = next((u for u in ("KiB", "MiB", "GiB", "TiB", "B") if text.endswith(u)), "")
    digits = text[: len(text) - len(unit)]
    if not _INT.fullmatch(digits) or int(digits) < 0 or int(digits) > INT64_MAX:
        raise ValueError(f"{text!r} is not a byte count (e.g. 1GiB, 512MiB, 1073741824)")
    value = int(digits) * _BYTE_UNITS.get(unit, 1)
    if value > INT64_MAX:
        raise ValueError(f"{text!r} is more than Go can hold (2^63 - 1 bytes)")
    return value


def _leading_int(text: str) -> tuple[int, str]:
    value, i = 0, 0
    while i < len(text) and "0" <= text[i] <= "9":
        value = value * 10 + int(text[i])
        if value > 2**63:
            raise ValueError("overflow")
        i += 1
    return value, text[i:]


def _leading_fraction(text: str) -> tuple[int, float, str]:
    # Digits past what 63 bits hold are read and dropped, as Go does.
    value, scale, i, full = 0, 1.0, 0, False
    while i < len(text) and "0" <= text[i] <= "9":
        if not full:
            grown = value * 10 + int(text[i])
            if value > INT64_MAX // 10 or grown > 2**63:
                full = True
            else:
                value, scale = grown, scale * 10
        i += 1
    return value, scale, text[i:]


def duration_ns(text: str) -> int:
    """Nanoseconds of a Go duration (``72h``, ``1h30m``, ``1.5h``, ``500ms``), read term by term
    as ``time.ParseDuration`` reads it: each fraction in float64, truncated, and its overflow."""
    invalid = ValueError(f"{text!r} is not a Go duration (e.g. 72h, 90m, 1h30m)")
    rest, negative = text, False
    if rest[:1] in ("+", "-"):
        negative, rest = rest[0] == "-", rest[1:]
    if rest == "0":
        return 0
    if not rest:
        raise invalid
    total = 0
    while rest:
        if not (rest[0] == "." or "0" <= rest[0] <= "9"):
            raise invalid
        before = len(rest)
        try:
            whole, rest = _leading_int(rest)
        except ValueError:
            raise invalid from None
        digits = before != len(rest)
        fraction, scale = 0, 1.0
        if rest[:1] == ".":
            rest = rest[1:]
            before = len(rest)
            fraction, scale, rest = _leading_fraction(rest)
            digits = digits or before != len(rest)
        if not digits:
            raise invalid
        end = next((i for i, c in enumerate(rest) if c == "." or "0" <= c <= "9"), len(rest))
        unit = _DURATION_UNITS_NS.get(rest[:end])
        if unit is None:
            raise invalid
        rest = rest[end:]
        if whole > 2**63 // unit:
            raise invalid
        whole *= unit
        if fraction > 0:
            whole += int(float(fraction) * (float(unit) / scale))
            if whole > 2**63:
                raise invalid
        total += whole
        if total > 2**63:
            raise invalid
    if negative:
        return -total
    if total > INT64_MAX:
        raise ValueError(f"{text!r} is longer than Go can hold (about 292 years)")
    return total
