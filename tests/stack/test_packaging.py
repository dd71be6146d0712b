"""Each service installs with only its own dependencies: ``pip install "genwire[<svc>]"``.

pyproject.toml has one distribution with a small base (what ``genwire/`` imports) and an extra per
service and tool group. For each service these tests check, offline, against the installed
metadata of the dev venv:

- statically: every third-party import in the service's package, and in every ``genwire`` module
  it reaches (at module level or inside a function; not under ``if TYPE_CHECKING:`` nor guarded by
  ``except ImportError``), comes from a distribution in the requirement closure of
  ``genwire[<svc>]`` (the base and the extra from pyproject.toml, then each requirement's own
  Requires-Dist, recursively);
- at run time: importing the service's app module in a fresh interpreter imports nothing
  third-party directly from our code outside that closure, and loads no model-toolchain
  distribution (torch, transformers, onnx, CUDA wheels, ...) that the closure lacks.
"""

from __future__ import annotations

import ast
import importlib.metadata as md
import json
import os
import re
import subprocess
import sys
import tomllib
from collections.abc import Iterator, Mapping
from functools import cache
from pathlib import Path

import pytest
from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[2]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
PROJECT = canonicalize_name(PYPROJECT["project"]["name"])
SERVICES = ("gateway", "preprocess", "inference", "postprocess", "monitor")
# Where each of our top-level packages lives in the repository.
PACKAGE_DIRS: dict[str, Path] = {
    "genwire": ROOT / "genwire",
    **{f"genwire_{svc}": ROOT / "services" / svc / f"genwire_{svc}" for svc in SERVICES},
    **{p.name: p for p in (ROOT / "tools").glob("genwire_*") if p.is_dir()},
}
# Loaded only where the extra asks for them: the model toolchain and the CUDA stack.
HEAVY = re.compile(r"^(torch|transformers|onnx|onnxruntime|tensorrt.*|triton|nvidia-.*|scipy)$")


# --- requirement closure -----------------------------------------------------------------------


def _own_requirements(extras: frozenset[str]) -> list[Requirement]:
    """The base plus the named extras of pyproject.toml (the file, not the installed copy)."""
    project = PYPROJECT["project"]
    reqs = [Requirement(r) for r in project["dependencies"]]
    optional: dict[str, list[str]] = project.get("optional-dependencies", {})
    for extra in extras:
        assert extra in optional, f"pyproject.toml has no extra {extra!r}"
        reqs += [Requirement(r) for r in optional[extra]]
    return reqs


def _applies(req: Requirement, extras: frozenset[str]) -> bool:
    if req.marker is None:
        return True
    env = {str(k): str(v) for k, v in default_environment().items()}
    return any(req.marker.evaluate({**env, "extra": extra}) for extra in extras | {""})


@cache
def closure(extras: frozenset[str]) -> frozenset[str]:
    """Canonical names of every distribution that ``pip install "genwire[extras]"`` installs."""
    seen: set[str] = set()
    todo: list[tuple[str, frozenset[str]]] = [(PROJECT, extras)]
    done: set[tuple[str, frozenset[str]]] = set()
    while todo:
        name, wanted = todo.pop()
        if (name, wanted) in done:
            continue
        done.add((name, wanted))
        if name == PROJECT:
            reqs = _own_requirements(wanted)
        else:
            seen.add(name)
            try:
                reqs = [Requirement(r) for r in md.requires(name) or []]
            except md.PackageNotFoundError:
                continue  # not installed here (another platform's marker): nothing to walk
        for req in reqs:
            if _applies(req, wanted):
                todo.append((canonicalize_name(req.name), frozenset(req.extras)))
    return frozenset(seen)


def service_closure(svc: str) -> frozenset[str]:
    return closure(frozenset({svc}))


# --- which distribution installs a module ------------------------------------------------------


@cache
def _dist_files(dist: str) -> frozenset[str]:
    files = md.distribution(dist).files or []
    return frozenset(str(f).replace(os.sep, "/") for f in files)


@cache
def _top_level() -> Mapping[str, list[str]]:
    return md.packages_distributions()


