"""Fixtures of the shared-library tests."""

from .support import env

__all__ = ["env"]
