"""The one error the stack raises: a single line saying what is wrong and what to do."""

from __future__ import annotations


class StackError(Exception):
    """A component could not be installed, started or reached; ``str()`` is the whole story."""
