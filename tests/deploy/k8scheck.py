"""Build (once) and run deploy/kubernetes/check, the strict manifest check (docs/kubernetes.md).

The binary is cached as ``<GENWIRE_HOME>/bin/k8scheck-<hash>``, the hash taken over the
checker's go.mod, go.sum and Go sources and the Go version: a change to any of them builds a new
one, otherwise the cached one runs at once. Go's module and build caches live under
``<GENWIRE_HOME>/go`` and stay there, so a second cold build reuses the downloads and packages
(the native stack builds Jaeger with caches of its own, ``<GENWIRE_HOME>/go-jaeger``, removed
after its build: it never touches these).
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from genwire.settings import default_home

REPO = Path(__file__).resolve().parents[2]
KUBE_DIR = REPO / "deploy" / "kubernetes"
CHECK_DIR = KUBE_DIR / "check"
BUILD_TIMEOUT_S = 1500.0


def genwire_home() -> Path:
    return Path(os.environ.get("GENWIRE_HOME") or default_home())


def go_env(home: Path) -> dict[str, str]:
    go_root = home / "go"
    return {
        **os.environ,
        "GOMODCACHE": str(go_root / "mod"),
        "GOCACHE": str(go_root / "build-cache"),
        "GOPATH": str(go_root / "path"),
        "GOFLAGS": "-modcacherw",
        # go.mod's `go` line is what this machine's Go has: never fetch another toolchain.
        "GOTOOLCHAIN": "local",
    }


def source_hash(go: str) -> str:
    digest = hashlib.sha256()
    version = subprocess.run([go, "env", "GOVERSION"], capture_output=True, text=True, check=True)
    digest.update(version.stdout.strip().encode())
    for path in sorted([CHECK_DIR / "go.mod", CHECK_DIR / "go.sum", *CHECK_DIR.glob("*.go")]):
        digest.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()[:16]


@dataclass(frozen=True)
class Built:
    path: Path
    built_s: float | None
    """Seconds the build took in this call; None when the cached binary was used."""


def ensure_checker(home: Path | None = None) -> Built:
    """The checker binary for the current sources: the cached one, or built now."""
    go = shutil.which("go")
    if go is None:
        raise RuntimeError(
            "the Go toolchain is needed to build deploy/kubernetes/check (a prerequisite of "
            "`make up`, README: Prerequisites)"
        )
    home = home or genwire_home()
    bin_dir = home / "bin"
    bin_dir.mkdir(parents=True, exist_ok=True)
    target = bin_dir / f"k8scheck-{source_hash(go)}"
    if target.exists():
        return Built(target, None)
    # One build at a time (two pytest runs, or a pytest run and a person).
    with (bin_dir / ".k8scheck.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if target.exists():
            return Built(target, None)
        staging = target.with_name(f".{target.name}.{os.getpid()}")
        began = time.monotonic()
        result = subprocess.run(
            [go, "build", "-trimpath", "-o", str(staging), "."],
            check=False,
            cwd=CHECK_DIR,
            env=go_env(home),
            capture_output=True,
            text=True,
            timeout=BUILD_TIMEOUT_S,
        )
        if result.returncode != 0:
            staging.unlink(missing_ok=True)
            raise RuntimeError(f"building the k8s checker failed:\n{result.stderr[-4000:]}")
        staging.replace(target)
        for old in bin_dir.glob("k8scheck-*"):
            if old != target:
                old.unlink(missing_ok=True)
        return Built(target, time.monotonic() - began)


def run_checker(
    binary: Path, *paths: Path, out: Path | None = None
) -> subprocess.CompletedProcess[str]:
    args = [str(binary), *(["-o", str(out)] if out else []), *map(str, paths)]
    return subprocess.run(args, check=False, capture_output=True, text=True, timeout=300)
