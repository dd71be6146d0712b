"""Monitor throughput benchmark: ``python -m genwire_monitor.bench [--requests N] [--rounds R]``.

Generates realistic OTLP payloads (synth.py), then measures on this one thread:
decode only, and decode + aggregate (stage sketches, trace assembly, SLO counters, drift
windows) + completing the traces; then repeats rounds to show memory staying flat. Prints
figures; asserts nothing.
"""

from __future__ import annotations

import argparse
import resource
import time

from genwire_monitor.config import MonitorSettings
from genwire_monitor.engine import MonitorEngine
from genwire_monitor.spans import decode
from genwire_monitor.synth import REFERENCE, SPANS_PER_REQUEST, payloads


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        pages = int(f.read().split()[1])
    return pages * resource.getpagesize() / 2**20


def main(argv: list[str] | None = None) -> None:
    """Run the benchmark and print its figures."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=20_000, help="requests per round")
    parser.add_argument("--per-payload", type=int, default=32, help="requests per Kafka value")
    parser.add_argument("--rounds", type=int, default=5, help="rounds (memory over time)")
    args = parser.parse_args(argv)

    data = list(payloads(REFERENCE, args.requests, args.per_payload, seed=0))
    spans = args.requests * SPANS_PER_REQUEST
    mb = sum(len(p) for p in data) / 2**20
    print(f"payloads: {len(data)} Kafka values, {spans} spans, {mb:.1f} MiB")

    t = time.perf_counter()
    decoded = sum(1 for p in data for _ in decode(p))
    dt = time.perf_counter() - t
    print(f"decode only:            {decoded / dt:10,.0f} spans/s ({dt:.2f} s)")

    settings = MonitorSettings(window_scale=1.0, trace_idle_s=1.0)
    engine = MonitorEngine(settings)
    for round_no in range(1, args.rounds + 1):
        if round_no > 1:  # fresh trace ids (not timed)
            data = list(payloads(REFERENCE, args.requests, args.per_payload, seed=round_no))
        now = time.time()
        t = time.perf_counter()
        engine.ingest(data, now)
        t_ingest = time.perf_counter() - t
        completed = engine.complete(now + 10.0)
        t_all = time.perf_counter() - t
        t = time.perf_counter()
        engine.tick(now + 10.0)
        t_tick = time.perf_counter() - t
        print(
            f"round {round_no}: decode+aggregate {spans / t_ingest:10,.0f} spans/s; with trace "
            f"completion {spans / t_all:10,.0f} spans/s; evaluation {t_tick * 1000:.0f} ms; "
            f"RSS {_rss_mb():.0f} MiB; requests completed {completed}"
        )
    pct = engine.percentiles(time.time() + 10)
    e2e = pct.get("end_to_end", {})
    print(
        f"end_to_end p50/p95/p99 ms: {e2e.get('p50', 0):.1f} / {e2e.get('p95', 0):.1f} / "
        f"{e2e.get('p99', 0):.1f} over {int(e2e.get('count', 0))} requests"
    )


if __name__ == "__main__":
    main()
