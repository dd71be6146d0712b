"""Bounded metric label values for anything a client can choose (model names above all).

A Prometheus series is created per distinct label set and never freed, so a label taken from
client input lets any client grow every scraper's memory without bound: 10,000 made-up model
names would make 10,000 series per metric. ``BoundedLabel`` keeps the first ``limit``
distinct values as they are and folds every later one into ``other``; the services also
label a request that no model version served (rejected before one was chosen: an unknown
name, invalid input) ``unknown`` (``model_label``), so a made-up name never reaches a label
at all in normal operation and the cap is the backstop.
"""

from __future__ import annotations

import threading

OTHER = "other"
"""The value every label beyond the cap shares."""
UNKNOWN = "unknown"
"""The model label of a request no model version served."""
DEFAULT_LIMIT = 32
MAX_LENGTH = 128


class BoundedLabel:
    """At most ``limit`` distinct values (then ``other``); values longer than ``MAX_LENGTH``
    are ``other`` too. Thread-safe (a metric may be observed from a worker thread)."""

    def __init__(self, limit: int = DEFAULT_LIMIT) -> None:
        self.limit = limit
        self._seen: set[str] = set()
        self._lock = threading.Lock()

    def __call__(self, value: str) -> str:
        if value in self._seen:
            return value
        if len(value) > MAX_LENGTH:
            return OTHER
        with self._lock:
            if value in self._seen:
                return value
            if len(self._seen) >= self.limit:
                return OTHER
            self._seen.add(value)
        return value

    def __len__(self) -> int:
        return len(self._seen)


def model_label(bounded: BoundedLabel, model: str, version: str) -> str:
    """The model label of a request: ``unknown`` when no model version served it (no version
    chosen: the name was unknown or the request was rejected first), else the bounded name."""
    return bounded(model) if version else UNKNOWN
