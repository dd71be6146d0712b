"""`genwire up` refuses an environment that sets what nothing reads (``genwire_stack.variables``),
and its list of the tools' own variables is complete."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
from genwire_cli.settings_doc import SERVICES
from genwire_stack import manager
from genwire_stack.errors import StackError
from genwire_stack.variables import TOOL_VARIABLES, unread_environment

from genwire.settings import CommonSettings, ServiceSettings

ROOT = Path(__file__).resolve().parents[2]
NAME = re.compile(r"GENWIRE_[A-Z0-9_]*[A-Z0-9]\b(?!_)")


def test_a_near_miss_of_a_plain_name_is_refused_with_the_closest_one() -> None:
    refused, unknown = unread_environment(
        {"GENWIRE_KAFKA_BOOTSTRAP_SERVER": "elsewhere:9092", "GENWIRE_HOMEDIR": "/x"}, SERVICES
    )
    assert refused == [
        "GENWIRE_HOMEDIR: no setting or tool reads it (did you mean GENWIRE_HOME?)",
        "GENWIRE_KAFKA_BOOTSTRAP_SERVER: no setting or tool reads it "
        "(did you mean GENWIRE_KAFKA_BOOTSTRAP_SERVERS?)",
    ]
    assert unknown == []


def test_a_plain_name_far_from_every_setting_is_named_not_refused() -> None:
    """A service of the user's own on genwire's runtime reads its own ``GENWIRE_<NAME>_…``:
    the stack cannot know it, so it says so and goes on."""
    own = [
        "GENWIRE_MYSVC_REDIS_URL",
        "GENWIRE_RAG_CONCURRENCY",  # a stage setting under the user's service's prefix
        "GENWIRE_RANKER_HOST",
        "GENWIRE_RANKER_KAFKA_BOOTSTRAP_SERVERS",  # close to a shared name, but its own
        "GENWIRE_RANKER_TRACES_SAMPLE_RATIO",
    ]
    refused, unknown = unread_environment(dict.fromkeys(own, "x"), SERVICES)
    assert refused == []
    assert unknown == [f"{name}: no genwire setting or tool reads it" for name in own]


def test_what_passes_and_what_each_service_refuses() -> None:
    environ = {
        "GENWIRE_KAFKA_BOOTSTRAP_SERVERS": "broker:9092",  # shared
        "GENWIRE_API_KEY": "key",  # a tool's
        "genwire_unlocked": "1",  # read case-insensitively, as the settings are
        "GENWIRE_MONITOR_DRIFT__PSI_THRESHOLD": "0.3",  # a service's own
        "GENWIRE_INFERENCE_CONCURENCY": "3",  # a typo under a service's prefix
        "GENWIRE_MAX_GENERATION_TOKENS": "10",  # preprocess's own setting, plain
        "GENWIRE_MONITOR_REDIS_URL": "redis://r:6379/0",  # shared, one it has no use for
        "GENWIRE_GATEWAY_CONCURRENCY": "4",  # a stage setting the gateway refuses
        "PATH": "/bin",
    }
    refused, unknown = unread_environment(environ, SERVICES)
    assert [p.split(":")[0:2] for p in refused] == [
        ["gateway", " GENWIRE_GATEWAY_CONCURRENCY"],
        ["preprocess", " GENWIRE_MAX_GENERATION_TOKENS"],
        ["inference", " GENWIRE_INFERENCE_CONCURENCY"],
        ["monitor", " GENWIRE_MONITOR_REDIS_URL"],
    ]
    assert unknown == []


def test_the_stack_refuses_before_it_changes_anything(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Refused before the layout is written or a scale applied (``ensure_up`` stops at the
    check: no lock taken, no file under its home)."""
    monkeypatch.setenv("GENWIRE_REDIS_ULR", "redis://elsewhere:6379/0")
    home = tmp_path / "home"
    with pytest.raises(StackError, match=r"GENWIRE_REDIS_ULR: .*did you mean GENWIRE_REDIS_URL"):
        manager.ensure_up(
            ["preprocess"], settings=CommonSettings(home=home), scale={"preprocess": 2}
        )
    assert not home.exists()
    for name in list(os.environ):  # the runner's own variables: not this test's business
        if name.upper().startswith("GENWIRE_"):
            monkeypatch.delenv(name)
    said: list[str] = []
    monkeypatch.setenv("GENWIRE_RANKER_HOST", "0.0.0.0")
    manager.check_environment(None, said.append)
    assert said == [
        "note: GENWIRE_RANKER_HOST: no genwire setting or tool reads it (a service of your own "
        "may; docs/settings.md)"
    ]


