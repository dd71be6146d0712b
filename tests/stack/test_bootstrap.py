"""deploy/native/bootstrap.sh installs the tested versions (pip -c) and reinstalls when they move.

The script runs for real against a copy of the repository's layout whose venv's ``python`` is a
stand-in that records its arguments: what is under test is which pip command runs and when, not
pip itself (the suite's own venv is the real install of deploy/native/constraints.txt, checked by
tests/stack/test_compose.py). The stand-in answers ``-m pip --version`` (the script's check that
the venv has a pip) without recording it. ``df`` is a stand-in too, reporting plenty of free
space (:func:`plenty_of_space`): the machine's own disk never decides a test, except where a test
puts its own ``df`` in front.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
import textwrap
import threading
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def fake_df(folder: Path, available_kb: int) -> Path:
    """A ``df`` in ``folder`` whose ``-Pk`` says ``available_kb`` KiB are free; returns it."""
    folder.mkdir(parents=True, exist_ok=True)
    df = folder / "df"
    df.write_text(
        "#!/bin/sh\necho 'Filesystem 1024-blocks Used Available Capacity Mounted on'\n"
        f"echo '/dev/x 2000000000 100 {available_kb} 1% /'\n"
    )
    df.chmod(0o755)
    return df


@pytest.fixture(autouse=True)
def plenty_of_space(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """1 TB free whatever this machine's disk has (a CI runner with under 7 GB free failed
    every test that makes a venv)."""
    folder = tmp_path / "plenty-bin"
    fake_df(folder, 1000 * 1000 * 1000)
    monkeypatch.setenv("PATH", f"{folder}:{os.environ['PATH']}")


@pytest.fixture
def clone(tmp_path: Path) -> Path:
    root = tmp_path / "clone"
    (root / "deploy" / "native").mkdir(parents=True)
    shutil.copy(ROOT / "deploy" / "native" / "bootstrap.sh", root / "deploy" / "native")
    (root / "deploy" / "native" / "constraints.txt").write_text("aiokafka==0.14.0\n")
    (root / "pyproject.toml").write_text("[project]\nname = 'genwire'\n")
    python = tmp_path / "home" / "venv" / "bin" / "python"
    python.parent.mkdir(parents=True)
    python.write_text(
        f'#!/bin/sh\n[ "$*" = "-m pip --version" ] && exit 0\necho "$*" >> {tmp_path / "pip.log"}\n'
    )
    python.chmod(0o755)
    return root


def run_script(clone: Path, **env: str) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("GENWIRE_")}
    environ.update(GENWIRE_HOME=str(clone.parent / "home"), **env)
    return subprocess.run(
        ["bash", str(clone / "deploy" / "native" / "bootstrap.sh")],
        check=False,
        env=environ,
        capture_output=True,
        text=True,
        timeout=60,
    )


def bootstrap(clone: Path, **env: str) -> list[str]:
    """Run the script; the pip commands it ran."""
    log = clone.parent / "pip.log"
    log.unlink(missing_ok=True)
    done = run_script(clone, **env)
    assert done.returncode == 0, done.stderr
    return log.read_text().splitlines() if log.exists() else []


def test_installs_with_the_constraints_once_and_again_when_they_change(clone: Path) -> None:
    constraints = clone / "deploy" / "native" / "constraints.txt"
    ran = bootstrap(clone)
    assert ran == [f"-m pip install --progress-bar off -c {constraints} -e {clone}[all,dev]"]
    assert bootstrap(clone) == []  # nothing changed: no pip at all
    constraints.write_text("aiokafka==0.14.1\n")  # relocked
    assert bootstrap(clone) == ran


def test_unlocked_resolves_without_the_constraints_and_locked_returns_to_them(
    clone: Path,
) -> None:
    unlocked = bootstrap(clone, GENWIRE_UNLOCKED="1")
    assert unlocked == [
        f"-m pip install --progress-bar off --upgrade --upgrade-strategy eager -e {clone}[all,dev]"
    ]  # pip would keep every installed version that satisfies a range: upgrade them all
    assert bootstrap(clone, GENWIRE_UNLOCKED="1") == []  # resolved again tomorrow, not now
    relocked = bootstrap(clone)  # back to the tested set: pip runs again, with -c
    assert len(relocked) == 1 and " -c " in relocked[0]


def test_missing_constraints_fail_with_the_way_out(clone: Path) -> None:
    (clone / "deploy" / "native" / "constraints.txt").unlink()
    done = run_script(clone)
    assert done.returncode == 1
    assert "constraints.txt is missing (GENWIRE_UNLOCKED=1 installs without it)" in done.stderr
    assert not (clone.parent / "pip.log").exists()


# ---- a venv without pip, this run's error, free space -------------------------------------------


def debian_python(tmp_path: Path) -> Path:
    """A stand-in ``python3.11`` for ``GENWIRE_PYTHON``: until ``python3.11-venv`` is "installed"
    (the file ``venv-pkg``), ``-m venv`` leaves a ``bin/python`` without pip and fails, as
    Debian's does; after, it makes a venv whose python records its pip commands. Each ``-m
    venv`` call is recorded in ``venv.log``."""
    python = tmp_path / "python3.11"
    python.write_text(
        textwrap.dedent(
            f"""\
            #!/bin/bash
            echo "$*" >> {tmp_path / "venv.log"}
            venv="${{@: -1}}"
            mkdir -p "$venv/bin"
            if [ ! -e {tmp_path / "venv-pkg"} ]; then
              printf '#!/bin/sh\\necho "$0: No module named pip" >&2\\nexit 1\\n' \\
                > "$venv/bin/python"
              chmod 755 "$venv/bin/python"
              echo "The virtual environment was not created successfully because ensurepip is \\
            not available." >&2
              exit 1
            fi
            [ "$1 $2 $3" = "-m venv --clear" ] || exit 2  # a venv left as it was keeps no pip
            rm -rf "$venv"; mkdir -p "$venv/bin"
            printf '#!/bin/sh\\n[ "$*" = "-m pip --version" ] && exit 0\\necho "$*" >> %s\\n' \\
              {tmp_path / "pip.log"} > "$venv/bin/python"
            chmod 755 "$venv/bin/python"
            """
        )
    )
    python.chmod(0o755)
    return python


def test_a_venv_left_without_pip_is_made_again(clone: Path) -> None:
    """Debian's python3.11 without python3.11-venv leaves bin/python and no pip: once the
    package is installed, the next run makes the venv again (--clear) and installs into it."""
    tmp = clone.parent
    shutil.rmtree(tmp / "home" / "venv")
    python = debian_python(tmp)
    failed = run_script(clone, GENWIRE_PYTHON=str(python))
    assert failed.returncode == 1
    assert "ensurepip is not available" in failed.stderr
    assert "apt-get install python3.11-venv" in failed.stderr
    assert (tmp / "home" / "venv" / "bin" / "python").exists()  # what Debian leaves behind
    again = run_script(clone, GENWIRE_PYTHON=str(python))  # still no python3.11-venv
    assert again.returncode == 1 and "ensurepip is not available" in again.stderr
    (tmp / "venv-pkg").touch()  # apt-get install python3.11-venv
    ran = bootstrap(clone, GENWIRE_PYTHON=str(python))
    assert ran == [
        f"-m pip install --progress-bar off -c {clone}/deploy/native/constraints.txt "
        f"-e {clone}[all,dev]"
    ]
    assert (tmp / "venv.log").read_text().splitlines()[-1].startswith("-m venv --clear ")
    assert bootstrap(clone, GENWIRE_PYTHON=str(python)) == []  # a working venv stays


def test_a_failure_quotes_this_runs_error_not_an_older_ones(clone: Path) -> None:
    """bootstrap.log is appended run after run: the reason given is from this run's part."""
    log = clone.parent / "home" / "logs" / "bootstrap.log"
    log.parent.mkdir(parents=True)
    log.write_text("ERROR: an older run's failure\n")
    python = clone.parent / "home" / "venv" / "bin" / "python"
    python.write_text('#!/bin/sh\n[ "$*" = "-m pip --version" ] && exit 0\necho Killed\nexit 137\n')
    done = run_script(clone)
    assert done.returncode == 1
    assert "pip install failed: Killed (full log:" in done.stderr
    assert "older" not in done.stderr
    python.write_text(
        '#!/bin/sh\n[ "$*" = "-m pip --version" ] && exit 0\n'
        'echo "ERROR: No matching distribution found for aiokafka==0.14.0"\necho done\nexit 1\n'
    )
    done = run_script(clone)
    assert "pip install failed: ERROR: No matching distribution found" in done.stderr


