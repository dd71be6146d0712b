"""genwire_stack.bootstrap's installers with stand-in tools: apt-get and sudo, go, mvn, pip.

Each stand-in is a small script on ``PATH`` (or in place of ``python -m pip``) that records how it
was called and leaves what the real tool would; nothing here touches the system, the network or
a real genwire home.
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
import textwrap
import zipfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from genwire_stack import bootstrap
from genwire_stack.errors import StackError


def script(path: Path, body: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(body))
    path.chmod(0o755)
    return path


@pytest.fixture(autouse=True)
def staging_given_back() -> Iterator[None]:
    """Every staging folder an install takes is given back, failed or not (a leftover entry
    would be spared by every later sweep)."""
    yield
    assert bootstrap._live_staging == set()


@pytest.fixture(autouse=True)
def plenty_of_space(monkeypatch: pytest.MonkeyPatch) -> None:
    """1 TB free whatever this machine's disk has (on a CI runner with under 9 GB free the
    Jaeger tests failed on the free-space check); the space tests lower it (:func:`_free`)."""
    _free(monkeypatch, 1000)
    monkeypatch.delenv(bootstrap.MIN_FREE_VARIABLE, raising=False)


@pytest.fixture
def fake_bin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A folder of stand-in tools in front of ``PATH``."""
    folder = tmp_path / "bin"
    folder.mkdir()
    monkeypatch.setenv("PATH", f"{folder}:{os.environ['PATH']}")
    return folder


# ---- apt-get: no daemon starts, for root and through sudo --------------------------------------