def _setting_names() -> set[str]:
    names = {f"GENWIRE_{n}".upper() for n in ServiceSettings.model_fields}
    for cls in SERVICES.values():
        prefix = str(cls.model_config.get("env_prefix"))
        names |= {f"{prefix}{n}".upper() for n in cls.model_fields}
        names |= {f"GENWIRE_{n}".upper() for n in cls.model_fields}
    return names


def test_every_variable_the_code_names_is_a_setting_or_a_listed_tool_variable() -> None:
    """A tool that starts reading a new ``GENWIRE_*`` variable adds it to ``TOOL_VARIABLES``,
    or `genwire up` would refuse the environment that sets it."""
    settings = _setting_names()
    prefixes = tuple(str(cls.model_config.get("env_prefix")).upper() for cls in SERVICES.values())
    named: set[str] = set()
    for folder in ("genwire", "services", "tools", "deploy"):
        for path in (ROOT / folder).rglob("*"):
            if path.name == "variables.py" and path.parent.name == "genwire_stack":
                continue  # its own docstring's example of a typo
            if path.suffix in (".py", ".sh", ".yaml", ".yml", ".pbtxt") and path.is_file():
                named |= set(NAME.findall(path.read_text(errors="replace")))
    named |= set(NAME.findall((ROOT / "Makefile").read_text()))
    unlisted = {
        name
        for name in named
        if name not in settings
        and name not in TOOL_VARIABLES
        and not name.startswith(prefixes)  # a service's own: checked by its settings class
        and f"{name}_" not in {p for p in prefixes}  # a prefix without its underscore
        and name.split("__")[0] not in settings
    }
    assert not unlisted, f"read by a tool, not in genwire_stack.variables: {sorted(unlisted)}"
    assert set(TOOL_VARIABLES) <= named, "a listed variable that nothing names any more"
    assert not set(TOOL_VARIABLES) & {f"GENWIRE_{n}".upper() for n in CommonSettings.model_fields}


def test_genwire_restart_refuses_before_it_stops_anything(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """``genwire restart`` stops, then starts: refused after the stop, it would leave the
    service down."""
    import argparse

    import genwire_stack
    from genwire_stack.cli import register

    def stop(*args: object, **kwargs: object) -> list[str]:
        raise AssertionError("stopped before the environment was checked")

    monkeypatch.setattr(genwire_stack.manager, "down", stop)
    monkeypatch.setenv("GENWIRE_PREPROCESS_CONCURENCY", "3")
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers())
    args = parser.parse_args(["restart", "--only", "preprocess"])
    assert args.func(args) == 1
    assert "GENWIRE_PREPROCESS_CONCURENCY: not a setting" in capsys.readouterr().err


def test_the_stack_refuses_what_the_services_tracing_would_stop_at(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """`genwire up` refuses the OpenTelemetry variables every service would stop at, once,
    before it starts anything (``genwire.telemetry.setup.otel_refusals``)."""
    for name in list(os.environ):  # the runner's own variables: not this test's business
        if name.upper().startswith(("GENWIRE_", "OTEL_")):
            monkeypatch.delenv(name)
    manager.check_environment(None)
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "jaeger")
    with pytest.raises(StackError, match=r"OTEL_TRACES_EXPORTER='jaeger'") as refused:
        manager.check_environment(None)
    assert str(refused.value).count("OTEL_TRACES_EXPORTER") == 1  # once, not once per service
    manager.check_environment(["redis"])  # no service started: nothing of theirs to check
    monkeypatch.setenv("OTEL_SDK_DISABLED", "true")  # no exporter is built: none is refused
    manager.check_environment(None)
    monkeypatch.delenv("OTEL_SDK_DISABLED")
    monkeypatch.delenv("OTEL_TRACES_EXPORTER")
    monkeypatch.setenv("OTEL_TRACES_SAMPLER", "parentbased_traceidratio")
    monkeypatch.setenv("OTEL_TRACES_SAMPLER_ARG", "0.5")
    manager.check_environment(None)
    # One service's own ratio beside the standard sampler: that service would stop, only it.
    monkeypatch.setenv("GENWIRE_MONITOR_TRACES_SAMPLE_RATIO", "0.5")
    both_set = "OTEL_TRACES_SAMPLER and GENWIRE_TRACES_SAMPLE_RATIO"
    with pytest.raises(StackError, match=both_set) as both:
        manager.check_environment(None)
    assert "(GENWIRE_MONITOR_TRACES_SAMPLE_RATIO set) [monitor]" in str(both.value)
    manager.check_environment(["preprocess"])  # the monitor is not started: nothing stops
    monkeypatch.delenv("GENWIRE_MONITOR_TRACES_SAMPLE_RATIO")
    monkeypatch.setenv("OTEL_TRACES_SAMPLER_ARG", "2")
    with pytest.raises(StackError, match=r"OTEL_TRACES_SAMPLER_ARG='2'"):
        manager.check_environment(None)