def small_disk(tmp_path: Path) -> str:
    """A ``PATH`` whose ``df`` says 2 GiB (2.1 GB) are free."""
    fake_df(tmp_path / "bin", 2 * 1024 * 1024)
    return f"{tmp_path / 'bin'}:{os.environ['PATH']}"


def test_a_new_venv_needs_the_free_space_first(clone: Path, tmp_path: Path) -> None:
    """Creating the venv starts a multi-GB install: too little free space fails before it.
    In GB (10^9 bytes), as the docs say: 6.0 GB of install plus 1 GB to spare."""
    shutil.rmtree(tmp_path / "home" / "venv")
    python = debian_python(tmp_path)
    done = run_script(clone, GENWIRE_PYTHON=str(python), PATH=small_disk(tmp_path))
    assert done.returncode == 1
    assert "needs about 7 GB free" in done.stderr and "which has 2.1 GB" in done.stderr
    assert "GENWIRE_MIN_FREE_GB=0 skips this check" in done.stderr
    assert not (tmp_path / "venv.log").exists()  # no venv was started


def test_min_free_gb_replaces_the_need_and_0_turns_the_check_off(
    clone: Path, tmp_path: Path
) -> None:
    shutil.rmtree(tmp_path / "home" / "venv")
    python = debian_python(tmp_path)
    (tmp_path / "venv-pkg").touch()
    path = small_disk(tmp_path)
    done = run_script(clone, GENWIRE_PYTHON=str(python), PATH=path, GENWIRE_MIN_FREE_GB="3")
    assert done.returncode == 1 and "needs about 3 GB free" in done.stderr
    done = run_script(clone, GENWIRE_PYTHON=str(python), PATH=path, GENWIRE_MIN_FREE_GB="08")
    assert done.returncode == 1 and "needs about 8 GB free" in done.stderr  # not octal
    done = run_script(clone, GENWIRE_PYTHON=str(python), PATH=path, GENWIRE_MIN_FREE_GB="lots")
    assert done.returncode == 1 and "a whole number of GB is expected" in done.stderr
    assert not (tmp_path / "venv.log").exists()
    done = run_script(clone, GENWIRE_PYTHON=str(python), PATH=path, GENWIRE_MIN_FREE_GB="0")
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "venv.log").read_text().startswith("-m venv --clear ")


