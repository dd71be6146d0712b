"""Lifecycle commands never leave the state half-applied: a failed probe puts back what was
served, concurrent commands take the model folder's lock, promote keeps a version a rollback
during its drain routes to, and a broker that does not answer is one clear line (no stack)."""

from __future__ import annotations

import dataclasses
import json
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from genwire_model import lifecycle as lifecycle_module
from genwire_model.build import render_config
from genwire_model.lifecycle import (
    CONFIG,
    Lifecycle,
    LifecycleError,
    TritonControl,
    configured_versions,
    with_versions,
)
from genwire_model.repository import model_lock

from genwire.policy import ModelPolicy, rollback

UNREACHABLE = "127.0.0.1:1"
"""A broker address nothing listens on (refused at once)."""


def _repo(root: Path, versions: list[str], served: list[str] | None = None) -> Path:
    """Model ``m`` with ``versions`` built; config.pbtxt names ``served`` (None: the build's
    ``latest`` line)."""
    (root / "m").mkdir()
    config = render_config("m")
    (root / "m" / CONFIG).write_text(config if served is None else with_versions(config, served))
    for v in versions:
        (root / "m" / v).mkdir()
        (root / "m" / v / "manifest.json").write_text(json.dumps({"context_length": 8}))
    return root


class ConfigTriton(TritonControl):
    """Serves what config.pbtxt says at each (re)load, as Triton's explicit mode does. The
    first load can be held (``gate``) to let a second command run meanwhile."""

    def __init__(self, root: Path, served: list[str], gate: threading.Event | None = None) -> None:
        self.root = root
        self._served = list(served)
        self.gate = gate
        self.entered = threading.Event()
        self.unloads = 0

    def served(self, name: str) -> list[str]:
        return list(self._served)

    def states(self, name: str) -> dict[str, str]:
        return {v: "READY" for v in self._served}

    def ready(self, name: str, version: str) -> bool:
        return version in self._served

    def load(self, name: str) -> None:
        if self.gate is not None and not self.entered.is_set():
            self.entered.set()
            assert self.gate.wait(10)
        text = (self.root / name / CONFIG).read_text()
        listed = configured_versions(text)
        newest = sorted((p.name for p in (self.root / name).iterdir() if p.name.isdigit()), key=int)
        self._served = listed if listed is not None else newest[-1:]

    def unload(self, name: str) -> None:
        self.unloads += 1
        self._served = []


@dataclasses.dataclass
class Memory(Lifecycle):
    """The policy topic in memory (publish checks the revision as publish_policy does);
    the probe passes unless ``broken`` names the version."""

    records: dict[str, ModelPolicy] = dataclasses.field(default_factory=dict)
    broken: set[str] = dataclasses.field(default_factory=set)

    def policy(self, name: str) -> ModelPolicy | None:
        return self.records.get(name)

    def publish(self, policy: ModelPolicy, expect_revision: int | None) -> ModelPolicy:
        found = self.records[policy.model].revision if policy.model in self.records else -1
        if expect_revision is not None and found != expect_revision:
            raise LifecycleError(f"changed meanwhile ({found}, expected {expect_revision})")
        self.records[policy.model] = policy
        return policy

    def probe(self, name: str, version: str, timeout_s: float = 60.0) -> None:
        if version in self.broken:
            raise LifecycleError(f"{name} version {version} does not answer: RuntimeError('boom')")


def _champion(version: str, revision: int = 0) -> ModelPolicy:
    return ModelPolicy(
        model="m", aliases={"champion": version}, weights={version: 100}, revision=revision
    )


# -- 2. a failed probe puts back what was served ----------------------------------------------


@pytest.mark.parametrize(
    ("config_names", "served", "config_after"),
    [
        (["1"], ["1"], ["1"]),  # load served version 1: the file as it was
        (None, ["1"], ["1"]),  # `latest` would now serve 2 (build --load): 1 is named instead
        (None, [], None),  # nothing served: unloaded again, the build's line as it was
    ],
)
def test_a_version_that_does_not_answer_is_unloaded_again(
    tmp_path: Path, config_names: list[str] | None, served: list[str], config_after: list[str]
) -> None:
    repo = _repo(tmp_path, ["1", "2"], config_names)
    before = (repo / "m" / CONFIG).read_text()
    triton = ConfigTriton(repo, served)
    life = Memory(repository=repo, triton=triton, bootstrap_servers="x:1", broken={"2"})
    life.records["m"] = _champion("1")
    with pytest.raises(LifecycleError) as failed:
        life.load("m", "2")
    message = str(failed.value)
    assert "does not answer" in message and "version 2 was unloaded again" in message
    assert triton.served("m") == served
    text = (repo / "m" / CONFIG).read_text()
    assert configured_versions(text) == config_after
    if config_names is not None or not served:
        assert text == before
    assert triton.unloads == (0 if served else 1)


