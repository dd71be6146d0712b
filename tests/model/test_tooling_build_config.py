"""A build and the model's shared config.pbtxt: each version serves its own build options, an
operator's settings survive a new build, and a killed build leaves no staging folder behind.

The export is stood in for (``build._assemble``): these are about publication, not ONNX."""

from __future__ import annotations

import argparse
import fcntl
import importlib.util
import json
import os
import re
import signal
import subprocess
import sys
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from genwire_model import DEFAULT_MODEL_NAME, build, cli
from genwire_model.build import BuildOptions, build_version

TOOLS = Path(build.__file__).resolve().parents[1]


def _fake_assemble(
    info: Any, out: Path, context: int, opts: BuildOptions, progress: Any
) -> dict[str, Any]:
    (out / "model.onnx").write_bytes(b"onnx")
    return {"context_length": context, "build": {"options": opts.to_json()}}


@pytest.fixture
def no_export(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(build, "inspect_checkpoint", lambda _p: types.SimpleNamespace(context=64))
    monkeypatch.setattr(build, "_assemble", _fake_assemble)


def _build(repo: Path, name: str = "m", **options: Any) -> int:
    opts = BuildOptions(**options)
    return build_version(repo / "ckpt", name, repo, opts, lambda _: None).version


def _parameters(config: str) -> dict[str, str]:
    """config.pbtxt's parameters, as Triton hands them to the model (``model_config``)."""
    pattern = r'parameters\s*\{\s*key:\s*"(\w+)"\s*value\s*\{\s*string_value:\s*"([^"]*)"\s*\}\s*\}'
    return dict(re.findall(pattern, config))


def _line(key: str, value: str) -> str:
    return f'parameters {{ key: "{key}" value {{ string_value: "{value}" }} }}'


# -- the runtime reads each version's own options ---------------------------------------------


@pytest.fixture
def runtime(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[Any]:
    """``triton_model.py`` as Triton loads it (beside a copy of genwire_runtime), with the
    runner and the scheduler stood in for: what ``initialize`` passes them is recorded."""
    stub = types.ModuleType("triton_python_backend_utils")
    stub.Logger = types.SimpleNamespace(  # type: ignore[attr-defined]
        log_info=lambda _m: None, log_warn=lambda _m: None, log_error=lambda _m: None
    )
    monkeypatch.setitem(sys.modules, "triton_python_backend_utils", stub)
    code = tmp_path / "code"
    code.mkdir()
    build._copy_runtime(code)
    saved_path = list(sys.path)
    spec = importlib.util.spec_from_file_location("genwire_test_tooling_model", code / "model.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    seen: dict[str, Any] = {}

    class Scheduler:
        def __init__(self, runner: Any, **kw: Any) -> None:
            seen.update(kw)

        def start(self) -> None:
            return None

    def create_runner(_version_dir: Path, threads: int, **_kw: Any) -> Any:
        seen["threads"] = threads
        return types.SimpleNamespace(backend="stub")

    monkeypatch.setattr(module, "Scheduler", Scheduler)
    monkeypatch.setattr(module, "create_runner", create_runner)
    monkeypatch.setattr(module, "ConstraintCompiler", None)
    module.seen = seen
    try:
        yield module
    finally:
        sys.path[:] = saved_path
        for name in [n for n in sys.modules if n.split(".")[0] == "genwire_runtime"]:
            del sys.modules[name]


def _initialize(runtime: Any, model_dir: Path, version: int) -> dict[str, Any]:
    manifest = json.loads((model_dir / str(version) / "manifest.json").read_text())
    manifest.update(shape={"vocab_size": 16}, eos_token_ids=[0])
    (model_dir / str(version) / "manifest.json").write_text(json.dumps(manifest))
    params = _parameters((model_dir / "config.pbtxt").read_text())
    config = {"parameters": {k: {"string_value": v} for k, v in params.items()}}
    runtime.seen.clear()
    runtime.TritonPythonModel().initialize(
        {
            "model_instance_name": "m_0",
            "model_name": "m",
            "model_version": str(version),
            "model_repository": str(model_dir),
            "model_config": json.dumps(config),
        }
    )
    return {k: runtime.seen[k] for k in ("max_batch", "stream_interval", "threads")}


def test_a_new_build_does_not_change_the_options_older_versions_serve_with(
    no_export: None, runtime: Any, tmp_path: Path
) -> None:
    assert _build(tmp_path, max_batch=4, stream_interval=4, intra_op_threads=2) == 1
    assert _build(tmp_path) == 2
    model_dir = tmp_path / "m"
    assert _initialize(runtime, model_dir, 1) == {
        "max_batch": 4,
        "stream_interval": 4,
        "threads": 2,
    }
    assert _initialize(runtime, model_dir, 2) == {
        "max_batch": 32,
        "stream_interval": 1,
        "threads": 1,
    }
    # An override_* parameter is an explicit override, for every version.
    config = model_dir / "config.pbtxt"
    config.write_text(config.read_text() + _line("override_max_batch", "8") + "\n")
    assert _initialize(runtime, model_dir, 1)["max_batch"] == 8
    assert _initialize(runtime, model_dir, 2)["max_batch"] == 8


def _old_build(repo: Path, version: int, **options: Any) -> None:
    """Version ``version`` of m as a build before per-version options left it: its options in
    its manifest and in config.pbtxt too, which its own runtime (a copy of the runtime of that
    time) reads: ``int(params.get("max_batch", "32"))``."""
    opts = BuildOptions(**options)
    model_dir = repo / "m"
    (model_dir / str(version)).mkdir(parents=True)
    (model_dir / str(version) / "manifest.json").write_text(
        json.dumps({"context_length": 64, "build": {"options": opts.to_json()}})
    )
    legacy = {
        "max_batch": str(opts.max_batch),
        "intra_op_threads": str(opts.intra_op_threads),
        "stream_interval": str(opts.stream_interval),
    }
    lines = "\n".join(_line(k, v) for k, v in legacy.items())
    (model_dir / "config.pbtxt").write_text(build.render_config("m") + lines + "\n")


def _old_runtime_options(config: str) -> dict[str, int]:
    """What the runtime of a version built before per-version options serves with."""
    params = _parameters(config)
    return {
        "max_batch": int(params.get("max_batch", "32")),
        "stream_interval": int(params.get("stream_interval", "1")),
        "threads": int(params.get("intra_op_threads", "1")),
    }


def test_a_new_build_keeps_the_legacy_options_versions_built_before_it_read(
    no_export: None, runtime: Any, tmp_path: Path
) -> None:
    _old_build(tmp_path, 1, max_batch=8, stream_interval=4, intra_op_threads=2)
    assert _build(tmp_path, max_batch=4) == 2
    model_dir = tmp_path / "m"
    config = model_dir / "config.pbtxt"
    v1 = {"max_batch": 8, "stream_interval": 4, "threads": 2}
    # Version 1's own (old) runtime still reads its build's options from the config...
    assert _old_runtime_options(config.read_text()) == v1
    # ... and a third build keeps them too (the build never writes them itself).
    assert _build(tmp_path) == 3
    assert _old_runtime_options(config.read_text()) == v1
    # The current runtime ignores them: each version serves its own manifest's options.
    assert _initialize(runtime, model_dir, 2) == {
        "max_batch": 4,
        "stream_interval": 1,
        "threads": 1,
    }
    assert _initialize(runtime, model_dir, 3) == {
        "max_batch": 32,
        "stream_interval": 1,
        "threads": 1,
    }
    # An override_* parameter wins over the manifest, and a build keeps it.
    config.write_text(
        config.read_text()
        + _line("override_max_batch", "16")
        + "\n"
        + _line("override_stream_interval", "2")
        + "\n"
        + _line("override_intra_op_threads", "3")
        + "\n"
    )
    assert _build(tmp_path) == 4
    params = _parameters(config.read_text())
    assert params["override_max_batch"] == "16" and params["max_batch"] == "8"
    for version in (2, 4):
        assert _initialize(runtime, model_dir, version) == {
            "max_batch": 16,
            "stream_interval": 2,
            "threads": 3,
        }


def test_a_build_keeps_what_an_operator_set_in_the_config(no_export: None, tmp_path: Path) -> None:
    _build(tmp_path, max_batch=4)
    config = tmp_path / "m" / "config.pbtxt"
    text = config.read_text()
    text = text.replace(
        "instance_group [ { count: 1 kind: KIND_CPU } ]",
        "instance_group [\n  { count: 2 kind: KIND_GPU gpus: [ 0, 1 ] }\n]",
    )
    text = text.replace(
        '"ort_allow_spinning" value { string_value: "0" }',
        '"ort_allow_spinning" value { string_value: "1" }',
    )
    text += 'parameters {\n  key: "stream_responses_per_s"\n  value { string_value: "50" }\n}\n'
    text += _line("max_batch", "4") + "\n"  # as an older build wrote it
    text = text.replace(
        "version_policy: { latest: { num_versions: 1 } }",
        "version_policy: { specific: { versions: [ 1 ] } }",
    )
    config.write_text(text)

    _build(tmp_path)
    after = config.read_text()
    params = _parameters(after)
    assert params["stream_responses_per_s"] == "50"
    assert params["ort_allow_spinning"] == "1"
    assert params["cancel_check_interval"] == "4"  # what the build writes stays there
    # What an older build wrote stays, for the versions it built (their runtime reads it).
    assert params["max_batch"] == "4"
    assert not {"stream_interval", "intra_op_threads"} & set(params)  # never written by a build
    assert "instance_group [\n  { count: 2 kind: KIND_GPU gpus: [ 0, 1 ] }\n]" in after
    assert after.count("instance_group") == 1
    assert "specific: { versions: [ 1 ] }" in after
    assert 'name: "m"' in after and "decoupled: true" in after


def test_the_config_is_written_once_the_version_is_in_place(
    no_export: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _build(tmp_path)
    config = tmp_path / "m" / "config.pbtxt"
    seen: list[bool] = []
    replace = os.replace

    def spy(src: Any, dst: Any) -> None:
        if Path(dst) == config:
            seen.append((config.parent / "2" / "manifest.json").is_file())
        replace(src, dst)

    monkeypatch.setattr(build.os, "replace", spy)
    _build(tmp_path)
    assert seen == [True]


@pytest.mark.parametrize("fail_on", ["config", "rename"])
def test_a_failed_config_write_adds_no_version(
    no_export: None,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    fail_on: str,
) -> None:
    _build(tmp_path)
    model_dir = tmp_path / "m"
    config = model_dir / "config.pbtxt"
    before = config.read_text()
    write_text, rename = Path.write_text, Path.rename
    failing = [True]

    def full_disk(path: Path, *a: Any, **kw: Any) -> int:
        if failing[0] and path.name.startswith(".config.pbtxt."):
            path.touch()  # what a write that ran out of space leaves
            raise OSError(28, "No space left on device", str(path))
        return write_text(path, *a, **kw)

    def rename_fails(path: Path, target: Any) -> Any:
        if failing[0] and path.name.startswith(".building-"):
            raise OSError(5, "Input/output error", str(path))
        return rename(path, target)

    if fail_on == "config":
        monkeypatch.setattr(Path, "write_text", full_disk)
    else:
        monkeypatch.setattr(Path, "rename", rename_fails)
    args = _parse(["build", "--checkpoint", str(tmp_path), "--repository", str(tmp_path)])
    args.name = "m"
    assert args.func(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("genwire model build: ") and err.count("\n") == 1
    assert sorted(p.name for p in model_dir.iterdir() if not p.name.startswith(".build.")) == [
        "1",
        "config.pbtxt",
    ]
    assert config.read_text() == before
    failing[0] = False
    assert _build(tmp_path) == 2  # the next build takes the number


def test_a_staging_folder_whose_lock_fails_is_removed(
    no_export: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_lock(_staging: Path) -> Any:
        raise OSError(37, "No locks available")

    monkeypatch.setattr(build, "_own", no_lock)
    with pytest.raises(OSError, match="No locks available"):
        _build(tmp_path)
    assert list((tmp_path / "m").glob(".building-*")) == []


# -- staging folders of killed builds ---------------------------------------------------------


def test_a_build_removes_dead_builds_staging_folders_only(no_export: None, tmp_path: Path) -> None:
    model_dir = tmp_path / "m"
    dead, old, live = (model_dir / f".building-{n}" for n in ("dead", "old", "live"))
    for folder in (dead, old, live):
        folder.mkdir(parents=True)
        (folder / "model.onnx").write_bytes(b"x" * 1024)
    (dead / ".owner.lock").write_text("")  # its owner died: nobody holds the lock
    with (live / ".owner.lock").open("w") as held:  # a build running now
        fcntl.flock(held, fcntl.LOCK_EX)
        assert _build(tmp_path) == 1
        assert live.is_dir()
    assert not dead.exists() and not old.exists()
    assert not (model_dir / "1" / ".owner.lock").exists()


_SLOW_BUILD = """
import argparse, sys, time, types
from genwire_model import DEFAULT_MODEL_NAME, build, cli

def assemble(info, out, context, opts, progress):
    print("assembling", flush=True)
    time.sleep(60)

build.inspect_checkpoint = lambda _p: types.SimpleNamespace(context=64)
build._assemble = assemble
parser = argparse.ArgumentParser()
cli.register(parser.add_subparsers())
repo = sys.argv[1]
args = parser.parse_args(["model", "build", "--checkpoint", repo, "--repository", repo])
sys.exit(args.func(args))
"""


def _start_slow_build(tmp_path: Path) -> subprocess.Popen[str]:
    """``genwire model build`` in a process of its own, stopped in the middle of assembling."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TOOLS), *sys.path])}
    process = subprocess.Popen(
        [sys.executable, "-c", _SLOW_BUILD, str(tmp_path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    assert process.stdout is not None and process.stderr is not None
    for line in process.stdout:
        if line.startswith("assembling"):
            return process
    process.wait()
    raise AssertionError(f"the build did not start: {process.stderr.read()[-2000:]}")


def _staging(tmp_path: Path) -> list[str]:
    return sorted(p.name for p in (tmp_path / DEFAULT_MODEL_NAME).glob(".building-*"))


@pytest.mark.slow
def test_sigterm_ends_a_build_with_its_staging_folder_removed(tmp_path: Path) -> None:
    process = _start_slow_build(tmp_path)
    assert len(_staging(tmp_path)) == 1
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=30) == 128 + signal.SIGTERM
    assert _staging(tmp_path) == []


@pytest.mark.slow
def test_the_next_build_removes_what_a_killed_build_left(no_export: None, tmp_path: Path) -> None:
    process = _start_slow_build(tmp_path)
    process.kill()
    process.wait(timeout=30)
    assert len(_staging(tmp_path)) == 1  # SIGKILL: no cleanup ran
    assert _build(tmp_path, DEFAULT_MODEL_NAME) == 1
    assert _staging(tmp_path) == []


# -- the build and bench commands' errors -----------------------------------------------------


def _parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    cli.register(parser.add_subparsers())
    return parser.parse_args(["model", *argv])


@pytest.mark.parametrize(
    ("raised", "said", "rc"),
    [
        (
            OSError(28, "No space left on device", "/r/m/.config.pbtxt.1a2b"),
            "genwire model build: No space left on device (/r/m/.config.pbtxt.1a2b)\n",
            2,
        ),
        (
            ConnectionRefusedError(111, "Connection refused"),
            "genwire model build: Connection refused\n",
            2,
        ),
        (KeyboardInterrupt(), "genwire model build: interrupted; nothing was added\n", 130),
    ],
)
def test_a_full_disk_or_ctrl_c_during_a_build_is_one_line(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    raised: BaseException,
    said: str,
    rc: int,
) -> None:
    def fail(*_a: Any, **_kw: Any) -> None:
        raise raised

    monkeypatch.setattr(build, "build_version", fail)
    args = _parse(["build", "--checkpoint", str(tmp_path), "--repository", str(tmp_path)])
    assert args.func(args) == rc
    assert capsys.readouterr().err == said.format(repo=tmp_path)


@pytest.mark.parametrize("value", ["0", "-3"])
def test_bench_refuses_max_tokens_below_one(value: str) -> None:
    args = _parse(["bench", "--max-tokens", value])
    with pytest.raises(SystemExit, match="--max-tokens must be at least 1"):
        args.func(args)


def test_the_in_process_bench_reads_the_options_as_the_runtime_does() -> None:
    """``genwire model bench --in-process`` runs the version with its own build's options, an
    ``override_`` key over them, and ignores the plain keys older builds wrote (they are only
    for the versions those builds made)."""
    from genwire_model.runtime.runners import DEFAULT_INTRA_OP_THREADS, version_options

    manifest = {"build": {"options": {"max_batch": 4, "stream_interval": 2}}}
    legacy = {"max_batch": "8", "stream_interval": "4", "intra_op_threads": "3"}
    assert version_options(legacy, manifest) == {
        "max_batch": 4,
        "stream_interval": 2,
        "intra_op_threads": DEFAULT_INTRA_OP_THREADS,
    }
    assert version_options({**legacy, "override_max_batch": "16"}, manifest)["max_batch"] == 16
