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
    parser.add_argument("--requests", type=int, default=20_000, help="requests per round")
    parser.add_argument("--per-payload", type=int, default=32, help="requests per Kafka value")
    parser.add_argument("--rounds", type=int, default=5, help="rounds (memory over time)")
    parser.add_argument("--quality", action="store_true", help="detection and false alarms")
    parser.add_argument("--seeds", type=int, default=3, help="--quality: repetitions")
    parser.add_argument("--steady-s", type=float, default=120.0, help="--quality: steady run")


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
