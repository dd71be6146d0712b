"""``genwire model load/unload`` off the stack: an interrupted load leaves nothing served
unchecked (and a rerun checks what it left), and unload refuses only versions that take
traffic. Triton is a stand-in that serves what config.pbtxt names."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest
from genwire_model import lifecycle_cli
from genwire_model.build import render_config
from genwire_model.lifecycle import (
    Lifecycle,
    LifecycleError,
    TritonControl,
    configured_versions,
    with_versions,
)

from genwire.policy import ModelPolicy


class ConfigTriton(TritonControl):
    """Serves what the model's config.pbtxt names when loaded; ``interrupt_load``: the next
    load is cut short by Ctrl-C after Triton took it."""

    def __init__(self, repo: Path, served: list[str]) -> None:
        self.repo = repo
        self._served = served
        self.interrupt_load = False

    def served(self, name: str) -> list[str]:
        return list(self._served)

    def load(self, name: str) -> None:
        text = (self.repo / name / "config.pbtxt").read_text()
        self._served = sorted(configured_versions(text) or [], key=int)
        if self.interrupt_load:
            self.interrupt_load = False
            raise KeyboardInterrupt

    def unload(self, name: str) -> None:
        self._served = []

    def ready(self, name: str, version: str) -> bool:
        return version in self._served

    def states(self, name: str) -> dict[str, str]:
        return {v: "READY" for v in self._served}


def _life(tmp_path: Path, served: list[str], policy: ModelPolicy | None) -> Lifecycle:
    model = tmp_path / "m"
    model.mkdir()
    config = render_config("m")
    (model / "config.pbtxt").write_text(with_versions(config, served) if served else config)
    for v in ("1", "2", "3"):
        (model / v).mkdir()
        (model / v / "manifest.json").write_text(json.dumps({"context_length": 8}))
    life = Lifecycle(
        repository=tmp_path, triton=ConfigTriton(tmp_path, served), bootstrap_servers="x:1"
    )
    life.policy = lambda _name: policy  # type: ignore[method-assign]
    return life


def _config(life: Lifecycle) -> list[str] | None:
    return configured_versions((life.repository / "m" / "config.pbtxt").read_text())


PINNED = ModelPolicy(model="m", aliases={"champion": "1"}, weights={"1": 100}, revision=0)


# -- finding: Ctrl-C during load --------------------------------------------------------------


def test_ctrl_c_while_triton_loads_puts_the_config_back(tmp_path: Path) -> None:
    life = _life(tmp_path, ["1"], PINNED)
    life.triton.interrupt_load = True  # type: ignore[attr-defined]
    with pytest.raises(KeyboardInterrupt):
        life.load("m", "2")
    assert _config(life) == ["1"]
    assert life.triton.served("m") == ["1"]


def test_ctrl_c_during_the_probe_unloads_the_unchecked_version(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    life = _life(tmp_path, ["1"], PINNED)

    def interrupted(_name: str, _version: str, timeout_s: float = 60.0) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(life, "probe", interrupted)
    with pytest.raises(KeyboardInterrupt):
        life.load("m", "2")
    assert _config(life) == ["1"]
    assert life.triton.served("m") == ["1"]


def test_a_rerun_probes_a_served_version_that_takes_no_traffic(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # What an interrupted load left before this fix: version 2 served, never probed.
    life = _life(tmp_path, ["1", "2"], PINNED)
    probed: list[str] = []

    def dead(_name: str, version: str, timeout_s: float = 60.0) -> None:
        probed.append(version)
        raise LifecycleError(f"m version {version} does not answer")

    monkeypatch.setattr(life, "probe", dead)
    with pytest.raises(LifecycleError, match="version 2 was unloaded again: m serves versions 1"):
        life.load("m", "2")
    assert probed == ["2"]
    assert _config(life) == ["1"]
    assert life.triton.served("m") == ["1"]
    # A version traffic goes to is not probed again (nor unloaded on a failed probe).
    assert life.load("m", "1") == "1"
    assert probed == ["2"]


# -- finding: unload of a version only an alias names -----------------------------------------


def test_unload_allows_a_version_only_an_alias_names(tmp_path: Path) -> None:
    # After the monitor's rollback the canary keeps its alias but takes no traffic.
    policy = ModelPolicy(
        model="m", aliases={"champion": "1", "canary": "2"}, weights={"1": 100}, revision=3
    )
    life = _life(tmp_path, ["1", "2"], policy)
    assert life.unload("m", "2", policy=policy) == ["1"]
    assert _config(life) == ["1"]


@pytest.mark.parametrize(
    "policy",
    [
        ModelPolicy(model="m", aliases={"champion": "1"}, weights={"1": 90, "2": 10}),
        ModelPolicy(model="m", aliases={"champion": "1"}, weights={"1": 100}, shadow="2"),
        ModelPolicy(model="m", aliases={"champion": "2"}),
    ],
)
def test_unload_refuses_a_version_that_takes_traffic(tmp_path: Path, policy: ModelPolicy) -> None:
    life = _life(tmp_path, ["1", "2"], policy)
    with pytest.raises(LifecycleError, match="route traffic away first"):
        life.unload("m", "2", policy=policy)
    assert life.triton.served("m") == ["1", "2"]


# A canary taking every request, the champion at weight 0: the monitor's rollback sends all
# traffic back to the champion.
CHAMPION_AT_ZERO = ModelPolicy(
    model="m", aliases={"champion": "2", "canary": "3"}, weights={"3": 100}, revision=4
)


def test_unload_refuses_the_champion_at_weight_zero_without_force(tmp_path: Path) -> None:
    life = _life(tmp_path, ["2", "3"], CHAMPION_AT_ZERO)
    with pytest.raises(LifecycleError, match="version 2 is named by its policy"):
        life.unload("m", "2", policy=CHAMPION_AT_ZERO)
    assert life.triton.served("m") == ["2", "3"]
    with pytest.raises(LifecycleError, match="version 2, 3 is named by its policy"):
        life.unload("m", policy=CHAMPION_AT_ZERO)
    assert life.triton.served("m") == ["2", "3"]
    # --force (no policy checked) unloads it.
    assert life.unload("m", "2", policy=None) == ["3"]


def test_unload_of_the_champion_needs_force_on_the_command_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    life = _life(tmp_path, ["2", "3"], CHAMPION_AT_ZERO)
    monkeypatch.setattr(lifecycle_cli, "_run", lambda _args, act: act(life) or 0)
    parser = _promote_parser()
    args = parser.parse_args(["unload", "m:2"])
    with pytest.raises(LifecycleError, match="route traffic away first"):
        args.func(args)
    args = parser.parse_args(["unload", "m:2", "--force"])
    assert args.func(args) == 0
    assert life.triton.served("m") == ["3"]
    assert "served versions now 3" in capsys.readouterr().out


def test_a_rerun_never_unloads_the_champion_after_a_failed_probe(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    life = _life(tmp_path, ["2", "3"], CHAMPION_AT_ZERO)

    def dead(_name: str, version: str, timeout_s: float = 60.0) -> None:
        raise LifecycleError(f"m version {version} does not answer")

    monkeypatch.setattr(life, "probe", dead)
    with pytest.raises(LifecycleError, match="version 2 stays loaded: it is m's champion"):
        life.load("m", "2")
    assert _config(life) == ["2", "3"]
    assert life.triton.served("m") == ["2", "3"]


# -- finding: --drain-timeout ------------------------------------------------------------------


def _promote_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser()
    lifecycle_cli.register(parser.add_subparsers())
    return parser


@pytest.mark.parametrize("value", ["-1", "nan", "inf", "-inf", "soon"])
def test_promote_refuses_a_drain_timeout_that_is_not_a_duration(
    value: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_:
        _promote_parser().parse_args(["promote", "m", "2", f"--drain-timeout={value}"])
    assert exit_.value.code == 2
    assert "argument --drain-timeout: " in capsys.readouterr().err


def test_promote_takes_a_drain_timeout_of_zero_or_more() -> None:
    for value, seconds in (("0", 0.0), ("12.5", 12.5)):
        args = _promote_parser().parse_args(["promote", "m", "2", "--drain-timeout", value])
        assert args.drain_timeout == seconds
