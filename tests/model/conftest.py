"""Fixtures of the model tests: the tiny GPT-2 (root conftest's ``tiny_checkpoint``), built once.

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
from genwire_model.repository import ModelVersion

from genwire.settings import CommonSettings
from tests.common.tiny import TINY, tiny_documents

__all__ = ["TINY", "tiny_documents"]  # test_train imports them from here


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
