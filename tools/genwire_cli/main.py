"""The ``genwire`` command. Each area registers its own subcommands; heavy imports stay lazy."""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

# Modules exposing ``register(subparsers)``; each adds its subcommands with ``func`` defaults.
COMMAND_MODULES = (
    "genwire_stack.cli",
    "genwire_model.cli",
    "genwire_gateway.cli",
    "genwire_bench.cli",
    "genwire_bench.monitor.cli",
    "genwire_chaos.cli",
    "genwire_cli.dlq_cli",
)


def build_parser() -> argparse.ArgumentParser:
    """The full parser, with every area's subcommands."""
    parser = argparse.ArgumentParser(prog="genwire", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name != name:  # a real import error inside the module: surface it
                raise
            continue
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Parse and run; subcommands return an exit status."""
    args = build_parser().parse_args(argv)
    result = args.func(args)
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
