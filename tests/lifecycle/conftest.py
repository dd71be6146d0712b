"""Fixtures shared with the stage tests (a model repository with a tokenizer trained here)."""

from stages.conftest import assets, model_repo, tokenizer

__all__ = ["assets", "model_repo", "tokenizer"]
