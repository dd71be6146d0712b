"""genwire's model: training the default GPT, building Triton model repository versions.

Importing this package is cheap (no torch): heavy modules load inside the functions.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from genwire.settings import CommonSettings

__all__ = ["DEFAULT_MODEL_NAME", "ensure_default_model"]

DEFAULT_MODEL_NAME = "genwire-gpt"


def ensure_default_model(settings: CommonSettings) -> str:
    """Train the default model if needed and build a repository version from it.

    Returns the version (as a string, e.g. ``"3"``) of ``genwire-gpt`` in the settings'
    repository built from the current default checkpoint; builds one only if none exists.
    """
    from genwire_model.default import ensure_default_model as _ensure

    return _ensure(settings)
