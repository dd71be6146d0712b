"""`genwire --help` and every subcommand's help are written for the person running the command."""

from __future__ import annotations

import argparse
import os
import re
from pathlib import Path

import pytest
from genwire_cli.help import HelpFormatter, all_parsers, subcommands
from genwire_cli.main import DESCRIPTION, GROUPS, build_parser
from genwire_stack.catalog import COMPONENT_GROUPS, is_component_name
from genwire_stack.components import build_components
from genwire_stack.layout import MAX_INSTANCES, SCALABLE, StackLayout
from genwire_stack.paths import StackPaths

from genwire.settings import CommonSettings

DEVELOPER_NOTE = re.compile(
    r"\b(imports?|imported|importlib|lazy|lazily|modules?|register(s|ed)?|subparsers?|"
    r"argparse|TODO|FIXME|XXX)\b|``",
    re.IGNORECASE,
)
"""Words that belong in a docstring, not in what a user reads (``…`` is reST markup)."""


def _developer_notes(text: str | None) -> list[str]:
    return [m.group(0) for m in DEVELOPER_NOTE.finditer(text or "")]


def _texts(parser: argparse.ArgumentParser) -> list[tuple[str, str]]:
    """(where, text) of everything ``parser --help`` shows that a person wrote."""
    where = parser.prog
    texts = [(f"{where}: description", parser.description or "")]
    texts.append((f"{where}: epilog", parser.epilog or ""))
    for action in parser._actions:
        if action.help and action.help is not argparse.SUPPRESS:
            texts.append((f"{where} {'/'.join(action.option_strings) or action.dest}", action.help))
    texts += [(f"{where} {name}: help", help_) for name, help_, _ in subcommands(parser)]
    return texts


def test_the_check_catches_todays_developer_note() -> None:
    old = (
        "The ``genwire`` command. Each area registers its own subcommands; heavy imports stay lazy."
    )
    assert _developer_notes(old)
    assert not _developer_notes(DESCRIPTION)


def test_every_command_says_what_it_does_and_every_option_has_help() -> None:
    parser = build_parser()
    missing: list[str] = []
    for each in all_parsers(parser):
        if not (each.description or "").strip():
            missing.append(f"{each.prog}: no description")
        for name, help_, _ in subcommands(each):
            if not help_.strip():
                missing.append(f"{each.prog} {name}: no one-line help")
        for action in each._actions:
            if isinstance(action, (argparse._HelpAction, argparse._SubParsersAction)):
                continue
            if not action.help or action.help is argparse.SUPPRESS or not action.help.strip():
                missing.append(f"{each.prog} {'/'.join(action.option_strings) or action.dest}")
    assert not missing, "help missing:\n" + "\n".join(missing)


def test_no_help_text_is_a_note_for_developers() -> None:
    found = [
        f"{where}: {notes} in {text!r}"
        for each in all_parsers(build_parser())
        for where, text in _texts(each)
        if (notes := _developer_notes(text))
    ]
    assert not found, "\n".join(found)


def test_the_main_commands_show_examples() -> None:
    parser = build_parser()
    commands = {name: sub for name, _, sub in subcommands(parser)}
    for name in ("up", "bench", "chaos", "dlq"):
        epilog = commands[name].epilog or ""
        assert "examples:" in epilog and f"genwire {name}" in epilog, name
    assert "genwire up" in (parser.epilog or "")


def test_the_top_level_help_groups_every_command() -> None:
    parser = build_parser()
    names = [name for name, _, _ in subcommands(parser)]
    grouped = [name for _, members in GROUPS for name in members]
    assert sorted(names) == sorted(grouped), "a command is in no group, or a group names no command"
    text = parser.format_help()
    for title, members in GROUPS:
        assert f"\n{title}:\n" in text
        for name in members:
            assert re.search(rf"^  {re.escape(name)} ", text, re.M), name
    assert "other:" not in text


def test_every_parser_uses_the_help_layout() -> None:
    for each in all_parsers(build_parser()):
        assert each.formatter_class is HelpFormatter, each.prog
        each.format_help()  # renders


@pytest.mark.parametrize("command", ["up", "down", "restart"])
def test_only_lists_and_checks_the_component_names(
    command: str, capsys: pytest.CaptureFixture[str]
) -> None:
    parser = build_parser()
    sub = {name: p for name, _, p in subcommands(parser)}[command]
    help_text = " ".join(sub.format_help().split())
    for name in COMPONENT_GROUPS:
        assert name in help_text
    args = parser.parse_args([command, "--only", "gateway,kafka-2,preprocess-3,monitor-1"])
    assert args.only == ["gateway", "kafka-2", "preprocess-3", "monitor-1"]
    with pytest.raises(SystemExit) as exit_:
        parser.parse_args([command, "--only", "gateway,gatewya"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "unknown component(s) gatewya" in err
    assert all(name in err for name in COMPONENT_GROUPS)


def test_component_names() -> None:
    for name in (*COMPONENT_GROUPS, "kafka-1", "kafka-3", "preprocess-9", "gateway-2", "monitor-1"):
        assert is_component_name(name), name
    for name in ("redis-1", "monitor-2", "kafka-4", "preprocess-10", "preprocess-0", "", "all"):
        assert not is_component_name(name), name


def test_component_names_are_those_of_the_stack(tmp_path: Path) -> None:
    """What --only accepts is exactly what the stack answers to, in its largest and smallest
    layouts (names, groups, aliases)."""
    settings = CommonSettings(home=tmp_path)
    paths = StackPaths.from_settings(settings)
    largest = StackLayout(brokers=3, scale=dict.fromkeys(SCALABLE, MAX_INSTANCES))
    known: set[str] = set()
    for layout in (StackLayout(), largest):
        for component in build_components(paths, settings, layout).values():
            known.update({component.name, *component.aliases} | {component.group} - {""})
    assert {n for n in known if is_component_name(n)} == known
    candidates = {f"{g}-{i}" for g in COMPONENT_GROUPS for i in range(MAX_INSTANCES + 2)}
    assert {n for n in candidates if is_component_name(n)} <= known


def test_a_refused_setting_is_named_with_its_variable_not_a_traceback(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from genwire_cli.main import main

    for name in [n for n in os.environ if n.startswith("GENWIRE_")]:
        monkeypatch.delenv(name)  # only the two below are wrong
    monkeypatch.setenv("GENWIRE_JAEGER_MEMORY_LIMIT", "1GB")  # Go's runtime would abort on it
    monkeypatch.setenv("GENWIRE_TRITON_NICE", "30")
    assert main(["status"]) == 2
    err = capsys.readouterr().err
    assert "2 invalid setting(s)" in err
    assert "GENWIRE_JAEGER_MEMORY_LIMIT='1GB'" in err
    assert "GENWIRE_TRITON_NICE='30'" in err
    assert "Traceback" not in err


def test_a_command_that_reads_no_settings_runs_whatever_the_environment_holds(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from genwire_cli.main import main

    # `kubectl create secret … --from-literal=api-key="$(genwire keys generate)"` must not get
    # an empty key because of a variable keys generate never reads.
    monkeypatch.setenv("GENWIRE_JAEGER_MEMORY_LIMIT", "1GB")
    assert main(["keys", "generate"]) == 0
    assert capsys.readouterr().out.strip()
