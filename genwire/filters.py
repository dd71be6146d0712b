"""Content filters: configurable rules with a reason, used by preprocess (input) and
postprocess (output).

A rule is written ``name=regex`` (or a bare regex, then named by its position); matching is
case-insensitive. Rules come from settings, e.g.
``GENWIRE_PREPROCESS_INPUT_DENY='["ssn=\\\\b\\\\d{3}-\\\\d{2}-\\\\d{4}\\\\b"]'``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass


@dataclass(frozen=True)
class FilterRule:
    """One deny rule: its name (the reason given to the caller) and its compiled pattern."""

    name: str
    pattern: re.Pattern[str]


@dataclass(frozen=True)
class FilterHit:
    """A rule that matched, and where."""

    rule: str
    start: int
    end: int


class ContentFilter:
    """A deny-list of regex rules; ``check`` returns the first hit (or None)."""

    def __init__(self, rules: Iterable[str]) -> None:
        self.rules: list[FilterRule] = []
        for i, spec in enumerate(rules):
            name, sep, regex = spec.partition("=")
            if not sep or not name.isidentifier():  # a bare regex (which may contain "=")
                name, regex = f"rule{i}", spec
            self.rules.append(FilterRule(name, re.compile(regex, re.IGNORECASE)))

    def __bool__(self) -> bool:
        return bool(self.rules)

    def check(self, text: str) -> FilterHit | None:
        """The first rule matching ``text`` (earliest position wins), or None."""
        best: FilterHit | None = None
        for rule in self.rules:
            m = rule.pattern.search(text)
            if m and (best is None or m.start() < best.start):
                best = FilterHit(rule.name, m.start(), m.end())
        return best