def module_distribution(name: str) -> str | None:
    """The installed distribution that provides module ``name`` (dotted), without importing it."""
    parts = name.split(".")
    candidates = _top_level().get(parts[0], [])
    if len(set(candidates)) == 1:
        return canonicalize_name(candidates[0])
    # A namespace package (opentelemetry, google): find the deepest part on disk, ask its RECORD.
    for entry in map(Path, sys.path):
        for depth in range(len(parts), 0, -1):
            rel = "/".join(parts[:depth])
            for tail in ("/__init__.py", ".py"):
                if (entry / (rel + tail)).is_file():
                    for dist in set(candidates):
                        if rel + tail in _dist_files(dist):
                            return canonicalize_name(dist)
    return None


# --- static imports ----------------------------------------------------------------------------


def _guarded(node: ast.AST) -> bool:
    if isinstance(node, ast.If):
        test = node.test
        return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
            isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
        )
    if isinstance(node, ast.Try):
        for handler in node.handlers:
            types = handler.type.elts if isinstance(handler.type, ast.Tuple) else [handler.type]
            if any(
                isinstance(t, ast.Name) and t.id in {"ImportError", "ModuleNotFoundError"}
                for t in types
            ):
                return True
    return False


def _imports(tree: ast.AST) -> Iterator[tuple[str, list[str]]]:
    """(module, imported names) of every absolute import outside guarded blocks."""
    for node in ast.iter_child_nodes(tree):
        if _guarded(node):
            assert isinstance(node, ast.If | ast.Try)
            # Only the guarded body is skipped: else/finally branches run unconditionally.
            rest: list[ast.stmt] = list(node.orelse)
            if isinstance(node, ast.Try):
                rest += node.finalbody
            for stmt in rest:
                yield from _imports(ast.Module(body=[stmt], type_ignores=[]))
            continue
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, []
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            yield node.module, [alias.name for alias in node.names]
        yield from _imports(node)


def _own_file(module: str) -> Path | None:
    top, *rest = module.split(".")
    base = PACKAGE_DIRS.get(top)
    if base is None:
        return None
    path = base.joinpath(*rest)
    for candidate in (path / "__init__.py", path.with_suffix(".py")):
        if candidate.is_file():
            return candidate
    return None


def _parents(module: str) -> Iterator[str]:
    parts = module.split(".")
    for depth in range(1, len(parts) + 1):
        yield ".".join(parts[:depth])


def third_party_imports(package: str) -> dict[str, set[str]]:
    """Third-party module -> our modules importing it, over ``package`` and what it reaches."""
    todo = [
        ".".join(
            (package, *p.relative_to(PACKAGE_DIRS[package]).with_suffix("").parts)
        ).removesuffix(".__init__")
        for p in PACKAGE_DIRS[package].rglob("*.py")
    ]
    seen: set[str] = set()
    found: dict[str, set[str]] = {}
    while todo:
        module = todo.pop()
        if module in seen:
            continue
        seen.add(module)
        path = _own_file(module)
        if path is None:
            continue
        for imported, names in _imports(ast.parse(path.read_text(), str(path))):
            top = imported.split(".")[0]
            if top in PACKAGE_DIRS:
                for name in [imported, *(f"{imported}.{n}" for n in names)]:
                    todo.extend(p for p in _parents(name) if _own_file(p))
            elif top not in sys.stdlib_module_names and top != "__future__":
                # `from pkg import sub`: sub may be a module of another distribution (namespaces)
                for key in [f"{imported}.{n}" for n in names] or [imported]:
                    found.setdefault(key, set()).add(module)
    return found


@pytest.mark.parametrize("svc", SERVICES)
def test_every_import_of_a_service_is_in_its_extra(svc: str) -> None:
    allowed = service_closure(svc)
    imports = third_party_imports(f"genwire_{svc}")
    missing = {}
    for module, users in sorted(imports.items()):
        dist = module_distribution(module)
        if dist is None or dist not in allowed:
            missing[module] = (dist, sorted(users)[:3])
    assert not missing, (
        f"genwire[{svc}] does not install what genwire_{svc} imports "
        f"(module: (distribution, imported by)): {missing}; add it to the {svc!r} extra "
        "or the base in pyproject.toml"
    )


# --- run time ----------------------------------------------------------------------------------

