"""Error taxonomy shared by handlers and transports."""

from __future__ import annotations


class GenwireError(Exception):
    """Base of genwire's errors; ``code`` is stable and machine-readable."""

    code = "internal"

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code


class RetryableError(GenwireError):
    """A transient failure (a dependency down, a timeout): retry with backoff."""

    code = "unavailable"


class PermanentError(GenwireError):
    """The input can never succeed: send it to the DLQ (and an error result) at once."""

    code = "invalid_argument"
