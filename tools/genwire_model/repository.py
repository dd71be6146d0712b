"""Read a Triton model repository built by genwire (no torch: services import this).

Layout of one model::

    <repository>/<name>/config.pbtxt
    <repository>/<name>/<version>/model.py, genwire_runtime/, model.onnx [, model.ort.onnx]
                                  [, engines/<key>/model.plan],
                                  tokenizer.json, tokenizer_config.json, manifest.json

Versions are whole folders that appear by an atomic rename, so a folder named by a number
with a ``manifest.json`` inside is complete.
"""

from __future__ import annotations

import dataclasses
import fcntl
import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

MANIFEST = "manifest.json"
LOCK_FILE = ".build.lock"
"""In a model's folder: held by whoever changes its versions or its config.pbtxt."""


@contextmanager
def model_lock(model_dir: Path) -> Iterator[None]:
    """Hold ``model_dir``'s lock (it must exist): a build adding a version and every
    read-modify-write of its ``config.pbtxt`` (``genwire model load/unload/promote``) run one
    at a time, so none overwrites what another just changed. Not re-entrant. A folder mounted
    read-only (a service's pod, where `genwire model route` may run) is locked through the
    lock file the build made: flock needs no write access."""
    path = Path(model_dir) / LOCK_FILE
    try:
        lock = path.open("a")
    except OSError:
        lock = path.open("r")  # raises the first error's kind when the file is missing too
    with lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


class ModelNotFoundError(LookupError):
    """The repository has no (complete) version of the model asked for."""


@dataclasses.dataclass(frozen=True)
class ModelVersion:
    """One complete version folder and its manifest."""

    name: str
    version: int
    path: Path
    manifest: dict[str, Any]

    @property
    def context_length(self) -> int:
        """Tokens of context (prompt plus completion)."""
        return int(self.manifest["context_length"])

    @property
    def eos_token_ids(self) -> list[int]:
        """Token ids that end a completion."""
        return [int(t) for t in self.manifest.get("eos_token_ids", [])]

    @property
    def source_checkpoint_hash(self) -> str:
        """SHA-256 of the checkpoint this version was built from."""
        return str(self.manifest.get("source", {}).get("checkpoint_sha256", ""))


class ModelRepository:
    """A Triton model repository folder."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def versions(self, name: str) -> list[int]:
        """Complete versions of ``name``, ascending."""
        model_dir = self.root / name
        if not model_dir.is_dir():
            return []
        found = [
            int(child.name)
            for child in model_dir.iterdir()
            if child.name.isdigit() and (child / MANIFEST).is_file()
        ]
        return sorted(found)

    def get(self, name: str, version: int) -> ModelVersion:
        """One version; ModelNotFoundError if it is absent or incomplete."""
        path = self.root / name / str(version)
        manifest_path = path / MANIFEST
        if not manifest_path.is_file():
            raise ModelNotFoundError(f"model {name!r} has no version {version} in {self.root}")
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        return ModelVersion(name, version, path, manifest)

    def latest(self, name: str) -> ModelVersion:
        """The highest complete version (what a build's ``latest`` version policy serves)."""
        versions = self.versions(name)
        if not versions:
            raise ModelNotFoundError(
                f"model {name!r} has no built version in {self.root}: run "
                f"`genwire model build --name {name} --checkpoint DIR` (or `genwire up`)"
            )
        return self.get(name, versions[-1])


def load_tokenizer(version: ModelVersion) -> Any:
    """The version's ``tokenizers.Tokenizer``."""
    from tokenizers import Tokenizer

    return Tokenizer.from_file(str(version.path / "tokenizer.json"))


def load_tokenizer_config(version: ModelVersion) -> dict[str, Any]:
    """The version's tokenizer_config.json (chat_template, eos_token, ...)."""
    data = json.loads((version.path / "tokenizer_config.json").read_text(encoding="utf-8"))
    return data if isinstance(data, dict) else {}
