"""A second ``make up``/``down`` while the first holds the stack lock (building Jaeger takes
minutes) says whom it waits for, at once, instead of hanging without a word."""

from __future__ import annotations

import os
import queue
import subprocess
import sys
import threading
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

import pytest
from genwire_stack.process import LOCK_FILE, locked

HOLD = """
import sys, time
from pathlib import Path
from genwire_stack.process import locked
with locked(Path(sys.argv[1])):
    print("held", flush=True)
    sys.stdin.readline()  # until the test lets go
print("released", flush=True)
"""

WAIT = """
import sys
from pathlib import Path
from genwire_stack.process import locked
with locked(Path(sys.argv[1])):
    print("got it", flush=True)
"""


@pytest.fixture
def holder(tmp_path: Path) -> Iterator[subprocess.Popen[str]]:
    """Another genwire run holding the stack lock of ``tmp_path/run``."""
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(tmp_path / "run")],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None and proc.stdout.readline() == "held\n"
    yield proc
    if proc.poll() is None:
        proc.kill()
    proc.wait(5)


def _lines(stream: Iterable[str], into: queue.Queue[str]) -> None:
    for line in stream:
        into.put(line)


def test_a_waiting_run_says_whom_it_waits_for_within_a_second(
    tmp_path: Path, holder: subprocess.Popen[str]
) -> None:
    run = tmp_path / "run"
    assert (run / LOCK_FILE).read_text().strip() == str(holder.pid), "the holder's pid"
    began = time.monotonic()
    waiter = subprocess.Popen(
        [sys.executable, "-c", WAIT, str(run)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        said: queue.Queue[str] = queue.Queue()
        threading.Thread(target=_lines, args=(waiter.stderr, said), daemon=True).start()
        # The interpreter's own start counts too: 1 s after it imported, 10 s in all.
        line = said.get(timeout=10)
        assert line == (
            f"genwire: waiting for another genwire run (pid {holder.pid}) holding "
            f"{run / LOCK_FILE}\n"
        )
        assert waiter.poll() is None, "it waits"
        assert (run / LOCK_FILE).read_text().strip() == str(holder.pid), "not truncated"
        assert holder.stdin is not None
        holder.stdin.write("\n")
        holder.stdin.flush()
        out, _ = waiter.communicate(timeout=20)
        assert out == "got it\n"
    finally:
        if waiter.poll() is None:
            waiter.kill()
            waiter.wait(5)
    assert time.monotonic() - began < 30


def test_the_message_goes_to_the_callers_out_before_it_waits(
    tmp_path: Path, holder: subprocess.Popen[str]
) -> None:
    run = tmp_path / "run"
    said: queue.Queue[str] = queue.Queue()
    acquired = threading.Event()

    def wait_for_it() -> None:
        with locked(run, out=said.put):
            acquired.set()
            assert (run / LOCK_FILE).read_text() == f"{os.getpid()}\n"

    began = time.monotonic()
    thread = threading.Thread(target=wait_for_it, daemon=True)
    thread.start()
    # Said before it blocks (the holder keeps the lock until told): not at the holder's release.
    # 10 s: far from "never", and room for a loaded machine.
    message = said.get(timeout=10.0)
    assert time.monotonic() - began < 10.0
    assert message == f"waiting for another genwire run (pid {holder.pid}) holding {run}/stack.lock"
    assert not acquired.is_set()
    assert holder.stdin is not None
    holder.stdin.write("\n")
    holder.stdin.flush()
    thread.join(20)
    assert acquired.is_set()
    assert (run / LOCK_FILE).read_text() == "", "emptied on release"


def test_an_uncontended_lock_says_nothing_and_records_its_holder(tmp_path: Path) -> None:
    said: list[str] = []
    with locked(tmp_path / "run", out=said.append):
        assert (tmp_path / "run" / LOCK_FILE).read_text() == f"{os.getpid()}\n"
    assert said == []
