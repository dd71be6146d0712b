"""The ``genwire`` command: one entry point that dispatches to every tool's subcommands.

Each area adds its own subcommands (``register(subparsers)``); their heavy imports wait until a
command runs. The top-level help lists the commands by what they are for (:data:`GROUPS`).
"""

from __future__ import annotations

import argparse
import importlib
import shutil
import sys
import textwrap
from collections.abc import Sequence
from typing import Any

from pydantic import SecretStr, ValidationError

from genwire.settings import CommonSettings
from genwire_cli.help import HelpFormatter, all_parsers

# Modules exposing ``register(subparsers)``; each adds its subcommands with ``func`` defaults.
COMMAND_MODULES = (
    "genwire_stack.cli",
    "genwire_model.cli",
    "genwire_gateway.cli",
    "genwire_bench.cli",
    "genwire_bench.monitor.cli",
    "genwire_chaos.cli",
    "genwire_cli.dlq_cli",
    "genwire_cli.keys_cli",
    "genwire_cli.usage_cli",
    "genwire_cli.feedback_cli",
)

DESCRIPTION = (
    "Serve a generative model through genwire's event-driven pipeline on this machine: start "
    "the native stack (Kafka, Redis, Triton, Jaeger and the five services), send it requests, "
    "build the model, measure the pipeline and operate it."
)

GROUPS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("run the stack", ("up", "down", "restart", "status", "topics")),
    ("send requests", ("generate", "demo")),
    ("the model", ("model", "default-model")),
    ("measure", ("bench", "monitor-bench")),
    ("operate", ("chaos", "dlq", "keys", "usage", "feedback")),
)
"""The top-level help's sections; a command in none of them is listed under "other"."""

EPILOG = """\
examples:
  genwire up                       start everything, then send one demo request
  genwire generate "Once upon a time" --stream
  genwire status                   what runs where, and why something is not ready
  genwire restart --only gateway   restart one service after changing its code

Run `genwire COMMAND --help` for a command's options."""


class _Listing:
    """Hands ``add_parser`` on to the real subparsers and notes each command's one-line help."""

    def __init__(self, subparsers: Any) -> None:
        self._subparsers = subparsers
        self.helps: dict[str, str] = {}

    def add_parser(self, name: str, **kwargs: Any) -> argparse.ArgumentParser:
        self.helps[name] = str(kwargs.get("help") or "")
        parser: argparse.ArgumentParser = self._subparsers.add_parser(name, **kwargs)
        return parser


def _command_list(helps: dict[str, str]) -> str:
    """The commands under their sections, one line each (wrapped), indented like argparse's."""
    width = max(len(name) for name in helps) + 2
    columns = shutil.get_terminal_size().columns - 2  # as argparse wraps
    placed = {name for _, names in GROUPS for name in names}
    sections = [(title, [n for n in names if n in helps]) for title, names in GROUPS]
    sections.append(("other", [n for n in helps if n not in placed]))
    blocks = []
    for title, names in sections:
        if not names:
            continue
        lines = [f"{title}:"]
        for name in names:
            lines += textwrap.wrap(
                helps[name],
                width=max(columns, width + 40),
                initial_indent=f"  {name:<{width}}",
                subsequent_indent=" " * (width + 2),
            ) or [f"  {name}"]
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks)


def build_parser() -> argparse.ArgumentParser:
    """The full parser, with every area's subcommands."""
    parser = argparse.ArgumentParser(
        prog="genwire",
        usage="genwire [-h] COMMAND [options]",
        epilog=EPILOG,
        formatter_class=HelpFormatter,
    )
    sub = parser.add_subparsers(
        dest="command", required=True, metavar="COMMAND", help=argparse.SUPPRESS, prog="genwire"
    )
    listing = _Listing(sub)
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name != name:  # a real import error inside the module: surface it
                raise
            continue
        module.register(listing)
    parser.description = f"{DESCRIPTION}\n\n{_command_list(listing.helps)}"
    for each in all_parsers(parser):
        each.formatter_class = HelpFormatter
    return parser


def settings_error(exc: ValidationError) -> str:
    """What a user reads when a ``GENWIRE_*`` variable holds a value the settings refuse."""
    lines = [f"genwire: {exc.error_count()} invalid setting(s) in the environment:"]
    for error in exc.errors():
        if not error["loc"]:  # a rule across fields: its message names them
            lines.append(f"  {error['msg']}")
            continue
        field = str(error["loc"][0])
        info = CommonSettings.model_fields.get(field)
        secret = info is not None and info.annotation in (SecretStr, SecretStr | None)
        shown = "<hidden>" if secret else repr(error.get("input"))
        lines.append(f"  GENWIRE_{field.upper()}={shown}: {error['msg']}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Parse and run; subcommands return an exit status (2: a command that reads the settings
    found a ``GENWIRE_*`` value they refuse). A command that reads none (``keys generate``)
    runs whatever the environment holds."""
    args = build_parser().parse_args(argv)
    try:
        result = args.func(args)
    except ValidationError as exc:
        # Commands build CommonSettings from the environment alone; another model's error
        # (a service's settings, a defect of ours) keeps its traceback.
        if exc.title != CommonSettings.__name__:
            raise
        print(settings_error(exc), file=sys.stderr)
        return 2
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
