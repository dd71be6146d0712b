"""``genwire up``, ``genwire down`` and ``genwire status``."""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any


def _names(value: str) -> list[str]:
    return [v.strip() for v in value.split(",") if v.strip()]


def register(subparsers: Any) -> None:
    """Add the stack's subcommands to the ``genwire`` parser."""
    up = subparsers.add_parser(
        "up", help="install what is missing, start the native stack, wait until healthy"
    )
    up.add_argument(
        "--only",
        type=_names,
        default=None,
        metavar="NAMES",
        help="comma-separated components (kafka,redis,triton,jaeger,preprocess,...); default all",
    )
    up.add_argument(
        "--no-model",
        dest="model",
        action="store_false",
        default=None,
        help="do not build or load the default model",
    )
    up.set_defaults(func=_up)

    down = subparsers.add_parser("down", help="stop what `genwire up` started (by pid)")
    down.add_argument("--only", type=_names, default=None, metavar="NAMES")
    down.set_defaults(func=_down)

    status = subparsers.add_parser("status", help="show what runs where")
    status.set_defaults(func=_status)


def _say(line: str) -> None:
    print(f"genwire: {line}", flush=True)


def _up(args: argparse.Namespace) -> int:
    from genwire.stack import StackError, ensure_up, format_table

    began = time.monotonic()
    try:
        rows = ensure_up(args.only, model=args.model, out=_say)
    except StackError as exc:
        print(f"genwire up: error: {exc}", file=sys.stderr, flush=True)
        return 1
    except KeyboardInterrupt:
        print("genwire up: interrupted; stopped what this run had started", file=sys.stderr)
        return 130
    print(format_table(rows))
    print(f"genwire: stack up in {time.monotonic() - began:.0f} s")
    return 0


def _down(args: argparse.Namespace) -> int:
    from genwire.stack import StackError, down

    try:
        stopped = down(args.only, out=_say)
    except StackError as exc:
        print(f"genwire down: error: {exc}", file=sys.stderr)
        return 1
    if not stopped:
        _say("nothing was running")
    return 0


def _status(args: argparse.Namespace) -> int:
    from genwire.stack import format_table, status

    print(format_table(status()))
    return 0
