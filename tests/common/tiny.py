"""The tiny GPT-2 the tests train in seconds: its configuration and its documents. The
``tiny_checkpoint`` fixture (tests/conftest.py) trains it once per session for every test
directory (a fixture imported into several conftests would be trained once per import)."""

from __future__ import annotations

from genwire_model.corpus import _docstrings, stdlib_root
from genwire_model.train import TrainConfig

TINY = TrainConfig(
    vocab_size=512,
    context=64,
    n_layer=2,
    n_embd=64,
    n_head=2,
    seq_len=64,
    batch_size=8,
    steps=150,
    lr=3e-3,
    warmup_steps=10,
    eval_tokens=2048,
    heldout_every=5,
    threads=1,  # tiny matrices: a second thread only adds contention
)
STDLIB_FILES = ("textwrap.py", "json/__init__.py", "string.py", "shlex.py", "fnmatch.py")


def tiny_documents() -> list[str]:
    """Docstrings of a few standard-library modules: enough text for a tiny tokenizer."""
    root = stdlib_root()
    return [doc for f in STDLIB_FILES for _, doc in _docstrings(root / f, f)]
