"""Formatting a KRaft node's storage: cluster ids Kafka's tools accept, and a failed install step
that says why.

One CI run's secure stack drew a cluster id starting with "-" (1 draw in 64): Kafka's
StorageTool read it as an option, printed its usage error to stderr and exited 1, and the
message quoted the INFO line its logging had written to stdout instead.
"""

from __future__ import annotations

import base64
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest
from genwire_stack import kafka_node
from genwire_stack.bootstrap import run_step
from genwire_stack.components import Kafka
from genwire_stack.errors import StackError
from genwire_stack.health import error_line
from genwire_stack.kafka_node import new_cluster_id
from genwire_stack.paths import StackPaths

from genwire.settings import CommonSettings
from tests.stack.support import free_port

DASHED = uuid.UUID(bytes=b"\xf8" + bytes(15))
"""URL-safe base64 of a first byte 0xF8 starts with "-" (index 62 of the alphabet)."""


def test_a_new_cluster_id_never_starts_with_a_dash(monkeypatch: pytest.MonkeyPatch) -> None:
    plain = uuid.UUID(bytes=b"\x00" + bytes(range(1, 16)))
    draws = iter([DASHED, DASHED, plain])
    monkeypatch.setattr(kafka_node.uuid, "uuid4", lambda: next(draws))
    cluster_id = new_cluster_id()
    assert cluster_id == "AAECAwQFBgcICQoLDA0ODw"  # the third draw's, after two dashed ones
    assert len(cluster_id) == 22


def test_a_failed_step_quotes_its_error_line_not_its_last_output(tmp_path: Path) -> None:
    """stdout ends in logging, the error is on stderr: the message names the error; a secret
    the tool echoes stays masked in the log and the message."""
    script = (
        "import sys; print('ERROR bad password=hunter2', file=sys.stderr); "
        "print('INFO registered a bean'); raise SystemExit(1)"
    )
    log = tmp_path / "logs" / "step.log"
    with pytest.raises(StackError) as raised:
        run_step([sys.executable, "-c", script], what="a step", log=log, hint="fix it")
    message = str(raised.value)
    assert "last error line: 'ERROR bad password=***'" in message
    assert "registered a bean" not in message and "hunter2" not in message
    kept = log.read_text()
    assert "INFO registered a bean" in kept and "ERROR bad password=***" in kept
    assert "hunter2" not in kept


def test_a_failed_step_with_nothing_on_stderr_quotes_its_log(tmp_path: Path) -> None:
    log = tmp_path / "logs" / "step.log"
    with pytest.raises(StackError, match="last log line: 'only stdout'"):
        run_step(
            [sys.executable, "-c", "print('only stdout'); raise SystemExit(3)"],
            what="s",
            log=log,
            hint="",
        )


def test_a_steps_stderr_reaches_its_log_while_it_runs(tmp_path: Path) -> None:
    """A long step (a download, a build) shows its progress in the log as it goes, and an
    interrupted one what it got to. (Its lines are built at run time: the command line, in the
    log's header, must not hold them.)"""
    log = tmp_path / "logs" / "step.log"
    go = tmp_path / "go"
    script = (
        "import pathlib, sys, time\n"
        "print('fetch' + 'ing 1 of 2', file=sys.stderr, flush=True)\n"
        f"while not pathlib.Path({str(go)!r}).exists(): time.sleep(0.05)\n"
        "print('fetch' + 'ed', file=sys.stderr)"
    )
    failures: list[BaseException] = []

    def step() -> None:
        try:
            run_step([sys.executable, "-c", script], what="s", log=log, hint="")
        except BaseException as exc:  # the test's thread says so, not the step's
            failures.append(exc)

    running = threading.Thread(target=step)
    running.start()
    try:
        # bounded so that a step whose stderr never shows fails here, not at the suite's timeout
        deadline = time.monotonic() + 30
        while "fetching 1 of 2" not in (log.read_text() if log.exists() else ""):
            assert time.monotonic() < deadline, "the step's stderr did not reach its log"
            time.sleep(0.05)
        assert "fetched" not in log.read_text()  # still running
    finally:
        go.touch()
        running.join(30)
    assert not running.is_alive() and failures == []
    assert log.read_text().endswith("fetching 1 of 2\nfetched\n")


def test_the_line_quoted_is_the_one_naming_the_error() -> None:
    """Not a notice or warning printed after it (pip's, a JDK's, a log's); stderr before
    stdout; else stderr's last word, never stdout's logging."""
    pip = "ERROR: No matching distribution found for x==9\n[notice] A new release of pip\n"
    assert error_line(pip, "") == "ERROR: No matching distribution found for x==9"
    maven_err = "WARNING: sun.misc.Unsafe::objectFieldOffset was called\n"
    maven_out = "[INFO] Scanning\n[ERROR] Failed to execute goal dependency:copy\n[INFO] done\n"
    assert error_line(maven_err, maven_out) == "[ERROR] Failed to execute goal dependency:copy"
    usage = (
        "usage: kafka-storage format\nkafka-storage: error: argument --cluster-id/-t: expected\n"
    )
    assert error_line(usage, "[2026] INFO Registered MBean\n") == usage.splitlines()[1]
    apt = "E: Unable to locate package redis-servr\n"
    assert error_line(apt, "Reading state information...\n") == apt.strip()
    formatted = "All of the log directories are already formatted.\n"
    assert error_line(formatted, "[2026] INFO Registered MBean\n") == formatted.strip()
    traceback = (
        'Traceback (most recent call last):\n  File "x.py", line 1\n'
        "ModuleNotFoundError: No module named 'x'\n[2026-12-05 11:03:27] WARN shutting down\n"
    )
    assert error_line(traceback) == "ModuleNotFoundError: No module named 'x'"
    assert error_line("", "done\n") is None


def test_a_dashed_cluster_id_formats(infra: CommonSettings, tmp_path: Path) -> None:
    """A cluster's id file written by an older genwire may start with "-": the real StorageTool
    still formats the node with it."""
    settings = CommonSettings(home=tmp_path)
    paths = StackPaths.from_settings(settings)
    ports = [free_port() for _ in range(4)]
    cluster = [(ports[0], ports[1]), (ports[2], ports[3])]
    node = Kafka(paths, settings, *cluster[0], node_id=1, cluster=cluster, heap="256m")
    node.use_installed(infra)
    dashed = base64.urlsafe_b64encode(DASHED.bytes).decode().rstrip("=")
    assert dashed.startswith("-")
    node.cluster_id_file.parent.mkdir(parents=True, exist_ok=True)
    node.cluster_id_file.write_text(dashed)
    node.prepare()
    meta = (node.data_dir / "meta.properties").read_text()
    assert f"cluster.id={dashed}\n" in meta
