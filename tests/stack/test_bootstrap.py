"""deploy/native/bootstrap.sh installs the tested versions (pip -c) and reinstalls when they move.

The script runs for real against a copy of the repository's layout whose venv's ``python`` is a
stand-in that records its arguments: what is under test is which pip command runs and when, not
pip itself (the suite's own venv is the real install of deploy/native/constraints.txt, checked by
tests/stack/test_compose.py). The stand-in answers ``-m pip --version`` (the script's check that
the venv has a pip) without recording it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


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


def test_a_new_venv_needs_the_free_space_first(clone: Path, tmp_path: Path) -> None:
    """Creating the venv starts a multi-GB install: too little free space fails before it."""
    shutil.rmtree(tmp_path / "home" / "venv")
    python = debian_python(tmp_path)
    fake_bin = tmp_path / "bin"
    fake_bin.mkdir()
    df = fake_bin / "df"  # 2 GiB free
    df.write_text(
        "#!/bin/sh\necho 'Filesystem 1024-blocks Used Available Capacity Mounted on'\n"
        "echo '/dev/x 100000000 97902848 2097152 98% /'\n"
    )
    df.chmod(0o755)
    done = run_script(clone, GENWIRE_PYTHON=str(python), PATH=f"{fake_bin}:{os.environ['PATH']}")
    assert done.returncode == 1
    assert "needs about 10 GB free" in done.stderr and "which has 2 GB" in done.stderr
    assert not (tmp_path / "venv.log").exists()  # no venv was started