# ---- a finished venv is never cleared; one run at a time ----------------------------------------


def test_a_finished_venv_whose_pip_fails_is_not_cleared(clone: Path, tmp_path: Path) -> None:
    """The running stack restarts its processes from the venv: a pip that fails once (a
    dependency half-upgraded, a full disk) must not get the whole venv deleted by the next
    `make venv` (--clear); the run fails saying how to make it again."""
    python = debian_python(tmp_path)
    assert bootstrap(clone, GENWIRE_PYTHON=str(python)) != []  # a finished install: stamped
    venv = tmp_path / "home" / "venv"
    (venv / "kept").write_text("the stack's")
    (venv / "bin" / "python").write_text("#!/bin/sh\necho 'No module named pip' >&2\nexit 1\n")
    (clone / "deploy" / "native" / "constraints.txt").write_text("aiokafka==0.14.1\n")  # relocked
    done = run_script(clone, GENWIRE_PYTHON=str(python))
    assert done.returncode == 1
    assert "was installed completely but its pip does not run now: " in done.stderr
    assert "No module named pip" in done.stderr
    assert f"`make down`, `rm -rf {venv}`, then `make venv`" in done.stderr
    assert (venv / "kept").read_text() == "the stack's"
    assert not (tmp_path / "venv.log").exists()  # no `-m venv` at all


def test_a_venv_with_genwire_installed_and_no_stamp_is_not_cleared(
    clone: Path, tmp_path: Path
) -> None:
    venv = tmp_path / "home" / "venv"
    dist = venv / "lib" / "python3.11" / "site-packages" / "genwire-0.1.0.dist-info"
    dist.mkdir(parents=True)
    (venv / "bin" / "python").write_text("#!/bin/sh\nexit 1\n")
    done = run_script(clone, GENWIRE_PYTHON=str(debian_python(tmp_path)))
    assert done.returncode == 1 and "was installed completely" in done.stderr
    assert dist.is_dir() and not (tmp_path / "venv.log").exists()


@pytest.mark.skipif(shutil.which("flock") is None, reason="no flock(1): the script runs unlocked")
def test_a_second_run_waits_for_the_one_installing(clone: Path, tmp_path: Path) -> None:
    """Two runs at once (two `make` targets, two sessions): the second clearing or installing
    into the venv the first is installing into would leave neither whole. The first one here is
    the test, holding ``<home>/venv.lock`` as a running bootstrap does."""
    lock = tmp_path / "home" / "venv.lock"
    environ = {k: v for k, v in os.environ.items() if not k.startswith("GENWIRE_")}
    environ["GENWIRE_HOME"] = str(tmp_path / "home")
    with lock.open("a") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        second = subprocess.Popen(
            ["bash", str(clone / "deploy" / "native" / "bootstrap.sh")],
            env=environ,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        lines: list[str] = []
        assert second.stderr is not None
        reader = threading.Thread(target=lambda: lines.extend(second.stderr or ()), daemon=True)
        reader.start()
        try:
            # Until it says it waits (however slow the machine), then a while longer.
            deadline = time.monotonic() + 60.0
            while not any("waiting for another" in line for line in lines):
                assert time.monotonic() < deadline and second.poll() is None, lines
                time.sleep(0.05)
            time.sleep(0.5)
            running = second.poll() is None
            installed = (tmp_path / "pip.log").exists()
        finally:
            fcntl.flock(held, fcntl.LOCK_UN)
    second.wait(timeout=60)
    reader.join(timeout=10)
    err = "".join(lines)
    assert running and not installed, err  # it waited: no pip while the other run held it
    assert f"waiting for another bootstrap run, which holds {lock}" in err
    assert second.returncode == 0, err
    assert (tmp_path / "pip.log").read_text().count("-m pip install") == 1
