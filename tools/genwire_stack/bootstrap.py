"""Installing what the native stack needs into ``GENWIRE_HOME``: jars, binaries, Debian packages.

Each installer is idempotent: it leaves a finished folder (moved into place only when complete)
and does nothing the next time. Failures raise :class:`StackError` with one line naming the step,
its log and what to do.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import zipfile
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from genwire_stack.errors import StackError
from genwire_stack.health import error_line, log_tail
from genwire_stack.process import masked, pid_alive, shown

JAVA_HINT = "install a JDK or JRE 17+ (Debian: apt-get install openjdk-17-jre-headless)"

STOP_WAIT_S = 10.0
"""How long an interrupted step has to exit on SIGTERM before it is killed."""
STDERR_KEPT = 500
"""A step's last stderr lines kept in memory to find its error in (all of them go to the log)."""

_apt_state = {"updated": False}
"""``apt-get update`` runs once per process."""

POLICY_RC_D = Path("/usr/sbin/policy-rc.d")
"""Debian's hook that maintainer scripts ask before starting a daemon (exit 101: do not)."""
SYSTEMD_RUNNING = Path("/run/systemd/system")
"""Present when systemd is PID 1 (not in most containers, where ``systemctl`` fails)."""
DAEMON_UNITS = {"redis-server": "redis-server"}
"""Packages whose systemd unit the package enables at boot: genwire runs its own Redis on 6379,
a distro one started at the next boot would hold that port."""

