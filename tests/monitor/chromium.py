"""Headless Chromium for the page tests (Debian's ``chromium``, installed when missing)."""

from __future__ import annotations

import shutil
import subprocess
import tempfile

import pytest
from genwire_stack import bootstrap
from genwire_stack.errors import StackError
from genwire_stack.paths import StackPaths

FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
)


def chromium_binary() -> str:
    """The browser; installed from Debian's packages (as the stack installs Redis) if missing."""
    for _ in range(2):
        for name in ("chromium", "chromium-browser"):
            path = shutil.which(name)
            if path:
                return path
        try:
            bootstrap.apt_install(
                ["chromium"],
                why="the status page test",
                log=StackPaths.from_settings().logs / "chromium.log",
            )
        except StackError as exc:
            pytest.fail(f"chromium is needed and could not be installed: {exc}", pytrace=False)
    pytest.fail("chromium was installed but is not on PATH", pytrace=False)


def dump_dom(url: str, timeout_s: float = 60.0) -> str:
    """The DOM Chromium built from ``url`` after loading it, with a fresh profile."""
    binary = chromium_binary()
    with tempfile.TemporaryDirectory(prefix="genwire-chromium-") as profile:
        done = subprocess.run(
            [binary, *FLAGS, f"--user-data-dir={profile}", "--dump-dom", url],
            capture_output=True,
            text=True,
            timeout=timeout_s,
            check=False,
        )
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def screenshot(url: str, path: str, timeout_s: float = 60.0) -> None:
    """A PNG of the page as a person would see it."""
    binary = chromium_binary()
    with tempfile.TemporaryDirectory(prefix="genwire-chromium-") as profile:
        done = subprocess.run(
            [
                binary,
                *FLAGS,
                f"--user-data-dir={profile}",
                f"--screenshot={path}",
                "--window-size=1280,2400",
                url,
            ],
            capture_output=True,
            text=True,
            timeout=timeout_s,
            check=False,
        )
    assert done.returncode == 0, done.stderr[-2000:]