@pytest.fixture
def apt(tmp_path: Path, fake_bin: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Stand-in sudo (runs its command, recorded), apt-get (records whether the daemon guard
    is in place while it runs) and systemctl; the guard's path is in ``tmp_path``. Returns the
    record of calls."""
    calls = tmp_path / "calls.log"
    guard = tmp_path / "sbin" / "policy-rc.d"
    guard.parent.mkdir()
    monkeypatch.setattr(bootstrap, "POLICY_RC_D", guard)
    monkeypatch.setattr(bootstrap, "SYSTEMD_RUNNING", tmp_path / "no-systemd")
    monkeypatch.setitem(bootstrap._apt_state, "updated", False)
    script(
        fake_bin / "sudo",
        f"""\
        #!/bin/sh
        [ "$1" = -n ] || {{ echo "sudo without -n" >&2; exit 1; }}
        shift
        echo "sudo -n $1" >> {calls}
        exec "$@"
        """,
    )
    script(
        fake_bin / "apt-get",
        f"""\
        #!/bin/sh
        state=unguarded
        if [ -x {guard} ]; then {guard}; [ $? = 101 ] && state=guarded; fi
        echo "apt-get $* ($state)" >> {calls}
        """,
    )
    script(fake_bin / "systemctl", f'#!/bin/sh\necho "systemctl $*" >> {calls}\n')
    return calls


def test_a_non_root_install_places_the_daemon_guard_through_sudo(
    apt: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Through ``sudo -n`` too, redis-server's postinst must not start the distro's Redis on
    genwire's port: the guard goes in (and out again) with sudo, as apt-get does."""
    monkeypatch.setattr(bootstrap.os, "geteuid", lambda: 1000)
    bootstrap.apt_install(["redis-server"], why="Redis", log=tmp_path / "apt.log")
    assert apt.read_text().splitlines() == [
        "sudo -n apt-get",
        "apt-get update (unguarded)",
        "sudo -n sh",  # places the guard
        "sudo -n apt-get",
        "apt-get install -y --no-install-recommends redis-server (guarded)",
        "sudo -n rm",  # and removes it
    ]
    assert not bootstrap.POLICY_RC_D.exists()


def test_as_root_the_guard_is_placed_without_sudo(
    apt: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(bootstrap.os, "geteuid", lambda: 0)
    bootstrap.apt_install(["redis-server"], why="Redis", log=tmp_path / "apt.log")
    assert apt.read_text().splitlines() == [
        "apt-get update (unguarded)",
        "apt-get install -y --no-install-recommends redis-server (guarded)",
    ]
    assert not bootstrap.POLICY_RC_D.exists()


def test_a_policy_already_there_is_left_alone(
    apt: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A container's own policy-rc.d is the system's: not overwritten, not removed."""
    monkeypatch.setattr(bootstrap.os, "geteuid", lambda: 1000)
    script(bootstrap.POLICY_RC_D, "#!/bin/sh\n# the image's\nexit 101\n")
    bootstrap.apt_install(["libpython3.11"], why="stub", log=tmp_path / "apt.log")
    assert "sudo -n sh" not in apt.read_text() and "sudo -n rm" not in apt.read_text()
    assert "the image's" in bootstrap.POLICY_RC_D.read_text()


def test_a_guard_sudo_refuses_leaves_the_install_going(
    apt: Path, tmp_path: Path, fake_bin: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A sudoers entry that allows apt-get alone: the install goes on (as it did before)."""
    monkeypatch.setattr(bootstrap.os, "geteuid", lambda: 1000)
    sudo = (fake_bin / "sudo").read_text()
    script(fake_bin / "sudo", sudo.replace("shift\n", 'shift\n[ "$1" = apt-get ] || exit 1\n'))
    bootstrap.apt_install(["redis-server"], why="Redis", log=tmp_path / "apt.log")
    assert "apt-get install -y --no-install-recommends redis-server" in apt.read_text()
    assert "sudo -n rm" not in apt.read_text()


def test_a_guard_a_killed_genwire_run_left_is_removed_after_the_install(
    apt: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A run killed during its apt-get left its policy-rc.d (the genwire marker, its pid gone):
    taken for the system's, it stayed for good and no later package's daemon ever started."""
    monkeypatch.setattr(bootstrap.os, "geteuid", lambda: 1000)
    gone = subprocess.Popen(["true"])
    gone.wait()
    for left in (
        f"#!/bin/sh\n{bootstrap.GUARD_MARKER} (pid {gone.pid})\nexit 101\n",
        f"#!/bin/sh\n{bootstrap.GUARD_MARKER}\nexit 101\n",  # an older genwire's, no pid
    ):
        script(bootstrap.POLICY_RC_D, left)
        apt.unlink(missing_ok=True)
        bootstrap.apt_install(["redis-server"], why="Redis", log=tmp_path / "apt.log")
        calls = apt.read_text().splitlines()
        assert "apt-get install -y --no-install-recommends redis-server (guarded)" in calls
        assert "sudo -n sh" not in calls and calls[-1] == "sudo -n rm"
        assert not bootstrap.POLICY_RC_D.exists()
    assert "left by a genwire run that is gone" in (tmp_path / "apt.log").read_text()


def test_a_guard_of_a_genwire_run_still_installing_is_left_to_it(
    apt: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another home's `genwire up` installs at the same time: its guard is its own to remove."""
    monkeypatch.setattr(bootstrap.os, "geteuid", lambda: 1000)
    script(bootstrap.POLICY_RC_D, f"#!/bin/sh\n{bootstrap.GUARD_MARKER} (pid 1)\nexit 101\n")
    bootstrap.apt_install(["redis-server"], why="Redis", log=tmp_path / "apt.log")
    assert "sudo -n rm" not in apt.read_text()
    assert bootstrap.POLICY_RC_D.exists()


def test_the_guard_genwire_writes_names_its_run(
    apt: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(bootstrap.os, "geteuid", lambda: 0)
    seen, guard = tmp_path / "guard-seen", bootstrap.POLICY_RC_D
    stand_in = (tmp_path / "bin" / "apt-get").read_text()
    script(
        tmp_path / "bin" / "apt-get",
        stand_in + f"if [ -e {guard} ]; then cat {guard} > {seen}; fi\n",
    )
    bootstrap.apt_install(["redis-server"], why="Redis", log=tmp_path / "apt.log")
    assert seen.read_text().splitlines()[1] == f"{bootstrap.GUARD_MARKER} (pid {os.getpid()})"
    assert not bootstrap.POLICY_RC_D.exists()


def test_the_distro_redis_is_not_enabled_for_the_next_boot(
    apt: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """redis-server's package enables its unit: the next boot's Redis would hold 6379."""
    monkeypatch.setattr(bootstrap.os, "geteuid", lambda: 1000)
    (tmp_path / "systemd").mkdir()
    monkeypatch.setattr(bootstrap, "SYSTEMD_RUNNING", tmp_path / "systemd")
    bootstrap.apt_install(["redis-server"], why="Redis", log=tmp_path / "apt.log")
    assert apt.read_text().splitlines()[-2:] == [
        "sudo -n systemctl",
        "systemctl disable --now redis-server",
    ]
    apt.unlink()
    bootstrap.apt_install(["libpython3.11"], why="stub", log=tmp_path / "apt.log")
    assert "systemctl" not in apt.read_text()  # a library has no daemon


# ---- staging folders: what a killed run left -----------------------------------------------


def test_stale_staging_folders_go_and_live_ones_stay(tmp_path: Path) -> None:
    dest = tmp_path / "opt" / "jaeger-2.13.0"
    live = bootstrap.staging_dir(dest)  # another thread's install, still running
    stale = dest.parent / ".jaeger-2.13.0-k1l2m3n4"  # a killed run's
    (stale / "sub").mkdir(parents=True)
    (stale / "sub" / "jaeger").write_text("half")
    (stale / "sub").chmod(0o555)  # read-only, as Go leaves its module cache
    not_ours = [
        dest.parent / ".jaeger-2.13.0-keep",  # not what mkdtemp makes
        dest.parent / ".kafka-3.9.1-abcd1234",  # another component's
        dest.parent / "jaeger-2.13.0-abcd1234",  # not hidden
    ]
    for folder in not_ours:
        folder.mkdir()
    try:
        assert bootstrap.remove_stale_staging(dest) == [stale]
        assert not stale.exists() and live.is_dir()
        assert all(folder.is_dir() for folder in not_ours)
    finally:
        bootstrap.drop_staging(live)
    assert not live.exists()
    assert bootstrap.remove_stale_staging(tmp_path / "nowhere" / "x") == []


def test_kafka_install_removes_a_killed_runs_staging(tmp_path: Path, fake_bin: Path) -> None:
    script(fake_bin / "java", "#!/bin/sh\n")
    script(
        fake_bin / "mvn",
        """\
        #!/bin/sh
        for arg; do case "$arg" in -DoutputDirectory=*) out="${arg#*=}";; esac; done
        mkdir -p "$out" && touch "$out/kafka_2.13-3.9.1.jar"
        """,
    )
    dest = tmp_path / "opt" / "kafka-3.9.1"
    stale = dest.parent / ".kafka-3.9.1-zz99yy88"
    (stale / "libs").mkdir(parents=True)
    bootstrap.install_kafka(
        "3.9.1", dest, pom=tmp_path / "pom.xml", m2=tmp_path / "m2", log=tmp_path / "kafka.log"
    )
    assert (dest / "libs" / "kafka_2.13-3.9.1.jar").exists()
    assert sorted(p.name for p in dest.parent.iterdir()) == ["kafka-3.9.1"]


# ---- Jaeger: Go's caches, free space --------------------------------------------------------


@pytest.fixture
def go(tmp_path: Path, fake_bin: Path) -> Path:
    """A stand-in ``go``: ``mod download`` fills GOMODCACHE (read-only, as Go without
    -modcacherw) and GOCACHE, ``build`` writes the binary. Returns its record of calls."""
    calls = tmp_path / "go-calls.log"
    script(
        fake_bin / "go",
        f"""\
        #!/bin/sh
        echo "go $1 $2" >> {calls}
        if [ "$1 $2" = "mod download" ]; then
          src="$GOMODCACHE/github.com/jaegertracing/jaeger@v1.76.0"
          mkdir -p "$src/cmd/jaeger" "$GOCACHE/00" && echo cached > "$GOCACHE/00/a-d"
          chmod -R a-w "$GOMODCACHE"
          printf '{{"Dir": "%s"}}\\n' "$src"
        elif [ "$1" = build ]; then
          while [ "$1" != -o ]; do shift; done
          echo binary > "$2"
        fi
        """,
    )
    return calls


def jaeger(tmp_path: Path) -> Path:
    """Jaeger built as the stack builds it: ``go_root`` is the home's shared ``go/``."""
    dest = tmp_path / "home" / "opt" / "jaeger-2.13.0"
    bootstrap.install_jaeger(
        "github.com/jaegertracing/jaeger",
        "v1.76.0",
        dest,
        go_root=tmp_path / "home" / "go",
        log=tmp_path / "home" / "logs" / "jaeger.log",
        version_tag="v2.13.0",
    )
    return dest


def test_gos_caches_are_removed_once_jaeger_is_built(go: Path, tmp_path: Path) -> None:
    """8 GB of module and build cache stayed in the home for good after a one-off build."""
    (tmp_path / "home" / "opt" / ".jaeger-2.13.0-killed01").mkdir(parents=True)
    dest = jaeger(tmp_path)
    assert (dest / "jaeger").read_text() == "binary\n"
    assert go.read_text().splitlines() == ["go mod download", "go build -trimpath"]
    assert not (tmp_path / "home" / "go-jaeger").exists()
    assert sorted(p.name for p in dest.parent.iterdir()) == ["jaeger-2.13.0"]
    assert "removed Jaeger's Go caches" in (tmp_path / "home" / "logs" / "jaeger.log").read_text()


def test_jaegers_build_leaves_the_shared_go_caches_alone(go: Path, tmp_path: Path) -> None:
    """``<home>/go`` holds the k8s checker's Go caches (tests/deploy/k8scheck.py, built under
    its own lock): removing it after Jaeger's build made every later checker build a cold one
    and could pull the caches from under one running meanwhile."""
    shared = tmp_path / "home" / "go" / "build-cache" / "00" / "k8scheck-d"
    shared.parent.mkdir(parents=True)
    shared.write_text("the checker's")
    assert (jaeger(tmp_path) / "jaeger").exists()
    assert shared.read_text() == "the checker's"
    assert sorted(p.name for p in (tmp_path / "home" / "go").iterdir()) == ["build-cache"]


def test_a_failed_jaeger_build_keeps_gos_caches_for_the_retry(
    go: Path, tmp_path: Path, fake_bin: Path
) -> None:
    stand_in = (fake_bin / "go").read_text()
    script(fake_bin / "go", stand_in.replace("echo binary >", 'echo "build: error" >&2; exit 1 #'))
    with pytest.raises(StackError, match="building Jaeger"):
        jaeger(tmp_path)
    assert (tmp_path / "home" / "go-jaeger" / "build-cache" / "00" / "a-d").exists()
    assert sorted(p.name for p in (tmp_path / "home" / "opt").iterdir()) == []


_REAL_DISK_USAGE = shutil.disk_usage


def _free(monkeypatch: pytest.MonkeyPatch, gb: float) -> None:
    """The filesystem of any path has ``gb`` GB (10^9 bytes) free."""

    def disk_usage(path: Any) -> Any:
        return _REAL_DISK_USAGE(path)._replace(free=int(gb * bootstrap.GB))

    monkeypatch.setattr(bootstrap.shutil, "disk_usage", disk_usage)


def test_a_jaeger_build_without_the_space_for_it_fails_before_it_starts(
    go: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """In GB, as the docs say: 7.8 GB of Go caches measured, 9 GB asked for."""
    _free(monkeypatch, 2)
    with pytest.raises(StackError) as failed:
        jaeger(tmp_path)
    assert "needs about 9.0 GB free" in str(failed.value)
    assert "which has 2.0 GB" in str(failed.value)
    assert "GENWIRE_MIN_FREE_GB=0 skips this check" in str(failed.value)
    assert not go.exists()  # go never ran


def test_min_free_gb_replaces_the_need_and_0_turns_the_check_off(
    go: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _free(monkeypatch, 2)
    monkeypatch.setenv("GENWIRE_MIN_FREE_GB", "3")
    with pytest.raises(StackError, match=r"needs about 3\.0 GB free"):
        jaeger(tmp_path)
    monkeypatch.setenv("GENWIRE_MIN_FREE_GB", "2.5")
    with pytest.raises(StackError, match="a whole number of GB is expected"):
        jaeger(tmp_path)
    assert not go.exists()
    monkeypatch.setenv("GENWIRE_MIN_FREE_GB", "0")
    assert (jaeger(tmp_path) / "jaeger").exists()


def test_the_caches_already_there_count_towards_the_space(
    go: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A retry after a failed build has most of what it needs on disk already; the shared
    ``go/`` (the checker's caches, left in place) is no part of it."""
    for root in ("go-jaeger", "go"):
        cache = tmp_path / "home" / root / "mod" / "cache.bin"
        cache.parent.mkdir(parents=True)
        with cache.open("wb") as handle:  # sparse: 8 GB of size, no blocks
            handle.truncate(8 * bootstrap.GB)
    _free(monkeypatch, 0.5)
    with pytest.raises(StackError, match=r"needs about 1\.0 GB free"):
        jaeger(tmp_path)  # 8 GB of Jaeger's own caches counted, the checker's not
    _free(monkeypatch, 2)
    assert (jaeger(tmp_path) / "jaeger").exists()


# ---- Triton: a damaged cached wheel --------------------------------------------------------

WHEEL = "nvidia_pytriton-0.7.0-py3-none-manylinux_2_35_x86_64.whl"


def wheel_bytes() -> bytes:
    """A wheel with what install_triton keeps: the server, its 3.11 stub, a library."""
    path = Path(os.environ.get("TMPDIR", "/tmp")) / f"genwire-test-{os.getpid()}.whl"
    with zipfile.ZipFile(path, "w") as wheel:
        for name, mode in [
            ("pytriton/tritonserver/bin/tritonserver", 0o755),
            ("pytriton/tritonserver/python_backend_stubs/3.11/triton_python_backend_stub", 0o755),
            ("pytriton/tritonserver/backends/python/libtriton_python.so", 0o644),
            ("nvidia_pytriton.libs/libfoo.so", 0o644),
            ("pytriton/__init__.py", 0o644),
        ]:
            info = zipfile.ZipInfo(name)
            info.external_attr = (stat.S_IFREG | mode) << 16
            wheel.writestr(info, f"content of {name}")
    data = path.read_bytes()
    path.unlink()
    return data


@pytest.fixture
def pip(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """``python -m pip download`` replaced by a stand-in that writes the wheel into ``--dest``
    (or, with ``pip-dies`` present, half of it and fails); returns its record of calls."""
    calls = tmp_path / "pip-calls.log"
    (tmp_path / "wheel.bin").write_bytes(wheel_bytes())
    stand_in = script(
        tmp_path / "fake_pip.py",
        f"""\
        import pathlib, sys
        args = sys.argv[1:]
        with open({str(calls)!r}, "a") as log:
            log.write(" ".join(args) + "\\n")
        dest = pathlib.Path(args[args.index("--dest") + 1])
        data = pathlib.Path({str(tmp_path / "wheel.bin")!r}).read_bytes()
        if pathlib.Path({str(tmp_path / "pip-dies")!r}).exists():
            (dest / {WHEEL!r}).write_bytes(data[: len(data) // 2])
            sys.exit("ERROR: connection reset")
        (dest / {WHEEL!r}).write_bytes(data)
        """,
    )
    real = bootstrap.run_step

    def run_step(argv: Sequence[str], **kwargs: Any) -> str:
        if list(argv[1:3]) == ["-m", "pip"]:
            argv = [sys.executable, str(stand_in), *argv[3:]]
        return real(argv, **kwargs)

    monkeypatch.setattr(bootstrap, "run_step", run_step)
    return calls


def triton(tmp_path: Path) -> Path:
    dest = tmp_path / "home" / "opt" / "pytriton-0.7.0"
    bootstrap.install_triton(
        "nvidia-pytriton==0.7.0",
        dest,
        downloads=tmp_path / "home" / "downloads",
        log=tmp_path / "home" / "logs" / "triton.log",
    )
    return dest


def test_a_truncated_cached_wheel_is_downloaded_again(pip: Path, tmp_path: Path) -> None:
    """Trusted by its name, a download cut short failed every later `make up` ("File is not a
    zip file; delete it and retry")."""
    downloads = tmp_path / "home" / "downloads"
    downloads.mkdir(parents=True)
    (downloads / WHEEL).write_bytes(wheel_bytes()[:1000])
    dest = triton(tmp_path)
    server = dest / "pytriton" / "tritonserver"
    assert (server / "bin" / "tritonserver").exists()
    assert (server / "backends" / "python" / "triton_python_backend_stub").exists()
    assert len(pip.read_text().splitlines()) == 1  # downloaded once more
    assert zipfile.is_zipfile(downloads / WHEEL)
    assert sorted(p.name for p in downloads.iterdir()) == [WHEEL]
    assert "is damaged" in (tmp_path / "home" / "logs" / "triton.log").read_text()


def test_a_whole_cached_wheel_is_used_as_it_is(pip: Path, tmp_path: Path) -> None:
    downloads = tmp_path / "home" / "downloads"
    downloads.mkdir(parents=True)
    (downloads / WHEEL).write_bytes(wheel_bytes())
    assert (triton(tmp_path) / "nvidia_pytriton.libs" / "libfoo.so").exists()
    assert not pip.exists()


def test_a_download_cut_short_leaves_no_wheel_behind(pip: Path, tmp_path: Path) -> None:
    """pip writes into a staging folder: only a finished download gets the wheel's name."""
    (tmp_path / "pip-dies").touch()
    with pytest.raises(StackError, match="connection reset"):
        triton(tmp_path)
    assert list((tmp_path / "home" / "downloads").iterdir()) == []
    (tmp_path / "pip-dies").unlink()
    assert (triton(tmp_path) / "pytriton" / "tritonserver" / "bin" / "tritonserver").exists()


def test_a_fresh_download_that_is_no_zip_fails_without_a_loop(pip: Path, tmp_path: Path) -> None:
    (tmp_path / "wheel.bin").write_bytes(b"<html>a proxy's error page</html>")
    with pytest.raises(StackError, match="just downloaded"):
        triton(tmp_path)
    assert len(pip.read_text().splitlines()) == 1
