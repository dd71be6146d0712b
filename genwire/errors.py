"""Error taxonomy shared by handlers and transports.

Three kinds, three paths (docs/architecture.md, *Errors*):

- ``RetryableError``: a dependency is down (Triton, Redis); the record is retried with backoff
  for the outage budget, then parked on ``genwire.retry`` to be replayed later.
- ``PermanentError``: the input can never succeed (undecodable, invalid): the DLQ gets the
  original bytes with the reason, the caller an error result.
- ``Rejection``: an ordinary outcome that is an error for the caller (content filtered,
  deadline passed): an error result only; the DLQ is for poison, not for outcomes.
"""

from __future__ import annotations

from pydantic import ValidationError


class GenwireError(Exception):
    """Base of genwire's errors; ``code`` is stable and machine-readable."""

    code = "internal"
    dead_letter = True
    """Whether the record goes to the DLQ (poison input or a bug) besides the error result."""

    def __init__(self, message: str, *, code: str | None = None, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        self.param = param
        """The request field at fault, when one is (OpenAI's ``error.param``)."""


class RetryableError(GenwireError):
    """A transient failure (a dependency down, a timeout): retry with backoff."""

    code = "unavailable"

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        dependency: str = "dependency",
        max_tries: int | None = None,
    ) -> None:
        super().__init__(message, code=code)
        self.dependency = dependency
        """Which dependency failed (``redis``, ``triton``): readiness and logs name it."""
        self.max_tries = max_tries
        """Tries of the record in a row after which it is parked for a later replay, however
        much of the outage budget is left (None: the budget alone bounds them). For a failure
        that may as well be the record's own as the dependency's (memory ran short for its
        batch): retrying it holds the stage, which takes no new record while one waits."""


class PermanentError(GenwireError):
    """The input can never succeed: send it to the DLQ (and an error result) at once."""

    code = "invalid_argument"


class Rejection(GenwireError):
    """The request was handled and its answer is an error (not poison: no DLQ record)."""

    code = "rejected"
    dead_letter = False


def describe_validation(exc: ValidationError, *, subject: str, limit: int = 5) -> str:
    """One readable line per validation problem (the first ``limit``), without echoing the input.

    A problem with no location (the whole value) is named ``subject``.
    """
    parts = []
    for e in exc.errors(include_url=False, include_input=False)[:limit]:
        where = ".".join(str(p) for p in e["loc"]) or subject
        parts.append(f"{where}: {e['msg']}")
    return "; ".join(parts)
