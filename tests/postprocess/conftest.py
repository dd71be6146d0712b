"""Fixtures of the postprocess tests: the stages tests' tokenizer, model repository and
postprocessor (``post``, results in a ``FakeStore``)."""

from tests.stages.conftest import assets, model_repo, post, tokenizer  # noqa: F401  (fixtures)
