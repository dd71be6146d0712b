"""Fixtures of the postprocess tests: the stages tests' tokenizer and model repository."""

from tests.stages.conftest import model_repo, tokenizer  # noqa: F401  (fixtures)
