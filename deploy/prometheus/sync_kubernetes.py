#!/usr/bin/env python3
"""Copy the rules and Grafana files into deploy/kubernetes/components/monitoring/.

Kustomize reads no file outside a kustomization's folder, so the component holds copies of
deploy/prometheus/rules/*.rules.yml and deploy/grafana/{genwire.json,provisioning/}.

    python deploy/prometheus/sync_kubernetes.py          # copy
    python deploy/prometheus/sync_kubernetes.py --check  # fail if a copy differs (the tests do)
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

DEPLOY = Path(__file__).resolve().parent.parent
COMPONENT = DEPLOY / "kubernetes" / "components" / "monitoring"


def pairs() -> list[tuple[Path, Path]]:
    """(source, copy) of every file the component carries."""
    out = [
        (p, COMPONENT / "rules" / p.name)
        for p in sorted((DEPLOY / "prometheus" / "rules").glob("*.rules.yml"))
    ]
    grafana = DEPLOY / "grafana"
    for rel in (
        "genwire.json",
        "provisioning/datasources/prometheus.yml",
        "provisioning/dashboards/genwire.yml",
    ):
        out.append((grafana / rel, COMPONENT / rel))
    return out


def stale() -> list[str]:
    """Copies that are missing or differ, and copies of rule files that no longer exist."""
    wrong = [
        str(dst) for src, dst in pairs() if not dst.exists() or dst.read_bytes() != src.read_bytes()
    ]
    expected = {dst for _, dst in pairs()}
    wrong += [str(p) for p in (COMPONENT / "rules").glob("*") if p not in expected]
    return wrong


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail if a copy is stale")
    args = parser.parse_args(argv)
    if args.check:
        wrong = stale()
        for path in wrong:
            print(f"stale: {path} (run {Path(__file__).name})", file=sys.stderr)
        return 1 if wrong else 0
    for src, dst in pairs():
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, dst)
    expected = {dst for _, dst in pairs()}
    for extra in (COMPONENT / "rules").glob("*"):
        if extra not in expected:
            extra.unlink()
    return 0


if __name__ == "__main__":
    sys.exit(main())
