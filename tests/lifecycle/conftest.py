"""Fixtures shared with the stage tests (a model repository with a tokenizer trained here) and
the model tests (a tiny GPT-2 checkpoint trained here in seconds)."""

from model.conftest import tiny_checkpoint
from stages.conftest import assets, model_repo, tokenizer

__all__ = ["assets", "model_repo", "tiny_checkpoint", "tokenizer"]
