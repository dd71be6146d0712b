"""Throwaway model versions for the stack tests: a copy of a built version under another name."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path


def copy_version(src: Path, dst: Path, name: str, version: str) -> None:
    """Copy the built version ``src`` to ``dst`` as model ``name`` version ``version`` (files
    hard-linked where the file system allows; the manifest rewritten, never linked)."""

    def link(a: str, b: str) -> None:
        try:
            os.link(a, b)
        except OSError:
            shutil.copy2(a, b)

    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("__pycache__"), copy_function=link)
    manifest = json.loads((src / "manifest.json").read_text())
    manifest.update(name=name, version=int(version))
    (dst / "manifest.json").unlink()
    (dst / "manifest.json").write_text(json.dumps(manifest, indent=2))
