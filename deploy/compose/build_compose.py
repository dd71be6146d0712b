#!/usr/bin/env python3
"""Build the Docker Compose CLI from the Go module proxy into the genwire home, once.

The compose CLI's ``config`` command validates and renders ``compose.yaml`` (and the GPU
override) without a Docker engine, so tests/stack/test_compose.py runs the real parser.
``go install github.com/docker/compose/v5/cmd@…`` is refused (its go.mod has ``exclude``
directives), so the module is downloaded (``go mod download``) and built inside its own folder,
with the shared Go caches of the stack's tools (``<GENWIRE_HOME>/go/{mod,build-cache,path}``;
Jaeger builds in a root of its own, removed after its build). A cold build takes several
minutes on two cores; every later run returns at once. The
binary lands in ``<GENWIRE_HOME>/opt/compose-<version>/docker-compose`` (built into a staging
folder first, so an interrupted build leaves nothing half-written behind).

    python deploy/compose/build_compose.py          # prints the binary's path
    python deploy/compose/build_compose.py --force  # rebuild

Version: v5.6.0, the newest release whose go.mod accepts the Go toolchain the stack already
uses (1.26.8; v5.7.x asks for 1.26.10). Standard library only: the test runs it as a subprocess.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

MODULE = "github.com/docker/compose/v5"
VERSION = "v5.6.0"


def genwire_home() -> Path:
    """``GENWIRE_HOME``, default ``~/.cache/genwire`` (as in the Makefile and genwire.settings)."""
    return Path(os.environ.get("GENWIRE_HOME") or "~/.cache/genwire").expanduser()


def compose_path(home: Path | None = None) -> Path:
    """Where the cached binary lives."""
    base = (home or genwire_home()) / "opt" / f"compose-{VERSION.removeprefix('v')}"
    return base / "docker-compose"


def _works(binary: Path) -> bool:
    if not (binary.is_file() and os.access(binary, os.X_OK)):
        return False
    try:
        proc = subprocess.run(
            [str(binary), "version", "--short"], capture_output=True, timeout=30, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return proc.returncode == 0


def _run(cmd: list[str], env: dict[str, str], cwd: Path, what: str) -> str:
    proc = subprocess.run(
        cmd, env=env, cwd=cwd, stdin=subprocess.DEVNULL, capture_output=True, text=True, check=False
    )
    if proc.returncode != 0:
        raise SystemExit(
            f"build_compose: {what} failed (exit {proc.returncode}); check access to the Go "
            f"module proxy (proxy.golang.org).\n{proc.stderr[-4000:]}{proc.stdout[-2000:]}"
        )
    return proc.stdout


def build(home: Path | None = None, *, force: bool = False, log=sys.stderr) -> Path:
    """Return the path of a working compose CLI, building it first when it is missing."""
    home = home or genwire_home()
    dest = compose_path(home)
    if not force and _works(dest):
        return dest
    go = shutil.which("go")
    if go is None:
        raise SystemExit("build_compose: the Go toolchain is missing (https://go.dev/dl/)")
    go_root = home / "go"
    go_root.mkdir(parents=True, exist_ok=True)
    env = {
        **os.environ,
        "GOMODCACHE": str(go_root / "mod"),
        "GOCACHE": str(go_root / "build-cache"),
        "GOPATH": str(go_root / "path"),
        "GOFLAGS": "-modcacherw",
        "GOTOOLCHAIN": "local",
        "CGO_ENABLED": "0",
    }
    print(f"build_compose: building {MODULE}@{VERSION} (minutes when cold)", file=log, flush=True)
    started = time.monotonic()
    out = _run(
        [go, "mod", "download", "-json", f"{MODULE}@{VERSION}"],
        env,
        go_root,
        f"go mod download {MODULE}@{VERSION}",
    )
    src = Path(json.loads(out)["Dir"])
    staging = dest.parent.with_name(dest.parent.name + ".staging")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        _run(
            [
                go,
                "build",
                "-trimpath",
                "-ldflags",
                f"-w -X {MODULE}/internal.Version={VERSION}",
                "-o",
                str(staging / "docker-compose"),
                "./cmd",
            ],
            env,
            src,
            "go build ./cmd",
        )
        shutil.rmtree(dest.parent, ignore_errors=True)
        staging.rename(dest.parent)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    print(
        f"build_compose: built {dest} in {time.monotonic() - started:.0f} s", file=log, flush=True
    )
    return dest


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--force", action="store_true", help="rebuild even when cached")
    args = parser.parse_args(argv)
    print(build(force=args.force))
    return 0


if __name__ == "__main__":
    sys.exit(main())
