"""Installing what the native stack needs into ``GENWIRE_HOME``: jars, binaries, Debian packages.

Each installer is idempotent: it leaves a finished folder (moved into place only when complete)
and does nothing the next time. Failures raise :class:`StackError` with one line naming the step,
its log and what to do.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections import deque
from collections.abc import Mapping, Sequence
from pathlib import Path

from genwire_stack.errors import StackError
from genwire_stack.health import error_line, log_tail
from genwire_stack.process import masked, shown

JAVA_HINT = "install a JDK or JRE 17+ (Debian: apt-get install openjdk-17-jre-headless)"

STOP_WAIT_S = 10.0
"""How long an interrupted step has to exit on SIGTERM before it is killed."""
STDERR_KEPT = 500
"""A step's last stderr lines kept in memory to find its error in (all of them go to the log)."""

_apt_state = {"updated": False}
"""``apt-get update`` runs once per process."""


def require_tool(name: str, hint: str) -> str:
    """The full path of executable ``name``, or a StackError saying how to get it."""
    found = shutil.which(name)
    if found is None:
        raise StackError(f"`{name}` not found on PATH: {hint}")
    return found


def run_step(
    argv: Sequence[str],
    *,
    what: str,
    log: Path,
    hint: str,
    cwd: Path | None = None,
    env: Mapping[str, str] | None = None,
) -> str:
    """Run an install step with its output in ``log``; returns its stdout.

    stderr reaches the log line by line as the step runs (a long download or build shows its
    progress, and an interrupted one what it got to); stdout is written after it. Both are
    masked (a tool may echo a secret from its command line). A failure's message quotes the
    line that names the error (:func:`error_line`: Kafka's StorageTool, say, logs to stdout
    and writes its usage error to stderr), else the log's last line.
    """
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("ab") as handle, tempfile.TemporaryFile() as out:
        handle.write(f"\n=== genwire: {what}: {' '.join(shown(argv))}\n".encode())
        handle.flush()
        try:
            proc = subprocess.Popen(
                list(argv),
                cwd=cwd,
                env=dict(env) if env is not None else None,
                stdout=out,
                stderr=subprocess.PIPE,
                stdin=subprocess.DEVNULL,
            )
        except OSError as exc:
            raise StackError(f"{what} failed: cannot run {argv[0]}: {exc.strerror}") from exc
        stderr: deque[str] = deque(maxlen=STDERR_KEPT)
        stream = proc.stderr
        assert stream is not None  # stderr=PIPE
        try:
            for raw in stream:
                line = masked(raw.decode(errors="replace"))
                handle.write(line.encode())
                handle.flush()
                stderr.append(line)
            returncode = proc.wait()
        finally:
            if proc.poll() is None:  # interrupted: the step goes with us, given time to stop
                proc.terminate()  # (sudo passes it on: apt is not left holding its lock)
                try:
                    proc.wait(STOP_WAIT_S)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
            stream.close()
            out.seek(0)
            stdout = out.read().decode(errors="replace")
            handle.write(masked(stdout).encode())
    if returncode != 0:
        found = error_line("".join(stderr), stdout)
        last = (
            f"last error line: {masked(found)!r}"
            if found is not None
            else f"last log line: {log_tail(log)!r}"
        )
        raise StackError(f"{what} failed (exit {returncode}; {last}; full log: {log}): {hint}")
    return stdout


def _privileged(argv: list[str]) -> list[str]:
    if os.geteuid() == 0:
        return argv
    sudo = shutil.which("sudo")
    if sudo is None:
        raise StackError(
            f"need root to run `{' '.join(argv)}`: run it once as root (or install sudo), "
            "then `make up` again"
        )
    return [sudo, "-n", *argv]


def apt_install(packages: Sequence[str], *, why: str, log: Path) -> None:
    """Install Debian packages (``apt-get update`` once per process) without starting services.

    A package's maintainer scripts would otherwise start its daemon (e.g. a system Redis on
    6379) outside genwire's control; a temporary ``policy-rc.d`` asks them not to.
    """
    require_tool("apt-get", f"install {' '.join(packages)} ({why}) with your package manager")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    hint = f"install {' '.join(packages)} yourself ({why}), then `make up` again"
    if not _apt_state["updated"]:
        run_step(
            _privileged(["apt-get", "update"]), what="apt-get update", log=log, hint=hint, env=env
        )
        _apt_state["updated"] = True
    policy = Path("/usr/sbin/policy-rc.d")
    placed = False
    if os.geteuid() == 0 and not policy.exists():
        policy.write_text("#!/bin/sh\n# genwire: do not start daemons during install\nexit 101\n")
        policy.chmod(0o755)
        placed = True
    try:
        run_step(
            _privileged(["apt-get", "install", "-y", "--no-install-recommends", *packages]),
            what=f"apt-get install {' '.join(packages)}",
            log=log,
            hint=hint,
            env=env,
        )
    finally:
        if placed:
            policy.unlink(missing_ok=True)


def finish_into(staging: Path, final: Path) -> None:
    """Move a completed staging folder into place (replacing a stale partial one)."""
    if final.exists():
        shutil.rmtree(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    staging.replace(final)


def staging_dir(final: Path) -> Path:
    """A fresh folder next to ``final`` (same filesystem, so the final move is a rename)."""
    final.parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f".{final.name}-", dir=final.parent))


# --- Kafka -------------------------------------------------------------------------------------


