"""Fixtures shared with the stage tests (a model repository with a tokenizer trained here) and
the model tests (``tiny_checkpoint``, a tiny GPT-2 trained here in seconds, is the root
conftest's)."""

from stages.conftest import assets, model_repo, tokenizer

__all__ = ["assets", "model_repo", "tokenizer"]
