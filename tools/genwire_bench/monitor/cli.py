"""``genwire monitor-bench``: the monitor's throughput (and, with --quality, detection) figures."""

from __future__ import annotations

import argparse
from typing import Any

DESCRIPTION = (
    "Measure the monitor's engine on synthetic traffic: decode and aggregate throughput on one "
    "core, and with --quality the time to detect and resolve a latency incident or a drift and "
    "the false alarms over many simulated hours. Prints figures; asserts nothing."
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The benchmark's options."""
    parser.add_argument(
        "--requests", type=int, default=20_000, help="requests per round (default: %(default)s)"
    )
    parser.add_argument(
        "--per-payload",
        type=int,
        default=32,
        help="requests per Kafka value (default: %(default)s)",
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=5,
        help="rounds, to see memory over time (default: %(default)s)",
    )
    parser.add_argument(
        "--quality", action="store_true", help="also measure detection and false alarms"
    )
    parser.add_argument(
        "--detection",
        action="store_true",
        help="time to page with a full long window of good traffic first, per objective and "
        "bad share, beside the SRE Workbook's arithmetic; false alarms over a long steady run; "
        "fire/resolve pairs through an intermittent stall (docs/monitor.md, Detection times)",
    )
    parser.add_argument(
        "--scale",
        type=float,
        default=1 / 60,
        help="--detection: window scale of the simulated monitor (default: 1/60)",
    )
    parser.add_argument(
        "--steady-h",
        type=float,
        default=12.0,
        help="--detection: production hours of the steady run, per objective "
        "(default: %(default)s)",
    )
    parser.add_argument(
        "--live",
        action="store_true",
        help="time to page with real load through the running stack: a monitor started here "
        "reads the real spans; good (short) and bad (long) generations through the gateway "
        "after a full long window of good traffic (docs/monitor.md, Detection times)",
    )
    parser.add_argument(
        "--live-rate", type=float, default=6.0, help="--live: requests/s (default: %(default)s)"
    )
    parser.add_argument(
        "--live-objectives",
        default="0.99,0.995,0.999",
        help="--live: comma-separated objectives (default: %(default)s)",
    )
    parser.add_argument(
        "--live-shares",
        default="1,0.5,0.1",
        help="--live: comma-separated bad shares (default: %(default)s)",
    )
    parser.add_argument(
        "--live-warm-h",
        type=float,
        default=6.0,
        help="--live: production hours of good traffic first (default: %(default)s, the "
        "longest page window)",
    )
    parser.add_argument(
        "--good-tokens", type=int, default=4, help="--live: tokens of a good request"
    )
    parser.add_argument(
        "--bad-tokens", type=int, default=96, help="--live: tokens of a bad (slow) request"
    )
    parser.add_argument(
        "--live-threshold-ms",
        type=float,
        default=0.0,
        help="--live: the SLO's threshold (default: the geometric mean of the calibrated good "
        "and bad latencies)",
    )
    parser.add_argument(
        "--drift-stats",
        action="store_true",
        help="the drift tests' cost: the exact KS test's time beside scipy's at the monitor's "
        "window sizes, and the memory (RSS) scipy.stats would add (docs/monitor.md, Drift)",
    )
    parser.add_argument(
        "--seeds", type=int, default=3, help="--quality: repetitions (default: %(default)s)"
    )
    parser.add_argument(
        "--steady-s",
        type=float,
        default=120.0,
        help="--quality: seconds of steady traffic (default: %(default)s)",
    )


def register(subparsers: Any) -> None:
    """Add this area's subcommands to the ``genwire`` command."""
    bench = subparsers.add_parser(
        "monitor-bench",
        help="measure the monitor's decode+aggregate throughput (spans/s on one core)",
        description=DESCRIPTION,
    )
    add_arguments(bench)
    bench.set_defaults(func=_bench)


def main(argv: list[str] | None = None) -> None:
    """``python -m genwire_bench.monitor``: parse the options and run."""
    parser = argparse.ArgumentParser(
        prog="python -m genwire_bench.monitor", description=DESCRIPTION
    )
    add_arguments(parser)
    _bench(parser.parse_args(argv))


def _bench(args: argparse.Namespace) -> int:
    from genwire_bench.monitor.bench import run_bench  # heavy (numpy, scipy): only when run

    run_bench(args)
    return 0
