"""Parameters of a load scenario (kept light: the CLI imports it to build its parser)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class LoadConfig:
    """The load of one scenario, and how long to wait for its tail."""

    requests: int = 1500
    rate: float = 20.0
    max_tokens: int = 8
    drain_s: float = 120.0
    """After the last acknowledgement (and the last fault's end): longest wait for results."""
    stuck_wait_s: float = 60.0
    """After the results are in: longest wait for every partition's commit to catch up."""
