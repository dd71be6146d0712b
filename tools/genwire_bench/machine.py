"""The machine's own speed, read before and after a run.

Runs on this 2-core VM move with the hour as much as with the code (docs/benchmarks.md: the
same code's overheads and CPU per request differed by 2x between hours and between VMs, with
the hypervisor's steal near zero throughout). A fixed single-threaded workload in the style of
a stage's per-record Python (JSON encoding and decoding of a result-sized event, dict and
string building), timed before and after the run, says how fast the machine ran then: two
runs whose reference times differ compare their machines, not only their code.
"""

from __future__ import annotations

import json
import time

ROUNDS = 5  # best of: the workload's own noise, not the machine's speed, is what varies
_EVENTS = 300


def _payload() -> dict[str, object]:
    return {
        "request_id": "bench-reference-0000",
        "model": "genwire-gpt",
        "text": "Once upon a time " * 24,
        "token_ids": list(range(64)),
        "logprobs": [-0.5 - i / 64 for i in range(64)],
        "timings": {"received": 1.7e12, "prepared": 1.7e12 + 1.5, "completed": 1.7e12 + 30.25},
        "metadata": {"user": "bench", "tenant": "reference"},
    }


def workload() -> int:
    """The fixed work: ``_EVENTS`` events encoded, decoded and stamped (returns a checksum so
    nothing is optimised away)."""
    payload = _payload()
    total = 0
    for i in range(_EVENTS):
        text = json.dumps(payload)
        event = json.loads(text)
        event["sequence"] = i
        event["label"] = f"{event['request_id']}-{i}"
        total += len(text) + len(event["label"])
    return total


def reference_ms(rounds: int = ROUNDS) -> float:
    """The workload's best time over ``rounds`` runs, in milliseconds (lower: a faster
    machine, or a quieter one)."""
    best = float("inf")
    for _ in range(max(1, rounds)):
        started = time.perf_counter()
        workload()
        best = min(best, time.perf_counter() - started)
    return round(best * 1e3, 2)
