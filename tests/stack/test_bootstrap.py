"""deploy/native/bootstrap.sh installs the tested versions (pip -c) and reinstalls when they move.

The script runs for real against a copy of the repository's layout whose venv's ``python`` is a
stand-in that records its arguments: what is under test is which pip command runs and when, not
pip itself (the suite's own venv is the real install of deploy/native/constraints.txt, checked by
tests/stack/test_compose.py).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def clone(tmp_path: Path) -> Path:
    root = tmp_path / "clone"
    (root / "deploy" / "native").mkdir(parents=True)
    shutil.copy(ROOT / "deploy" / "native" / "bootstrap.sh", root / "deploy" / "native")
    (root / "deploy" / "native" / "constraints.txt").write_text("aiokafka==0.14.0\n")
    (root / "pyproject.toml").write_text("[project]\nname = 'genwire'\n")
    python = tmp_path / "home" / "venv" / "bin" / "python"
    python.parent.mkdir(parents=True)
    python.write_text(f'#!/bin/sh\necho "$*" >> {tmp_path / "pip.log"}\n')
    python.chmod(0o755)
    return root


def run_script(clone: Path, **env: str) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("GENWIRE_")}
    environ.update(GENWIRE_HOME=str(clone.parent / "home"), **env)
    return subprocess.run(
        ["bash", str(clone / "deploy" / "native" / "bootstrap.sh")],
        check=False,
        env=environ,
        capture_output=True,
        text=True,
        timeout=60,
    )


def bootstrap(clone: Path, **env: str) -> list[str]:
    """Run the script; the pip commands it ran."""
    log = clone.parent / "pip.log"
    log.unlink(missing_ok=True)
    done = run_script(clone, **env)
    assert done.returncode == 0, done.stderr
    return log.read_text().splitlines() if log.exists() else []


def test_installs_with_the_constraints_once_and_again_when_they_change(clone: Path) -> None:
    constraints = clone / "deploy" / "native" / "constraints.txt"
    ran = bootstrap(clone)
    assert ran == [f"-m pip install --progress-bar off -c {constraints} -e {clone}[all,dev]"]
    assert bootstrap(clone) == []  # nothing changed: no pip at all
    constraints.write_text("aiokafka==0.14.1\n")  # relocked
    assert bootstrap(clone) == ran


def test_unlocked_resolves_without_the_constraints_and_locked_returns_to_them(
    clone: Path,
) -> None:
    unlocked = bootstrap(clone, GENWIRE_UNLOCKED="1")
    assert unlocked == [
        f"-m pip install --progress-bar off --upgrade --upgrade-strategy eager -e {clone}[all,dev]"
    ]  # pip would keep every installed version that satisfies a range: upgrade them all
    assert bootstrap(clone, GENWIRE_UNLOCKED="1") == []  # resolved again tomorrow, not now
    relocked = bootstrap(clone)  # back to the tested set: pip runs again, with -c
    assert len(relocked) == 1 and " -c " in relocked[0]


def test_missing_constraints_fail_with_the_way_out(clone: Path) -> None:
    (clone / "deploy" / "native" / "constraints.txt").unlink()
    done = run_script(clone)
    assert done.returncode == 1
    assert "constraints.txt is missing (GENWIRE_UNLOCKED=1 installs without it)" in done.stderr
    assert not (clone.parent / "pip.log").exists()