def test_build_load_whose_version_does_not_answer_fails_and_serves_what_it_did(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import argparse

    from genwire_model import lifecycle_cli

    repo = _repo(tmp_path, ["1", "2"], ["1"])
    triton = ConfigTriton(repo, ["1"])
    life = Memory(repository=repo, triton=triton, bootstrap_servers="x:1", broken={"2"})
    life.records["m"] = _champion("1")
    monkeypatch.setattr(lifecycle_cli, "lifecycle", lambda _args: life)
    args = argparse.Namespace(model_command="build", repository=repo)
    assert lifecycle_cli.load_built(args, "m", "2") == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "m serves versions 1, as before" in err
    assert triton.served("m") == ["1"]
    assert configured_versions((repo / "m" / CONFIG).read_text()) == ["1"]


# -- 3. one change of config.pbtxt at a time ----------------------------------------------------


def test_two_loads_at_once_keep_both_versions(tmp_path: Path) -> None:
    repo = _repo(tmp_path, ["1", "2", "3"], ["1"])
    gate = threading.Event()
    triton = ConfigTriton(repo, ["1"], gate=gate)
    ann, bob = (
        Memory(
            repository=repo, triton=triton, bootstrap_servers="x:1", records={"m": _champion("1")}
        )
        for _ in range(2)
    )
    first = threading.Thread(target=ann.load, args=("m", "2"))
    first.start()
    assert triton.entered.wait(10)  # ann's Triton load is under way
    second = threading.Thread(target=bob.load, args=("m", "3"))
    second.start()
    time.sleep(0.3)  # bob would read the served versions (1) and write 1, 3 now
    gate.set()
    first.join(10)
    second.join(10)
    assert triton.served("m") == ["1", "2", "3"]
    assert configured_versions((repo / "m" / CONFIG).read_text()) == ["1", "2", "3"]


def test_load_and_unload_wait_for_a_build_holding_the_model_folder(tmp_path: Path) -> None:
    repo = _repo(tmp_path, ["1", "2"], ["1"])
    triton = ConfigTriton(repo, ["1"])
    life = Memory(repository=repo, triton=triton, bootstrap_servers="x:1")
    life.records["m"] = _champion("1")
    with model_lock(repo / "m"):  # what `genwire model build` holds while it writes config
        loading = threading.Thread(target=life.load, args=("m", "2"))
        loading.start()
        time.sleep(0.3)
        assert loading.is_alive() and triton.served("m") == ["1"]
    loading.join(10)
    assert triton.served("m") == ["1", "2"]
    assert life.unload("m", "2") == ["1"]  # the lock is free again (and re-entrant inside)


@dataclasses.dataclass
class Sent(Lifecycle):
    """The real publish, its Kafka exchange recorded instead."""

    sent: list[ModelPolicy] = dataclasses.field(default_factory=list)

    def _send(self, policy: ModelPolicy, expect_revision: int | None) -> None:
        self.sent.append(policy)


def test_a_policy_is_checked_and_published_under_the_lock(tmp_path: Path) -> None:
    """No unload (promote's after its drain) slips between publish's check that a version is
    served and the record that routes to it."""
    repo = _repo(tmp_path, ["1", "2"], ["1", "2"])
    life = Sent(repository=repo, triton=ConfigTriton(repo, ["1", "2"]), bootstrap_servers="x:1")
    with model_lock(repo / "m"):
        publishing = threading.Thread(target=life.publish, args=(_champion("1"), None))
        publishing.start()
        time.sleep(0.3)
        assert publishing.is_alive() and not life.sent
    publishing.join(10)
    assert life.sent == [_champion("1")]


# -- 1. promote re-reads the policy before unloading --------------------------------------------


def _promoting(tmp_path: Path) -> tuple[Memory, ConfigTriton]:
    repo = _repo(tmp_path, ["1", "2"], ["1", "2"])
    triton = ConfigTriton(repo, ["1", "2"])
    life = Memory(repository=repo, triton=triton, bootstrap_servers="x:1")
    life.records["m"] = _champion("1")
    return life, triton


def test_promote_keeps_the_version_a_rollback_during_the_drain_routes_to(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    life, triton = _promoting(tmp_path)
    said: list[str] = []
    life.progress = said.append

    async def drain_with_rollback(*_args: Any, **_kw: Any) -> bool:
        # Meanwhile another operator (or the monitor) rolls back: traffic back to version 1.
        life.records["m"] = rollback(life.records["m"], "v2 is bad", by="cli:bob")
        return True

    monkeypatch.setattr(lifecycle_module, "wait_drained", drain_with_rollback)
    life.promote("m", "2", by="cli:ann", settle_s=0)
    assert life.records["m"].champion == "1"
    assert triton.served("m") == ["1", "2"]  # before: only 2, which takes no traffic
    assert any("version 1 stays loaded" in line and "by cli:bob" in line for line in said), said


def test_promote_unloads_the_old_version_the_policy_no_longer_names(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    life, triton = _promoting(tmp_path)

    async def drained(*_args: Any, **_kw: Any) -> bool:
        return True

    monkeypatch.setattr(lifecycle_module, "wait_drained", drained)
    new = life.promote("m", "2", by="cli:ann", settle_s=0)
    assert new.champion == "2" and triton.served("m") == ["2"]
    # `previous` names 1 for a rollback, yet it is unloaded: rollback loads it again first.
    assert new.aliases.get("previous") == "1"


# -- 4. the broker down: one clear line ---------------------------------------------------------


@pytest.mark.parametrize(
    "argv",
    [
        ["policy"],
        ["route", "m", "--weights", "1=100"],
        ["rollback", "m"],
        ["promote", "m", "1"],
        ["unload", "m:1"],
    ],
)
def test_commands_name_an_unreachable_broker_in_one_line(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    argv: list[str],
) -> None:
    from genwire_cli.main import main

    repo = _repo(tmp_path, ["1"], ["1"])
    monkeypatch.setenv("GENWIRE_KAFKA_BOOTSTRAP_SERVERS", UNREACHABLE)
    monkeypatch.setenv("GENWIRE_TRITON_HTTP_URL", "127.0.0.1:9")
    where = [] if argv == ["policy"] else ["--repository", str(repo)]
    assert main(["model", *argv, *where]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"genwire model {argv[0]}: Kafka at {UNREACHABLE} is unreachable")
    assert err.count("\n") == 1 and "Traceback" not in err


def test_load_that_needs_a_pin_with_the_broker_down_changes_nothing(tmp_path: Path) -> None:
    repo = _repo(tmp_path, ["1", "2"], ["1"])
    before = (repo / "m" / CONFIG).read_text()
    triton = ConfigTriton(repo, ["1"])
    life = Lifecycle(repository=repo, triton=triton, bootstrap_servers=UNREACHABLE)
    with pytest.raises(LifecycleError, match=f"Kafka at {UNREACHABLE} is unreachable"):
        life.load("m", "2")
    assert triton.served("m") == ["1"] and (repo / "m" / CONFIG).read_text() == before


def test_a_drain_the_broker_cuts_short_leaves_the_old_version_loaded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from aiokafka.errors import KafkaConnectionError

    life, triton = _promoting(tmp_path)
    said: list[str] = []
    life.progress = said.append

    async def broker_gone(*_args: Any, **_kw: Any) -> bool:
        raise KafkaConnectionError("Unable to bootstrap")

    monkeypatch.setattr(lifecycle_module, "wait_drained", broker_gone)
    new = life.promote("m", "2", by="cli:ann", settle_s=0)  # promoted: only the unload waits
    assert new.champion == "2" and triton.served("m") == ["1", "2"]
    assert any("Kafka at x:1 is unreachable" in line and "stays loaded" in line for line in said)


def test_other_broker_errors_are_named_too() -> None:
    from aiokafka.errors import TopicAuthorizationFailedError
    from genwire_model.lifecycle import kafka_error

    error = kafka_error("k:9092", "reading genwire.config", TopicAuthorizationFailedError())
    assert str(error).startswith("Kafka at k:9092 failed (reading genwire.config): ")
    assert "TopicAuthorizationFailedError" in str(error)
