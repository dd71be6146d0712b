"""Headless Chromium for the page tests (Debian's ``chromium``, installed by the bootstrap)."""

from __future__ import annotations

import shutil
import subprocess
import tempfile

import pytest

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
    """The browser, or a skip that says how to get it."""
    for name in ("chromium", "chromium-browser"):
        path = shutil.which(name)
        if path:
            return path
    pytest.skip("chromium is not installed (apt-get install -y chromium; `genwire up` does it)")


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