PROBE = r"""
import importlib, json, sys

direct = {}

class Recorder:
    # Notes the first import of each module that one of our modules asked for, and which one
    # asked (submodules too: a namespace package such as google is known by what is below it).
    def find_spec(self, fullname, path=None, target=None):
        if fullname in direct or fullname.split(".")[0] in OURS:
            return None
        frame = sys._getframe(1)
        while frame and frame.f_globals.get("__name__", "").startswith(("importlib", "_frozen")):
            frame = frame.f_back
        importer = frame.f_globals.get("__name__", "") if frame else ""
        if importer.split(".")[0] in OURS:
            direct[fullname] = importer
        return None

OURS = set(sys.argv[2].split(","))
sys.meta_path.insert(0, Recorder())
importlib.import_module(sys.argv[1])
files = {
    name: getattr(module, "__file__", None)
    for name, module in list(sys.modules.items())
    if name.split(".")[0] not in OURS
}
print(json.dumps({"direct": direct, "files": {k: v for k, v in files.items() if v}}))
"""


def _owner(path: str) -> str | None:
    """The distribution whose RECORD lists ``path`` (a module file)."""
    resolved = Path(path).resolve()
    for entry in map(Path, sys.path):
        try:
            rel = resolved.relative_to(entry.resolve()).as_posix()
        except (ValueError, OSError):
            continue
        for dist in set(_top_level().get(rel.split("/")[0].removesuffix(".py"), [])):
            if rel in _dist_files(dist):
                return canonicalize_name(dist)
    return None


@pytest.mark.parametrize("svc", SERVICES)
def test_a_service_loads_nothing_outside_its_extra(svc: str) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GENWIRE_")}
    run = subprocess.run(
        [sys.executable, "-c", PROBE, f"genwire_{svc}.app", ",".join(PACKAGE_DIRS)],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        cwd=ROOT,
        check=False,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    report = json.loads(run.stdout.splitlines()[-1])
    allowed = service_closure(svc)
    names: dict[str, str] = report["direct"]
    resolved = {
        name: module_distribution(name)
        for name in names
        if name.split(".")[0] not in sys.stdlib_module_names
    }
    # A namespace package (google, opentelemetry.sdk) belongs to no one distribution: it is
    # judged by the modules below it, and stands for itself only if none of them resolved.
    direct = {
        name: (dist, names[name])
        for name, dist in resolved.items()
        if dist is not None
        or not any(d is not None and other.startswith(f"{name}.") for other, d in resolved.items())
    }
    outside = {top: v for top, v in direct.items() if v[0] not in allowed}
    assert not outside, f"genwire_{svc} imports outside genwire[{svc}]: {outside}"
    loaded = {_owner(path) for path in report["files"].values()} - {None}
    heavy = {d for d in loaded if d and HEAVY.match(d) and d not in allowed}
    assert not heavy, f"importing genwire_{svc}.app loads {sorted(heavy)}, not in its extra"


# --- the extras themselves ---------------------------------------------------------------------


def test_no_service_extra_installs_the_model_toolchain() -> None:
    for svc in SERVICES:
        own = {"scipy"} if svc == "monitor" else set()  # the monitor's drift statistics
        heavy = sorted(d for d in service_closure(svc) if HEAVY.match(d) and d not in own)
        assert not heavy, f"genwire[{svc}] installs {heavy}"
    assert {"torch", "transformers", "onnx", "onnxruntime"} <= closure(frozenset({"model"}))


def test_all_extra_is_every_service_and_tool_group() -> None:
    optional = PYPROJECT["project"]["optional-dependencies"]
    (req,) = (Requirement(r) for r in optional["all"])
    assert canonicalize_name(req.name) == PROJECT
    assert req.extras == {*SERVICES, "model", "tools"}
    assert {"dev", "gpu", *req.extras} <= set(optional)


# TensorRT is the gpu extra; the model's runtime/ runs inside Triton (its stub provides these).
OUTSIDE_ANY_EXTRA = {"tensorrt", "modelopt", "triton_python_backend_utils", "genwire_runtime"}


@pytest.mark.parametrize(
    ("package", "extras"),
    [
        ("genwire_cli", {"tools"}),
        ("genwire_stack", {"tools"}),
        ("genwire_bench", {"tools"}),
        ("genwire_chaos", {"tools"}),
        ("genwire_model", {"model"}),
    ],
)
def test_every_import_of_a_tool_is_in_its_extra(package: str, extras: set[str]) -> None:
    allowed = closure(frozenset(extras))
    missing = {}
    for module, users in sorted(third_party_imports(package).items()):
        if module.split(".")[0] in OUTSIDE_ANY_EXTRA:
            continue
        dist = module_distribution(module)
        if dist is None or dist not in allowed:
            missing[module] = (dist, sorted(users)[:3])
    assert not missing, (
        f"genwire[{','.join(sorted(extras))}] lacks what {package} imports: {missing}"
    )
