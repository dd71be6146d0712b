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

EMAIL = r"[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}"
CARD = r"(?<!\d)(?:\d[ -]?){12,18}\d(?!\d)"
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
    groups = [(m.start(), m.end()) for m in re.finditer(r"\d+", text)]
    best: tuple[int, int] | None = None
    for i in range(len(groups)):
        for j in range(len(groups) - 1, i - 1, -1):
            start, end = groups[i][0], groups[j][1]
            digits = re.sub(r"\D", "", text[start:end])
            if 13 <= len(digits) <= 19 and luhn_ok(digits):
                if best is None or end - start > best[1] - best[0]:
                    best = (start, end)
                break
    if best is None:
        return text
    return f"{text[: best[0]]}[REDACTED:card]{text[best[1] :]}"
