"""genwire model lifecycle pieces that need no stack: config.pbtxt version policy, checks."""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Iterable
from pathlib import Path

import pytest
from genwire_model.build import render_config
from genwire_model.lifecycle import (
    Lifecycle,
    LifecycleError,
    TritonControl,
    configured_versions,
    with_versions,
)
from genwire_model.lifecycle_cli import _table, split_target

from genwire.policy import ModelPolicy


def test_version_policy_is_rewritten_in_place() -> None:
    config = render_config("m")
    assert configured_versions(config) is None  # a fresh build serves the newest
    two = with_versions(config, ["2", "1", "2"])
    assert configured_versions(two) == ["1", "2"]
    assert two.count("version_policy") == 1
    assert configured_versions(with_versions(two, ["3"])) == ["3"]
    assert with_versions(two, ["3"]).count("version_policy") == 1
    bare = 'name: "m"\nbackend: "python"\n'
    assert configured_versions(with_versions(bare, ["4"])) == ["4"]


class StubTriton(TritonControl):
    def __init__(self, served: list[str]) -> None:
        self._served = served
        self.loads = 0

    def served(self, name: str) -> list[str]:
        return list(self._served)

    def load(self, name: str) -> None:
        self.loads += 1
        raise LifecycleError("Triton could not load m: boom")

    def states(self, name: str) -> dict[str, str]:
        return {v: "READY" for v in self._served}


def _repo(tmp_path: Path, versions: list[str]) -> Path:
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "config.pbtxt").write_text(render_config("m"))
    for v in versions:
        (tmp_path / "m" / v).mkdir()
        (tmp_path / "m" / v / "manifest.json").write_text(json.dumps({"context_length": 8}))
    return tmp_path


def test_a_failed_load_puts_the_config_back(tmp_path: Path) -> None:
    repo = _repo(tmp_path, ["1", "2"])
    before = (repo / "m" / "config.pbtxt").read_text()
    life = Lifecycle(repository=repo, triton=StubTriton(["1"]), bootstrap_servers="x:1")
    with pytest.raises(LifecycleError, match="boom"):
        life.serve("m", ["1", "2"])
    assert (repo / "m" / "config.pbtxt").read_text() == before


def test_unknown_versions_and_busy_unloads_are_refused(tmp_path: Path) -> None:
    repo = _repo(tmp_path, ["1", "2"])
    life = Lifecycle(repository=repo, triton=StubTriton(["1", "2"]), bootstrap_servers="x:1")
    with pytest.raises(LifecycleError, match="no version 7"):
        life.check_versions("m", ["1", "7"])
    with pytest.raises(LifecycleError, match="no model 'other'"):
        life.check_versions("other", ["1"])
    policy = ModelPolicy(model="m", aliases={"champion": "1"}, weights={"1": 80, "2": 20})
    with pytest.raises(LifecycleError, match="named by its policy"):
        life.unload("m", "2", policy=policy)
    with pytest.raises(LifecycleError, match="not served"):
        life.unload("m", "3")


def test_publish_refuses_traffic_to_a_version_not_served(tmp_path: Path) -> None:
    repo = _repo(tmp_path, ["1", "2"])
    life = Lifecycle(repository=repo, triton=StubTriton(["1"]), bootstrap_servers="x:1")
    policy = ModelPolicy(model="m", aliases={"champion": "1"}, weights={"1": 90, "2": 10})
    with pytest.raises(LifecycleError, match="version 2 would take traffic but is not served"):
        life.publish(policy, None)


def test_targets_and_table() -> None:
    assert split_target("m") == ("m", None)
    assert split_target("m:3") == ("m", "3")
    with pytest.raises(SystemExit):
        split_target("m:champion")
    table = _table([{"name": "m", "version": "1", "state": "READY", "heldout_loss": 5.1234}])
    header, row = table.splitlines()
    assert header.split()[:3] == ["NAME", "VERSION", "STATE"]
    assert row.split()[:3] == ["m", "1", "READY"] and "5.12" in row


