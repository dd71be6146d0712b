"""Go's own syntax for two values genwire hands to a Go process (Jaeger): checked here, first.

Go refuses a malformed ``GOMEMLIMIT`` by aborting at start, and the collector refuses a
malformed duration by not starting; a setting checked when genwire reads it fails where the
user can see which variable was wrong. Both follow Go's parsers (``runtime.parseByteCount``,
``time.ParseDuration``), including their 64-bit overflow.
"""

from __future__ import annotations

import re
from decimal import Decimal

INT64_MAX = 2**63 - 1

_BYTE_UNITS = {"": 1, "B": 1, "KiB": 2**10, "MiB": 2**20, "GiB": 2**30, "TiB": 2**40}
_BYTES = re.compile(r"([0-9]+)(B|KiB|MiB|GiB|TiB)?")

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
_TERM = re.compile(r"([0-9]+\.?[0-9]*|\.[0-9]+)(ns|us|\u00b5s|\u03bcs|ms|s|m|h)")


def byte_count(text: str) -> int:
    """Bytes of a GOMEMLIMIT value other than ``off``: digits, then B, KiB, MiB, GiB or TiB."""
    match = _BYTES.fullmatch(text)
    if match is None:
        raise ValueError(f"{text!r} is not a byte count (e.g. 1GiB, 512MiB, 1073741824)")
    value = int(match.group(1)) * _BYTE_UNITS[match.group(2) or ""]
    if value > INT64_MAX:
        raise ValueError(f"{text!r} is more than Go can hold (2^63 - 1 bytes)")
    return value


def duration_ns(text: str) -> int:
    """Nanoseconds of an unsigned Go duration (``72h``, ``1h30m``, ``1.5h``, ``500ms``)."""
    position, total = 0, Decimal(0)
    while position < len(text):
        match = _TERM.match(text, position)
        if match is None:
            break
        number = match.group(1)
        total += Decimal(number if number[0] != "." else "0" + number) * _DURATION_UNITS_NS[
            match.group(2)
        ]
        position = match.end()
    if not text or position != len(text):
        raise ValueError(f"{text!r} is not a Go duration (e.g. 72h, 90m, 1h30m)")
    if total > INT64_MAX:
        raise ValueError(f"{text!r} is longer than Go can hold (about 292 years)")
    return int(total)  # Go truncates a fraction of a nanosecond as well