def install_kafka(version: str, dest: Path, *, pom: Path, m2: Path, log: Path) -> None:
    """Copy the broker's jars (and their dependencies) from Maven Central into ``dest/libs``."""
    require_tool("java", JAVA_HINT)
    mvn = require_tool("mvn", "install Apache Maven (Debian: apt-get install maven)")
    staging = staging_dir(dest)
    try:
        run_step(
            [
                mvn,
                "-B",
                "-q",
                "-f",
                str(pom),
                f"-Dmaven.repo.local={m2}",
                f"-Dkafka.version={version}",
                "dependency:copy-dependencies",
                "-DincludeScope=runtime",
                f"-DoutputDirectory={staging / 'libs'}",
            ],
            what=f"downloading Apache Kafka {version} jars with Maven",
            log=log,
            hint="check access to Maven Central (repo.maven.apache.org), then `make up` again",
        )
        if not any((staging / "libs").glob(f"kafka_2.13-{version}.jar")):
            raise StackError(f"Maven did not fetch kafka_2.13-{version}.jar; see {log}")
        finish_into(staging, dest)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


# --- Jaeger ------------------------------------------------------------------------------------


def install_jaeger(
    module: str, version: str, dest: Path, *, go_root: Path, log: Path, version_tag: str
) -> None:
    """Build Jaeger's ``cmd/jaeger`` from the Go module proxy into ``dest/jaeger``.

    ``version_tag`` (e.g. ``v2.13.0``) is stamped into the binary, as Jaeger's release build does.
    """
    go = require_tool("go", "install the Go toolchain (https://go.dev/dl/), then `make up` again")
    env = {
        **os.environ,
        # Go's caches live in the genwire home too, so a cold run is really cold and a warm
        # one reuses the module downloads and compiled packages.
        "GOMODCACHE": str(go_root / "mod"),
        "GOCACHE": str(go_root / "build-cache"),
        "GOPATH": str(go_root / "path"),
        "GOFLAGS": "-modcacherw",
    }
    hint = "check access to the Go module proxy (proxy.golang.org), then `make up` again"
    out = run_step(
        [go, "mod", "download", "-json", f"{module}@{version}"],
        what=f"downloading Go module {module}@{version}",
        log=log,
        hint=hint,
        env=env,
        cwd=go_root.parent,
    )
    src = Path(json.loads(out)["Dir"])
    staging = staging_dir(dest)
    try:
        # `go install module@version` refuses modules whose go.mod has replace directives,
        # Jaeger's does: build inside the downloaded module instead.
        run_step(
            [
                go,
                "build",
                "-trimpath",
                "-ldflags",
                f"-X {module}/internal/version.latestVersion={version_tag}",
                "-o",
                str(staging / "jaeger"),
                "./cmd/jaeger",
            ],
            what=f"building Jaeger ({module}@{version}, several minutes on 2 cores)",
            log=log,
            hint=hint,
            env=env,
            cwd=src,
        )
        finish_into(staging, dest)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


# --- Triton ------------------------------------------------------------------------------------


KEEP_FROM_WHEEL = ("pytriton/tritonserver/", "nvidia_pytriton.libs/")


def install_triton(wheel_spec: str, dest: Path, *, downloads: Path, log: Path) -> None:
    """Unpack ``tritonserver`` from the nvidia-pytriton wheel (downloaded, never pip-installed).

    Keeps ``pytriton/tritonserver`` (binary, backends, Python stubs) and ``nvidia_pytriton.libs``
    (its shared libraries) and copies the Python 3.11 stub into ``backends/python``.
    """
    downloads.mkdir(parents=True, exist_ok=True)
    name, version = wheel_spec.split("==", maxsplit=1)
    name = name.replace("-", "_")
    wheels = sorted(downloads.glob(f"{name}-{version}-*.whl"))
    if not wheels:
        run_step(
            [
                sys.executable,
                "-m",
                "pip",
                "download",
                "--no-deps",
                "--only-binary=:all:",
                "--dest",
                str(downloads),
                wheel_spec,
            ],
            what=f"downloading {wheel_spec}",
            log=log,
            hint="check access to PyPI, then `make up` again",
        )
        wheels = sorted(downloads.glob(f"{name}-{version}-*.whl"))
        if not wheels:
            raise StackError(f"pip fetched no {wheel_spec} wheel into {downloads}; see {log}")
    staging = staging_dir(dest)
    try:
        with zipfile.ZipFile(wheels[-1]) as wheel:
            for info in wheel.infolist():
                if not info.filename.startswith(KEEP_FROM_WHEEL):
                    continue
                wheel.extract(info, staging)
                target = staging / info.filename
                if not info.is_dir():
                    executable = (info.external_attr >> 16) & 0o111
                    target.chmod(0o755 if executable else 0o644)
        server = staging / "pytriton" / "tritonserver"
        stub = server / "python_backend_stubs" / "3.11" / "triton_python_backend_stub"
        if not stub.exists() or not (server / "bin" / "tritonserver").exists():
            raise StackError(f"{wheels[-1].name} lacks tritonserver or its 3.11 stub")
        target = server / "backends" / "python" / stub.name
        shutil.copy2(stub, target)
        target.chmod(0o755)
        (server / "bin" / "tritonserver").chmod(0o755)
        finish_into(staging, dest)
    except (OSError, zipfile.BadZipFile) as exc:
        raise StackError(f"unpacking {wheels[-1]} failed: {exc}; delete it and retry") from exc
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def missing_libraries(binary: Path, env: Mapping[str, str]) -> list[str]:
    """Shared libraries ``binary`` needs that the dynamic loader cannot find (via ``ldd``)."""
    try:
        out = subprocess.run(
            ["ldd", str(binary)], env=dict(env), capture_output=True, text=True, check=False
        ).stdout
    except OSError:
        return []
    return [line.split()[0] for line in out.splitlines() if "not found" in line]
