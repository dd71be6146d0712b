"""The committed generated code matches proto/; the check catches a real drift."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "proto" / "generate.py"
COMMITTED = ROOT / "genwire" / "proto"


def _check(out: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(SCRIPT), "--check", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_committed_code_matches_the_protos() -> None:
    run = _check(COMMITTED)
    assert run.returncode == 0, run.stdout + run.stderr


def test_a_drifted_copy_fails_the_check(tmp_path: Path) -> None:
    copy = tmp_path / "proto"
    shutil.copytree(COMMITTED, copy, ignore=shutil.ignore_patterns("__pycache__"))
    grpc_module = copy / "v1" / "generation_pb2_grpc.py"
    grpc_module.write_text(grpc_module.read_text().replace("Generate", "Generat3", 1))
    (copy / "v1" / "stale_pb2.py").write_text("# left behind by an old proto\n")
    run = _check(copy)
    assert run.returncode == 1
    assert "generation_pb2_grpc.py" in run.stdout and "stale_pb2.py" in run.stdout


def test_generated_code_imports_under_genwire_proto() -> None:
    from genwire.proto.v1 import generation_pb2, generation_pb2_grpc

    assert generation_pb2.DESCRIPTOR.package == "genwire.v1"
    assert hasattr(generation_pb2_grpc, "GenerationServiceStub")
