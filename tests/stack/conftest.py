"""Fixtures of the stack's own tests."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest
from genwire_stack.paths import StackPaths
from genwire_stack.process import records

from genwire.settings import CommonSettings


@pytest.fixture
def home(tmp_path: Path) -> Iterator[tuple[StackPaths, CommonSettings]]:
    """A stack home of the test's own (its paths and settings); whatever the test left
    running in it (a supervisor's whole group) is killed afterwards."""
    settings = CommonSettings(home=tmp_path)
    paths = StackPaths.from_settings(settings)
    yield paths, settings
    for record in records(paths.run):
        if record.alive():
            os.killpg(record.pid, signal.SIGKILL)
