#!/usr/bin/env python3
"""Build ``promtool`` from the Go module proxy into the genwire home, once.

``go install github.com/prometheus/prometheus/cmd/promtool@v0.316.0`` (Prometheus 3.16) with the
shared Go caches of the stack's tools (``<GENWIRE_HOME>/go/{mod,build-cache,path}``; Jaeger builds
in a root of its own, removed after its build), so a
cold build takes several minutes on two cores and every later run returns at once. The binary
lands in ``<GENWIRE_HOME>/opt/promtool-0.316.0/promtool`` (built into a staging folder first, so an
interrupted build leaves nothing half-written behind).

    python deploy/prometheus/build_promtool.py          # prints the binary's path
    python deploy/prometheus/build_promtool.py --force  # rebuild

Standard library only: tests/prometheus/ runs it as a subprocess.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

MODULE = "github.com/prometheus/prometheus/cmd/promtool"
VERSION = "v0.316.0"


def genwire_home() -> Path:
    """``GENWIRE_HOME``, default ``~/.cache/genwire`` (as in the Makefile and genwire.settings)."""
    return Path(os.environ.get("GENWIRE_HOME") or "~/.cache/genwire").expanduser()


def promtool_path(home: Path | None = None) -> Path:
    """Where the cached binary lives."""
    return (home or genwire_home()) / "opt" / f"promtool-{VERSION.removeprefix('v')}" / "promtool"


def _works(binary: Path) -> bool:
    if not (binary.is_file() and os.access(binary, os.X_OK)):
        return False
    try:
        proc = subprocess.run(
            [str(binary), "--version"], capture_output=True, timeout=30, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return proc.returncode == 0


def build(home: Path | None = None, *, force: bool = False, log=sys.stderr) -> Path:
    """Return the path of a working promtool, building it first when it is missing."""
    home = home or genwire_home()
    dest = promtool_path(home)
    if not force and _works(dest):
        return dest
    go = shutil.which("go")
    if go is None:
        raise SystemExit("build_promtool: the Go toolchain is missing (https://go.dev/dl/)")
    go_root = home / "go"
    staging = dest.parent.with_name(dest.parent.name + ".staging")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    env = {
        **os.environ,
        "GOMODCACHE": str(go_root / "mod"),
        "GOCACHE": str(go_root / "build-cache"),
        "GOPATH": str(go_root / "path"),
        "GOBIN": str(staging),
        "GOFLAGS": "-modcacherw",
    }
    print(
        f"build_promtool: go install {MODULE}@{VERSION} (minutes when cold)", file=log, flush=True
    )
    started = time.monotonic()
    try:
        proc = subprocess.run(
            [go, "install", "-trimpath", f"{MODULE}@{VERSION}"],
            env=env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            check=False,
        )
        if proc.returncode != 0:
            raise SystemExit(
                f"build_promtool: go install failed (exit {proc.returncode}); check access to the "
                f"Go module proxy.\n{proc.stderr[-4000:]}"
            )
        shutil.rmtree(dest.parent, ignore_errors=True)
        staging.rename(dest.parent)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    print(
        f"build_promtool: built {dest} in {time.monotonic() - started:.0f} s", file=log, flush=True
    )
    return dest


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--force", action="store_true", help="rebuild even when cached")
    args = parser.parse_args(argv)
    print(build(force=args.force))
    return 0


if __name__ == "__main__":
    sys.exit(main())
