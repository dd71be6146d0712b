"""Fixtures shared with the stage tests: a model repository with a tokenizer trained here
(``tiny_checkpoint``, the tiny GPT-2, is the root conftest's)."""

from stages.conftest import assets, model_repo, tokenizer

__all__ = ["assets", "model_repo", "tokenizer"]
