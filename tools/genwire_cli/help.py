"""How the ``genwire`` command's help is laid out, and a walk over its parsers (for the tests)."""

from __future__ import annotations

import argparse
from collections.abc import Iterator


class HelpFormatter(argparse.HelpFormatter):
    """argparse's formatter, except that a paragraph with indented lines (a command list,
    examples) keeps its lines as written; other paragraphs are wrapped as usual."""

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        paragraphs = []
        for paragraph in text.split("\n\n"):
            lines = paragraph.splitlines()
            if any(line.startswith(" ") for line in lines):
                paragraphs.append("\n".join(indent + line for line in lines))
            else:
                paragraphs.append(super()._fill_text(paragraph, width, indent))
        return "\n\n".join(paragraphs)


def subcommands(
    parser: argparse.ArgumentParser,
) -> Iterator[tuple[str, str, argparse.ArgumentParser]]:
    """``(name, one-line help, parser)`` of each subcommand directly under ``parser``."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {a.dest: a.help or "" for a in action._get_subactions()}
            for name, sub in action.choices.items():
                yield name, str(helps.get(name, "")), sub


def all_parsers(parser: argparse.ArgumentParser) -> Iterator[argparse.ArgumentParser]:
    """``parser`` and every parser below it, depth first."""
    yield parser
    for _, _, sub in subcommands(parser):
        yield from all_parsers(sub)
