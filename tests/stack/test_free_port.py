"""``free_port``: a free port below the kernel's ephemeral range, never handed out twice."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
from genwire_stack import health


def test_ports_come_from_below_the_ephemeral_range_free_and_distinct() -> None:
    low = health._ephemeral_low()
    ports = [health.free_port() for _ in range(50)]
    assert len(set(ports)) == 50  # never the same port twice in one process
    for port in ports:
        # Outgoing connections take their source ports from the range: none can take these.
        assert health._LOWEST_PORT <= port < low
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", port))  # free: a server can bind it


def test_a_port_in_use_is_skipped(monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        taken = busy.getsockname()[1]
        busy.listen()
        draws = iter([taken, *range(20000, 20200)])  # the busy one, then plenty of others
        monkeypatch.setattr(health, "_ephemeral_low", lambda: 65535)
        monkeypatch.setattr(health.random.Random, "randrange", lambda self, a, b: next(draws))
        assert health.free_port() != taken


def test_without_room_below_the_range_the_kernel_picks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ranges = tmp_path / "ip_local_port_range"
    ranges.write_text("1024\t65535\n")
    monkeypatch.setattr(health, "EPHEMERAL_RANGE", ranges)
    assert health._ephemeral_low() == 1024
    port = health.free_port()
    assert port >= 1024  # the kernel's pick, from its range
    ranges.write_text("garbage\n")
    assert health._ephemeral_low() == 32768  # unreadable: Linux's default


def test_the_kernels_picks_are_never_handed_out_twice_either(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The kernel may pick a port again once its socket is closed; ``free_port`` draws again."""
    monkeypatch.setattr(health, "_ephemeral_low", lambda: health._LOWEST_PORT)  # no room below
    picks = iter([40001, 40001, 40002])
    real = socket.socket

    class Picked(real):  # type: ignore[misc, valid-type]
        def getsockname(self) -> tuple[str, int]:
            return ("127.0.0.1", next(picks))

    monkeypatch.setattr(health.socket, "socket", Picked)
    monkeypatch.setattr(health, "_given", set())
    assert [health.free_port(), health.free_port()] == [40001, 40002]
