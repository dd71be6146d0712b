"""Bad checkpoints: a clear error naming the problem, and no version left behind."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from genwire_model.build import BuildError, BuildOptions, build_version
from genwire_model.checkpoint import CheckpointError, inspect_checkpoint


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def _assert_nothing_built(repository: Path, name: str) -> None:
    model_dir = repository / name
    leftovers = [p.name for p in model_dir.iterdir()] if model_dir.exists() else []
    assert not [n for n in leftovers if n.isdigit() or n.startswith(".building")], leftovers


def test_missing_folder(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="does not exist"):
        inspect_checkpoint(tmp_path / "nope")


def test_missing_config(tmp_path: Path, tiny_checkpoint: Path) -> None:
    ck = _copy(tiny_checkpoint, tmp_path / "ck")
    (ck / "config.json").unlink()
    with pytest.raises(CheckpointError, match=r"no config\.json"):
        build_version(ck, "m", tmp_path / "repo")
    _assert_nothing_built(tmp_path / "repo", "m")


def test_missing_weights(tmp_path: Path, tiny_checkpoint: Path) -> None:
    ck = _copy(tiny_checkpoint, tmp_path / "ck")
    for weights in ck.glob("*.safetensors"):
        weights.unlink()
    with pytest.raises(CheckpointError, match="no weights"):
        build_version(ck, "m", tmp_path / "repo")
    _assert_nothing_built(tmp_path / "repo", "m")


def test_missing_tokenizer(tmp_path: Path, tiny_checkpoint: Path) -> None:
    ck = _copy(tiny_checkpoint, tmp_path / "ck")
    (ck / "tokenizer.json").unlink()
    with pytest.raises(CheckpointError, match=r"no tokenizer\.json"):
        build_version(ck, "m", tmp_path / "repo")


def test_unsupported_architecture(tmp_path: Path, tiny_checkpoint: Path) -> None:
    ck = _copy(tiny_checkpoint, tmp_path / "ck")
    config = json.loads((ck / "config.json").read_text())
    config["model_type"] = "bert"
    config["architectures"] = ["BertForMaskedLM"]
    (ck / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match=r"unsupported architecture model_type='bert'"):
        build_version(ck, "m", tmp_path / "repo")
    _assert_nothing_built(tmp_path / "repo", "m")


def test_corrupt_weights_leave_no_version(tmp_path: Path, tiny_checkpoint: Path) -> None:
    ck = _copy(tiny_checkpoint, tmp_path / "ck")
    for weights in ck.glob("*.safetensors"):
        weights.write_bytes(b"not a safetensors file")
    with pytest.raises(Exception, match=r"(?i)safetensors|header|deserializ"):
        build_version(ck, "m", tmp_path / "repo")
    _assert_nothing_built(tmp_path / "repo", "m")


def test_bad_options(tmp_path: Path, tiny_checkpoint: Path) -> None:
    with pytest.raises(BuildError, match="tensorrt must be"):
        build_version(tiny_checkpoint, "m", tmp_path, BuildOptions(tensorrt="maybe"))


def test_cli_reports_the_problem(tmp_path: Path) -> None:
    (tmp_path / "ck").mkdir()
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "genwire_cli",
            "model",
            "build",
            "--checkpoint",
            str(tmp_path / "ck"),
            "--repository",
            str(tmp_path / "repo"),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 2
    assert "no config.json" in result.stderr
