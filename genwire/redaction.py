"""Masks sensitive text before it goes into telemetry (only when content capture is on).

Content (prompts, completions) stays out of spans and logs by default. A key created with
``--capture-content`` opts its requests in; their text then passes through a ``Redactor``
first: the configured patterns (default: e-mail addresses and card numbers that pass the Luhn
check) are replaced by ``[REDACTED:<name>]``, then an optional hook (``module:function``, a
``str -> str``) runs for what patterns cannot express.
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Callable, Iterable
from itertools import accumulate

_LOCAL = "A-Za-z0-9._%+-"
"""What an address's local part is made of (``[...]`` contents)."""
_DOMAIN = r"@[A-Za-z0-9.-]+\.[A-Za-z]{2,}"
_CHAINED_LOCAL_MAX = 64
"""RFC 5321's limit on a local part: how far back from its ``@`` an address glued to the one
before it (``a@b.cc_x@y.com``) is looked for."""
EMAIL = (
    rf"(?:(?<![{_LOCAL}])[{_LOCAL}]+"
    rf"|(?<=[A-Za-z])[0-9._%+-][{_LOCAL}]{{0,{_CHAINED_LOCAL_MAX - 1}}}){_DOMAIN}"
)
"""An e-mail address. Linear (a search that may start anywhere in a long run of local-part
characters, then scan to its end, is quadratic: a long cancel reason froze the gateway): an
address starts where such a run starts, or right after the address before it (a letter, its
top-level domain, then a non-letter of the run), the latter within ``_CHAINED_LOCAL_MAX``
characters of its ``@``. Masks what the plain ``[...]+@...`` pattern does, but for an address
glued to the one before it with a local part over 64 characters (longer than RFC 5321 allows)."""
CARD = r"(?<!\d)(?:\d[ -]?){12,18}\d(?!\d)"
CARD_DIGITS = (13, 19)
"""How many digits a card number has (fewest, most)."""
DEFAULT_PATTERNS = (f"email={EMAIL}", f"card={CARD}")
"""``name=regex`` pairs masked when no others are configured."""


def luhn_ok(digits: str) -> bool:
    """Whether a digit string passes the Luhn checksum (real card numbers do)."""
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = int(ch)
        if i % 2 == 1:
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return total % 10 == 0


def parse_patterns(specs: Iterable[str]) -> list[tuple[str, re.Pattern[str]]]:
    """``name=regex`` strings as compiled patterns; ValueError names a bad one."""
    out = []
    for spec in specs:
        name, sep, regex = spec.partition("=")
        if not sep or not name.strip() or not regex:
            raise ValueError(f"redaction pattern {spec!r} is not name=regex")
        try:
            out.append((name.strip(), re.compile(regex)))
        except re.error as exc:
            raise ValueError(f"redaction pattern {name!r}: {exc}") from None
    return out


def load_hook(path: str) -> Callable[[str], str] | None:
    """The ``module:function`` hook (empty: none); ValueError when it cannot be loaded."""
    if not path:
        return None
    module, sep, attr = path.partition(":")
    if not sep:
        raise ValueError(f"redaction hook {path!r} is not module:function")
    try:
        hook = getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as exc:
        raise ValueError(f"redaction hook {path!r} cannot be loaded: {exc}") from None
    if not callable(hook):
        raise ValueError(f"redaction hook {path!r} is not callable")
    return hook  # type: ignore[no-any-return]


class Redactor:
    """Applies the patterns, then the hook."""

    def __init__(
        self,
        patterns: Iterable[str] = DEFAULT_PATTERNS,
        hook: Callable[[str], str] | None = None,
    ) -> None:
        self.patterns = parse_patterns(patterns)
        self.hook = hook

    def __call__(self, text: str) -> str:
        for name, pattern in self.patterns:
            text = pattern.sub(lambda m, n=name: self._mask(m, n), text)  # type: ignore[misc]
        return self.hook(text) if self.hook is not None else text

    @staticmethod
    def _mask(match: re.Match[str], name: str) -> str:
        if name == "card":
            return _mask_card(match.group(0))
        return f"[REDACTED:{name}]"


def _mask_card(text: str) -> str:
    """``text`` (digits in groups) with the card number in it masked: the whole run when it
    passes the Luhn check, else the longest run of whole groups, 13 to 19 digits, that does
    (the pattern is greedy: a card followed by its expiry, ``4111 1111 1111 1111 12/25``,
    matches with the ``12``)."""
    if luhn_ok(re.sub(r"\D", "", text)):
        return "[REDACTED:card]"
    best = _longest_card(text)
    if best is None:
        return text
    return f"{text[: best[0]]}[REDACTED:card]{text[best[1] :]}"


def _longest_card(text: str) -> tuple[int, int] | None:
    """The span of the longest run of whole digit groups in ``text`` with 13 to 19 digits
    that passes the Luhn check. Only runs of that many digits are checked, each in constant
    time: a long input of short groups (``1 1 1 ...``) is many matches, each of ~19 groups."""
    groups = [(m.start(), m.end(), m.group()) for m in re.finditer(r"\d+", text)]
    counts = list(accumulate((len(g[2]) for g in groups), initial=0))
    luhn = _LuhnRanges("".join(g[2] for g in groups))
    best: tuple[int, int] | None = None
    for i in range(len(groups)):
        for j in range(len(groups) - 1, i - 1, -1):
            digits = counts[j + 1] - counts[i]
            if digits < CARD_DIGITS[0]:
                break  # fewer still for a shorter run
            if digits > CARD_DIGITS[1] or not luhn.ok(counts[i], counts[j + 1]):
                continue
            start, end = groups[i][0], groups[j][1]
            if best is None or end - start > best[1] - best[0]:
                best = (start, end)
            break
    return best


_DOUBLED = tuple(2 * d - 9 if 2 * d > 9 else 2 * d for d in range(10))
"""A digit's share of the Luhn sum where it is doubled."""


class _LuhnRanges:
    """The Luhn check of any slice of one digit string in constant time: prefix sums of the
    digits, plain and doubled, by the parity of their index (which of them a slice doubles
    depends on where it ends)."""

    def __init__(self, digits: str) -> None:
        self._plain: tuple[list[int], list[int]] = ([0], [0])
        self._doubled: tuple[list[int], list[int]] = ([0], [0])
        for k, ch in enumerate(digits):
            d = int(ch)
            for parity in (0, 1):
                hit = k % 2 == parity
                self._plain[parity].append(self._plain[parity][-1] + (d if hit else 0))
                self._doubled[parity].append(
                    self._doubled[parity][-1] + (_DOUBLED[d] if hit else 0)
                )

    def ok(self, start: int, end: int) -> bool:
        """Whether ``digits[start:end]`` passes the Luhn check (its last digit is not doubled)."""
        kept = (end - 1) % 2
        total = (
            self._plain[kept][end]
            - self._plain[kept][start]
            + self._doubled[1 - kept][end]
            - self._doubled[1 - kept][start]
        )
        return total % 10 == 0
