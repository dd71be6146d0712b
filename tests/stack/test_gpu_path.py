"""`make up GPU=1` installs the gpu extra; `make gpu-check` refuses clearly without a GPU."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
from genwire_stack.paths import repo_root


def make_dry_run(*args: str) -> str:
    proc = subprocess.run(
        ["make", "-n", *args], cwd=repo_root(), capture_output=True, text=True, check=True
    )
    return proc.stdout


@pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")
def test_gpu_flag_adds_the_gpu_extra_to_the_virtualenv() -> None:
    assert "all,dev,gpu" in make_dry_run("venv", "GPU=1")
    assert "all,dev,gpu" in make_dry_run("up", "GPU=1")
    assert "gpu" not in make_dry_run("venv")


@pytest.mark.skipif(shutil.which("nvidia-smi") is not None, reason="a GPU may be here")
def test_gpu_check_says_there_is_no_gpu_and_exits_2() -> None:
    proc = subprocess.run(
        ["deploy/gpu/gpu_check.sh"],
        cwd=repo_root(),
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert proc.returncode == 2, proc.stderr
    assert "no NVIDIA GPU" in proc.stderr


def test_build_takes_a_context_cap() -> None:
    from genwire_cli.main import build_parser

    parser = build_parser()
    args = parser.parse_args(["model", "build", "--checkpoint", "ckpt", "--max-context", "128"])
    assert args.context == 128
    legacy = parser.parse_args(["model", "build", "--checkpoint", "ckpt", "--context", "64"])
    assert legacy.context == 64
    assert parser.parse_args(["model", "build", "--checkpoint", "ckpt"]).context is None


def test_a_context_cap_below_two_tokens_is_refused(tmp_path: Path) -> None:
    """0 would otherwise fall through to the checkpoint's full context, unnoticed."""
    from genwire_model.build import BuildError, BuildOptions, build_version

    for cap in (0, 1, -8):
        with pytest.raises(BuildError, match="max context must be >= 2"):
            build_version(tmp_path / "no-checkpoint", "m", tmp_path, BuildOptions(context=cap))
