"""The Go version README's requirements table asks for builds every Go module the suite builds
(``GOTOOLCHAIN=local``: an older Go does not fetch a newer one, it fails). It said 1.24+ while
the Kubernetes manifest checker's go.mod needed 1.26.0."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).parents[2]


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in text.split("."))


def test_readmes_go_is_new_enough_for_every_go_mod() -> None:
    found = re.search(r"^\| Go (\d+\.\d+)\+ \|", (ROOT / "README.md").read_text(), re.M)
    assert found, "README's requirements table names no Go version"
    promised = _version(found.group(1))
    modules = list((ROOT / "deploy").rglob("go.mod"))
    assert modules
    for module in modules:
        needed = re.search(r"^go (\d+\.\d+)", module.read_text(), re.M)
        assert needed, module
        assert promised >= _version(needed.group(1)), (module, needed.group(1))
