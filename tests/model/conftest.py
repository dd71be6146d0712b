"""Fixtures of the model tests: a tiny GPT-2 trained here in seconds and built once.

The tiny model uses the same code path as the default one (tokenizer training, GPT-2
training, export, validation, version build), only smaller, so the suite stays fast.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from genwire_model.build import BuildOptions, build_version
from genwire_model.corpus import _docstrings, stdlib_root
from genwire_model.repository import ModelVersion
from genwire_model.train import TrainConfig, train

from genwire.settings import CommonSettings

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


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An HF checkpoint folder of a 2-layer GPT-2 with a 512-token byte-level BPE."""
    out = tmp_path_factory.mktemp("tiny-checkpoint")
    train(out, tiny_documents(), TINY, progress=lambda _: None)
    return out


@pytest.fixture(scope="session")
def tiny_repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A private model repository (not served by Triton) for in-process tests."""
    return tmp_path_factory.mktemp("repository")


@pytest.fixture(scope="session")
def tiny_version(tiny_checkpoint: Path, tiny_repository: Path) -> ModelVersion:
    """The tiny checkpoint built once into the private repository."""
    return build_version(
        tiny_checkpoint, "tiny-gpt", tiny_repository, BuildOptions(max_batch=8), lambda _: None
    )


@pytest.fixture(scope="session")
def served_model(infra: CommonSettings, tiny_checkpoint: Path) -> Iterator[tuple[str, str]]:
    """The tiny model built into the real Triton's repository and loaded there.

    Yields (gRPC url, model name); the model is unloaded and its folder removed afterwards.
    """
    name = f"genwire-test-gpt-{uuid.uuid4().hex[:6]}"
    build_version(tiny_checkpoint, name, infra.repository, BuildOptions(max_batch=8))
    base = f"http://{infra.triton_http_url}"
    response = httpx.post(f"{base}/v2/repository/models/{name}/load", timeout=120.0)
    assert response.status_code == 200, response.text
    try:
        yield infra.triton_grpc_url, name
    finally:
        httpx.post(f"{base}/v2/repository/models/{name}/unload", timeout=60.0)
        import shutil

        shutil.rmtree(infra.repository / name, ignore_errors=True)