GB = 1000**3
"""Free space is counted in decimal gigabytes, as docs/install.md and ``df -H`` do."""
JAEGER_BUILD_NEED_GB = 9.0
"""Free space a cold Jaeger build needs in the genwire home: Go's module cache (3.5 GB on
2.13.0) and build cache (4.3 GB) as measured (docs/install.md), the binary (0.1 GB) and about
1 GB to spare."""
MIN_FREE_VARIABLE = "GENWIRE_MIN_FREE_GB"
"""Replaces every free-space check's need (GB, a whole number): 0 turns the checks off (a disk
whose free space is misreported, or one the user knows is enough)."""
JAEGER_GO_ROOT_SUFFIX = "-jaeger"
"""Jaeger builds with Go caches of its own, ``<home>/go-jaeger``, removed after the build:
``<home>/go`` is what the other Go builds keep and share (tests/deploy/k8scheck.py,
deploy/prometheus/build_promtool.py, deploy/compose/build_compose.py)."""


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
    6379) outside genwire's control; a temporary ``policy-rc.d`` asks them not to. It is placed
    with the same privileges as apt-get (through ``sudo -n`` when not root: a guard only root
    could write was skipped then, and the distro's Redis took genwire's port), and a unit the
    package enabled for the next boot (:data:`DAEMON_UNITS`) is disabled afterwards.
    """
    require_tool("apt-get", f"install {' '.join(packages)} ({why}) with your package manager")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    hint = f"install {' '.join(packages)} yourself ({why}), then `make up` again"
    if not _apt_state["updated"]:
        run_step(
            _privileged(["apt-get", "update"]), what="apt-get update", log=log, hint=hint, env=env
        )
        _apt_state["updated"] = True
    placed = _place_daemon_guard(log)
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
            _remove_daemon_guard(log)
    _disable_boot_units(packages, log)


GUARD_MARKER = "# genwire: do not start daemons during install"
"""The line that tells genwire's policy-rc.d from the system's: one a killed run left behind is
removed by the next install (it would keep every later package's daemon from starting)."""

_GUARD_WRITE = (
    # noclobber: a policy-rc.d that appeared meanwhile is somebody else's, never overwritten
    'set -C; printf "%s\\n" "#!/bin/sh" "$2 (pid $3)" "exit 101" > "$1" && chmod 755 "$1"'
)
_GUARD_PID = re.compile(r"\(pid ([0-9]+)\)")


def _place_daemon_guard(log: Path) -> bool:
    """Write :data:`POLICY_RC_D` unless one exists; True: it is ours (to remove afterwards),
    which is also the case of a guard a killed genwire run left (:func:`_left_guard`)."""
    if POLICY_RC_D.exists():
        left = _left_guard()
        if left:
            _note(log, f"{POLICY_RC_D}: left by a genwire run that is gone; removed after this")
        return left  # else the system's own policy (a container's exit 101, say): left alone
    try:
        run_step(
            _privileged(
                ["sh", "-c", _GUARD_WRITE, "sh", str(POLICY_RC_D), GUARD_MARKER, str(os.getpid())]
            ),
            what=f"placing {POLICY_RC_D} (no daemon starts during the install)",
            log=log,
            hint="",
        )
    except StackError:
        # A sudoers entry may allow apt-get alone: the install goes on without the guard
        # (its failure is in the log) and the boot units are still disabled afterwards.
        return False
    return True


def _left_guard() -> bool:
    """Whether :data:`POLICY_RC_D` is a guard of genwire's whose run is gone (its pid, as
    written now, no longer runs; one written without a pid is an older genwire's): not one
    another genwire run still installs under, nor the system's own."""
    try:
        text = POLICY_RC_D.read_text(errors="replace")
    except OSError:
        return False  # unreadable: not ours to judge
    line = next((ln for ln in text.splitlines() if ln.startswith(GUARD_MARKER)), None)
    if line is None:
        return False
    found = _GUARD_PID.search(line)
    return found is None or not pid_alive(int(found[1]))


def _remove_daemon_guard(log: Path) -> None:
    """Remove the policy-rc.d we placed: left behind, it would stop every later package's
    daemon on this machine from starting."""
    run_step(
        _privileged(["rm", "-f", str(POLICY_RC_D)]),
        what=f"removing {POLICY_RC_D} (placed by genwire for the install)",
        log=log,
        hint=f"remove {POLICY_RC_D} yourself (genwire placed it for its apt-get install)",
    )


def _disable_boot_units(packages: Sequence[str], log: Path) -> None:
    """``systemctl disable --now`` the units of :data:`DAEMON_UNITS` among ``packages`` (best
    effort: without systemd as PID 1 there is nothing to disable)."""
    units = [DAEMON_UNITS[p] for p in packages if p in DAEMON_UNITS]
    if not units or shutil.which("systemctl") is None or not SYSTEMD_RUNNING.is_dir():
        return
    # A failure is in the log; genwire's start names whatever then holds its port.
    with contextlib.suppress(StackError):
        run_step(
            _privileged(["systemctl", "disable", "--now", *units]),
            what=f"disabling {' '.join(units)} (genwire starts its own)",
            log=log,
            hint="",
        )


def finish_into(staging: Path, final: Path) -> None:
    """Move a completed staging folder into place (replacing a stale partial one)."""
    if final.exists():
        shutil.rmtree(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    staging.replace(final)


_live_staging: set[Path] = set()
"""Staging folders of installs running in this process (the manager installs in threads, and
every Kafka node of a cluster installs the same folder): never stale."""
_staging_lock = threading.Lock()
_MKDTEMP_NAME = re.compile(r"[a-z0-9_]{8}")
"""What :func:`tempfile.mkdtemp` appends to a prefix."""


def staging_dir(final: Path) -> Path:
    """A fresh folder next to ``final`` (same filesystem, so the final move is a rename).

    Give it back with :func:`drop_staging`; one left by a killed run is removed by the next
    install's :func:`remove_stale_staging`.
    """
    final.parent.mkdir(parents=True, exist_ok=True)
    with _staging_lock:  # made and recorded at once: a sweep never sees it unrecorded
        staging = Path(tempfile.mkdtemp(prefix=f".{final.name}-", dir=final.parent))
        _live_staging.add(staging)
    return staging


def drop_staging(staging: Path) -> None:
    """Remove a staging folder of :func:`staging_dir` (gone already after a finished move)."""
    remove_tree(staging)
    with _staging_lock:
        _live_staging.discard(staging)


def remove_stale_staging(final: Path) -> list[Path]:
    """Remove the staging folders of ``final`` that killed runs left (``.<name>-XXXXXXXX``,
    gigabytes each); returns them. Only safe under the stack lock (no other process installs
    meanwhile): the ones this process is using are kept."""
    prefix = f".{final.name}-"
    try:
        # Listed before the live set is read: a folder made after the listing is not in it,
        # one made before it is already recorded.
        entries = [e for e in final.parent.iterdir() if e.name.startswith(prefix)]
    except FileNotFoundError:
        return []
    with _staging_lock:
        live = set(_live_staging)
    stale = [
        entry
        for entry in entries
        if _MKDTEMP_NAME.fullmatch(entry.name[len(prefix) :])
        and entry not in live
        and entry.is_dir()
        and not entry.is_symlink()
    ]
    for entry in stale:
        remove_tree(entry)
    return stale


def remove_tree(path: Path) -> None:
    """``rm -rf``, read-only folders included (Go makes its module cache read-only)."""

    def writable_and_retry(func: Callable[..., Any], failed: str, _exc: object) -> None:
        try:
            os.chmod(os.path.dirname(failed), 0o700)
            func(failed)
        except OSError:
            pass  # what stays is reported by its caller's next step, not here

    if path.is_symlink():
        path.unlink()
    elif path.exists():
        shutil.rmtree(path, onerror=writable_and_retry)


def tree_size(path: Path) -> int:
    """Bytes a folder holds (0: there is none)."""
    total = 0
    for root, _dirs, files in os.walk(path):
        for name in files:
            try:
                total += os.lstat(os.path.join(root, name)).st_size
            except OSError:
                continue
    return total


def min_free_gb(default: float, environ: Mapping[str, str] | None = None) -> float:
    """The free space (GB) a check asks for: ``default``, or :data:`MIN_FREE_VARIABLE` when
    set (0: no check)."""
    raw = (os.environ if environ is None else environ).get(MIN_FREE_VARIABLE, "").strip()
    if not raw:
        return default
    if not raw.isdigit():
        raise StackError(
            f"{MIN_FREE_VARIABLE}={raw!r}: a whole number of GB is expected (0 turns the "
            "free-space checks off)"
        )
    return float(raw)


def require_free_space(where: Path, need_gb: float, *, what: str, have: int = 0) -> None:
    """Fail in one line before a step that writes ``need_gb`` GB under ``where`` (``have``
    bytes of them already there) when its filesystem has less free: not hours into it with
    ENOSPC. :data:`MIN_FREE_VARIABLE` replaces ``need_gb`` (0: no check)."""
    need = min_free_gb(need_gb) * GB
    if need <= 0:
        return
    probe = where
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    free = shutil.disk_usage(probe).free
    if free + have < need:
        raise StackError(
            f"{what} needs about {(need - have) / GB:.1f} GB free on the filesystem of "
            f"{where}, which has {free / GB:.1f} GB: free some space (or set GENWIRE_HOME "
            f"to a larger disk; {MIN_FREE_VARIABLE}=0 skips this check), then `make up` again"
        )


# --- Kafka -------------------------------------------------------------------------------------


def install_kafka(version: str, dest: Path, *, pom: Path, m2: Path, log: Path) -> None:
    """Copy the broker's jars (and their dependencies) from Maven Central into ``dest/libs``."""
    require_tool("java", JAVA_HINT)
    mvn = require_tool("mvn", "install Apache Maven (Debian: apt-get install maven)")
    remove_stale_staging(dest)
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
        drop_staging(staging)


# --- Jaeger ------------------------------------------------------------------------------------


def jaeger_go_root(go_root: Path) -> Path:
    """Where Jaeger's build keeps Go's caches: ``<go_root>-jaeger`` beside the home's shared
    ``go_root`` (``<home>/go``), which it leaves alone."""
    return go_root.with_name(go_root.name + JAEGER_GO_ROOT_SUFFIX)


def install_jaeger(
    module: str, version: str, dest: Path, *, go_root: Path, log: Path, version_tag: str
) -> None:
    """Build Jaeger's ``cmd/jaeger`` from the Go module proxy into ``dest/jaeger``.

    ``version_tag`` (e.g. ``v2.13.0``) is stamped into the binary, as Jaeger's release build does.
    ``go_root`` is the home's Go folder (``<home>/go``), where the other Go builds keep their
    caches (:data:`JAEGER_GO_ROOT_SUFFIX`), one of them perhaps building now: Jaeger builds
    with caches of its own beside it (:func:`jaeger_go_root`, about 8 GB), removed once the
    binary is in place (a failed build keeps them for the retry); ``go_root`` is never touched.
    """
    go = require_tool("go", "install the Go toolchain (https://go.dev/dl/), then `make up` again")
    remove_stale_staging(dest)
    own_root = jaeger_go_root(go_root)
    env = {
        **os.environ,
        # Go's caches live in the genwire home too, so a cold run is really cold and a retry
        # after a failed build reuses the module downloads and compiled packages.
        "GOMODCACHE": str(own_root / "mod"),
        "GOCACHE": str(own_root / "build-cache"),
        "GOPATH": str(own_root / "path"),
        "GOFLAGS": "-modcacherw",
    }
    require_free_space(
        own_root,
        JAEGER_BUILD_NEED_GB,
        what=f"building Jaeger {version_tag} (Go's module and build caches)",
        have=tree_size(own_root),  # a retry's caches are part of what it needs
    )
    hint = "check access to the Go module proxy (proxy.golang.org), then `make up` again"
    out = run_step(
        [go, "mod", "download", "-json", f"{module}@{version}"],
        what=f"downloading Go module {module}@{version}",
        log=log,
        hint=hint,
        env=env,
        cwd=own_root.parent,
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
        drop_staging(staging)
    size = tree_size(own_root)
    remove_tree(own_root)
    _note(log, f"removed Jaeger's Go caches ({own_root}, {size / GB:.1f} GB): Jaeger is built")


def _note(log: Path, text: str) -> None:
    """One line of genwire's own in an install log (as :func:`run_step`'s headers)."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("a") as handle:
        handle.write(f"\n=== genwire: {text}\n")


# --- Triton ------------------------------------------------------------------------------------


KEEP_FROM_WHEEL = ("pytriton/tritonserver/", "nvidia_pytriton.libs/")


def install_triton(wheel_spec: str, dest: Path, *, downloads: Path, log: Path) -> None:
    """Unpack ``tritonserver`` from the nvidia-pytriton wheel (downloaded, never pip-installed).

    Keeps ``pytriton/tritonserver`` (binary, backends, Python stubs) and ``nvidia_pytriton.libs``
    (its shared libraries) and copies the Python 3.11 stub into ``backends/python``. The wheel is
    kept in ``downloads`` for the next install; a kept one that is not a whole zip (a download
    cut short by an older genwire) is deleted and downloaded again, once.
    """
    remove_stale_staging(dest)
    name, version = wheel_spec.split("==", maxsplit=1)
    name = name.replace("-", "_")
    remove_stale_staging(downloads / name)
    cached = sorted(downloads.glob(f"{name}-{version}-*.whl"))
    wheel = cached[-1] if cached else _download_wheel(wheel_spec, name, downloads, log=log)
    try:
        _unpack_triton(wheel, dest)
    except (zipfile.BadZipFile, EOFError) as exc:
        if not cached:  # a download that was whole when pip wrote it: fetching again won't help
            raise StackError(f"{wheel} (just downloaded) is not a valid wheel: {exc}") from exc
        _note(log, f"{wheel.name} is damaged ({exc}): deleting it and downloading it again")
        wheel.unlink(missing_ok=True)
        wheel = _download_wheel(wheel_spec, name, downloads, log=log)
        try:
            _unpack_triton(wheel, dest)
        except (zipfile.BadZipFile, EOFError) as again:
            raise StackError(f"{wheel} (just downloaded) is not a valid wheel: {again}") from again


def _download_wheel(wheel_spec: str, name: str, downloads: Path, *, log: Path) -> Path:
    """``pip download`` the wheel into a staging folder, then rename it into ``downloads``:
    a download cut short never sits there under the wheel's name."""
    staging = staging_dir(downloads / name)
    try:
        run_step(
            [
                sys.executable,
                "-m",
                "pip",
                "download",
                "--no-deps",
                "--only-binary=:all:",
                "--dest",
                str(staging),
                wheel_spec,
            ],
            what=f"downloading {wheel_spec}",
            log=log,
            hint="check access to PyPI, then `make up` again",
        )
        version = wheel_spec.split("==", maxsplit=1)[1]
        wheels = sorted(staging.glob(f"{name}-{version}-*.whl"))
        if not wheels:
            raise StackError(f"pip fetched no {wheel_spec} wheel; see {log}")
        final = downloads / wheels[-1].name
        wheels[-1].replace(final)
        return final
    finally:
        drop_staging(staging)


def _unpack_triton(wheel_path: Path, dest: Path) -> None:
    """Unpack the server from the wheel into ``dest`` (moved into place when complete); a
    damaged wheel raises :class:`zipfile.BadZipFile` (or EOFError) for the caller to act on."""
    staging = staging_dir(dest)
    try:
        with zipfile.ZipFile(wheel_path) as wheel:
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
            raise StackError(f"{wheel_path.name} lacks tritonserver or its 3.11 stub")
        target = server / "backends" / "python" / stub.name
        shutil.copy2(stub, target)
        target.chmod(0o755)
        (server / "bin" / "tritonserver").chmod(0o755)
        finish_into(staging, dest)
    except OSError as exc:
        raise StackError(f"unpacking {wheel_path} into {dest} failed: {exc}") from exc
    finally:
        drop_staging(staging)


def missing_libraries(binary: Path, env: Mapping[str, str]) -> list[str]:
    """Shared libraries ``binary`` needs that the dynamic loader cannot find (via ``ldd``)."""
    try:
        out = subprocess.run(
            ["ldd", str(binary)], env=dict(env), capture_output=True, text=True, check=False
        ).stdout
    except OSError:
        return []
    return [line.split()[0] for line in out.splitlines() if "not found" in line]