def test_commands_refuse_bad_input_with_a_clear_message(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from genwire_cli.main import main

    repo = _repo(tmp_path, ["1"])
    assert main(["model", "route", "m", "--weights", "1=90,2=20", "--repository", str(repo)]) == 2
    assert "add up to 110" in capsys.readouterr().err
    assert main(["model", "route", "m", "--weights", "1:90"]) == 2
    assert "VERSION=WEIGHT" in capsys.readouterr().err
    assert main(["model", "load", "m:7", "--repository", str(repo)]) == 2
    assert "m has no version 7 in the repository (built: 1)" in capsys.readouterr().err
    assert main(["model", "load", "nope", "--repository", str(repo)]) == 2
    assert "no model 'nope'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["model", "load", "m:champion"])


def test_route_checks_the_policy_before_asking_anyone(capsys: pytest.CaptureFixture[str]) -> None:
    from genwire_cli.main import main

    # An unreachable broker: the checks answer first, so nothing waits for it.
    os.environ["GENWIRE_KAFKA_BOOTSTRAP_SERVERS"] = "127.0.0.1:1"
    try:
        assert main(["model", "route", "m", "--weights", "1=50,2=50", "--shadow", "2"]) == 2
        assert "take traffic and be the shadow" in capsys.readouterr().err
        assert main(["model", "route", "m", "--sticky", "cookie"]) == 2
        assert "sticky is" in capsys.readouterr().err
    finally:
        del os.environ["GENWIRE_KAFKA_BOOTSTRAP_SERVERS"]


class LoadingTriton(StubTriton):
    def __init__(self, served: dict[str, list[str]]) -> None:
        self._by_model = served
        self.loaded: list[str] = []

    def served(self, name: str) -> list[str]:
        return list(self._by_model.get(name, []))

    def load(self, name: str) -> None:
        self.loaded.append(name)
        if name == "broken":
            raise LifecycleError("Triton could not load broken: boom")

    def unload(self, name: str) -> None:
        self._by_model[name] = []


def test_restore_loads_what_load_served_and_full_unload_forgets_it(tmp_path: Path) -> None:
    repo = _repo(tmp_path, ["1", "2"])
    config = repo / "m" / "config.pbtxt"
    config.write_text(with_versions(config.read_text(), ["1", "2"]))
    for name in ("plain", "broken"):
        (repo / name).mkdir()
        text = render_config(name)
        (repo / name / "config.pbtxt").write_text(
            with_versions(text, ["1"]) if name == "broken" else text
        )
    triton = LoadingTriton({})
    life = Lifecycle(repository=repo, triton=triton, bootstrap_servers="x:1")
    assert set(life.restore()) == {"m"}
    assert sorted(triton.loaded) == ["broken", "m"]  # "plain" serves by the build's policy
    assert life.serve("m", []) == []
    assert configured_versions(config.read_text()) is None  # nothing to restore any more


def test_list_rows_show_state_and_quantization(tmp_path: Path) -> None:
    from genwire_model.lifecycle import describe

    repo = _repo(tmp_path, ["1", "2"])
    manifest = repo / "m" / "2" / "manifest.json"
    manifest.write_text(
        json.dumps(
            {
                "context_length": 8,
                "created": "2026-01-01T00:00:00+00:00",
                "quantization": {"mode": "int8", "heldout_loss": {"fp32": 5.3, "int8": 5.31}},
            }
        )
    )
    rows = describe(repo, StubTriton(["1"]), "m")
    assert [(r["version"], r["state"]) for r in rows] == [("1", "READY"), ("2", "not loaded")]
    assert (rows[1]["quantized"], rows[1]["heldout_loss"]) == ("int8", 5.31)


class ServingTriton(StubTriton):
    def load(self, name: str) -> None:
        self.loads += 1


@dataclasses.dataclass
class InMemory(Lifecycle):
    """The policy topic in memory (publish checks the revision as publish_policy does);
    Triton serves what it is told; the drain is recorded, not waited for."""

    records: dict[str, ModelPolicy] = dataclasses.field(default_factory=dict)
    drained: list[set[str]] = dataclasses.field(default_factory=list)

    def policy(self, name: str) -> ModelPolicy | None:
        return self.records.get(name)

    def publish(self, policy: ModelPolicy, expect_revision: int | None) -> ModelPolicy:
        found = self.records[policy.model].revision if policy.model in self.records else -1
        if expect_revision is not None and found != expect_revision:
            raise LifecycleError(f"changed meanwhile ({found}, expected {expect_revision})")
        self.records[policy.model] = policy
        return policy

    def serve(self, name: str, versions: Iterable[str]) -> list[str]:
        assert isinstance(self.triton, StubTriton)
        self.triton._served = sorted(set(versions), key=int)
        return self.triton._served

    def probe(self, name: str, version: str, timeout_s: float = 60.0) -> None:
        return None

    def _switch_over(self, name: str, old: set[str], settle_s: float, drain_s: float) -> None:
        self.drained.append(old)


def test_promote_a_model_without_a_policy_in_one_go(tmp_path: Path) -> None:
    """Loading beside a model without a policy publishes one: promote reads it afterwards
    (it used to publish over it and stop with 'changed meanwhile')."""
    life = InMemory(
        repository=_repo(tmp_path, ["1", "2"]), triton=ServingTriton(["1"]), bootstrap_servers="x:1"
    )
    new = life.promote("m", "2", by="test")
    assert (new.champion, new.aliases["previous"], new.weights) == ("2", "1", {"2": 100})
    assert life.records["m"] == new and life.drained == [{"1"}]


def test_promote_keeps_the_shadow_it_keeps_routing_to(tmp_path: Path) -> None:
    life = InMemory(
        repository=_repo(tmp_path, ["1", "2", "3"]),
        triton=ServingTriton(["1", "2", "3"]),
        bootstrap_servers="x:1",
    )
    life.records["m"] = ModelPolicy(
        model="m", aliases={"champion": "1"}, weights={"1": 100}, shadow="3", revision=4
    )
    new = life.promote("m", "2", by="test")
    assert new.shadow == "3" and new.revision == 5
    assert life.drained == [{"1"}]  # the shadow version stays loaded: copies still go to it


def test_a_build_keeps_the_versions_load_serves(tmp_path: Path) -> None:
    from genwire_model.build import _merged_config

    config = tmp_path / "config.pbtxt"
    fresh = render_config("m")
    assert _merged_config(config, fresh) == fresh  # no config yet
    config.write_text(fresh)
    assert _merged_config(config, fresh) == fresh  # `latest` stays `latest`
    config.write_text(with_versions(fresh, ["1", "3"]))
    kept = _merged_config(config, fresh)
    assert configured_versions(kept) == ["1", "3"] and kept.count("version_policy") == 1


def test_only_the_pin_load_made_is_a_pin() -> None:
    from genwire_model.lifecycle import LOAD_PIN_BY, UP_PIN_BY, is_load_pin

    pin = ModelPolicy(model="m", aliases={"champion": "1"}, weights={"1": 100}).changed(
        by=LOAD_PIN_BY
    )
    assert is_load_pin(pin)
    moved = pin.changed(by=UP_PIN_BY, aliases={"champion": "3"}, weights={"3": 100})
    assert is_load_pin(moved)  # still a pin for the next rebuild
    assert not is_load_pin(pin.changed(by="cli:ann"))  # an operator took it over
    assert not is_load_pin(pin.changed(by=LOAD_PIN_BY, weights={"1": 90, "2": 10}))
    assert not is_load_pin(pin.changed(by=LOAD_PIN_BY, shadow="2"))
    assert not is_load_pin(
        pin.changed(by=LOAD_PIN_BY, aliases={"champion": "1", "challenger": "2"})
    )
