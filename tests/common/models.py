"""Throwaway models for the stack tests: a copy of a built version under another name."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

from genwire_model import DEFAULT_MODEL_NAME
from genwire_model.lifecycle import CONFIG, Lifecycle, LifecycleError, TritonControl

from genwire.policyfeed import delete_policy
from genwire.settings import CommonSettings


def copy_version(
    src: Path, dst: Path, name: str, version: str, portable_only: bool = False
) -> None:
    """Copy the built version ``src`` to ``dst`` as model ``name`` version ``version`` (files
    hard-linked where the file system allows; the manifest rewritten, never linked).

    ``portable_only``: without ONNX Runtime's fused copy (``model.ort.onnx``), so ONNX Runtime
    serves ``model.onnx``: for a test that replaces that graph and means it to be served."""

    def link(a: str, b: str) -> None:
        try:
            os.link(a, b)
        except OSError:
            shutil.copy2(a, b)

    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("__pycache__"), copy_function=link)
    manifest = json.loads((src / "manifest.json").read_text())
    manifest.update(name=name, version=int(version))
    if portable_only:
        (dst / "model.ort.onnx").unlink(missing_ok=True)
        manifest["build"]["onnxruntime_graph"] = {"file": None, "reason": "test: portable only"}
        manifest["files"].pop("model.ort.onnx", None)
    (dst / "manifest.json").unlink()
    (dst / "manifest.json").write_text(json.dumps(manifest, indent=2))


@contextlib.contextmanager
def throwaway_model(
    stack: CommonSettings, name: str, config: Callable[[str], str] = lambda text: text
) -> Iterator[tuple[Lifecycle, Path]]:
    """Model ``name`` in the stack's repository: versions 1 and 2 copied from the default
    model's newest served version (not loaded), its config.pbtxt the default's renamed (and
    passed through ``config``). Yields a Lifecycle and the version copied; afterwards the model
    is unloaded, its policy tombstoned and its folder removed, and the default still served."""
    triton = TritonControl(stack.triton_http_url)
    life = Lifecycle(
        repository=stack.repository,
        triton=triton,
        bootstrap_servers=stack.kafka_bootstrap_servers,
        triton_grpc_url=stack.triton_grpc_url,
    )
    served = triton.served(DEFAULT_MODEL_NAME)
    assert served, "the default model is not served"
    source = stack.repository / DEFAULT_MODEL_NAME / served[-1]
    model_dir = stack.repository / name
    shutil.rmtree(model_dir, ignore_errors=True)
    model_dir.mkdir()
    text = (stack.repository / DEFAULT_MODEL_NAME / CONFIG).read_text()
    renamed = text.replace(f'name: "{DEFAULT_MODEL_NAME}"', f'name: "{name}"')
    (model_dir / CONFIG).write_text(config(renamed))
    for version in ("1", "2"):
        copy_version(source, model_dir / version, name, version)
    try:
        yield life, source
    finally:
        with contextlib.suppress(LifecycleError):
            triton.unload(name)
        asyncio.run(delete_policy(stack.kafka_bootstrap_servers, name))
        shutil.rmtree(model_dir, ignore_errors=True)
        ready = [m["name"] for m in triton.index() if m.get("state") == "READY"]
        assert DEFAULT_MODEL_NAME in ready
        triton.close()
