"""Jaeger's memory limit and span TTL: validated, passed to Jaeger, alike in every deploy."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml
from genwire_stack.components import Jaeger
from genwire_stack.paths import StackPaths
from pydantic import ValidationError

from genwire.settings import CommonSettings

REPO = Path(__file__).resolve().parents[2]
DEFAULTS = CommonSettings.model_fields


def _jaeger(tmp_path: Path, **overrides: str) -> Jaeger:
    settings = CommonSettings(home=tmp_path, **overrides)  # type: ignore[arg-type]
    return Jaeger(StackPaths.from_settings(settings), settings)


@pytest.mark.parametrize("value", ["off", "1GiB", "512MiB", "64KiB", "2TiB", "1000B", "536870912"])
def test_memory_limits_in_gos_syntax_are_accepted(value: str) -> None:
    assert CommonSettings(jaeger_memory_limit=value).jaeger_memory_limit == value


# Go's runtime aborts at start on a malformed GOMEMLIMIT: each of these must fail here instead.
@pytest.mark.parametrize("value", ["1GB", "1gib", "1.5GiB", "-1", "", "1 GiB", "none", "GiB"])
def test_a_memory_limit_go_would_refuse_is_refused(value: str) -> None:
    with pytest.raises(ValidationError, match="jaeger_memory_limit"):
        CommonSettings(jaeger_memory_limit=value)


@pytest.mark.parametrize("value", ["72h", "24h", "90m", "1h30m", "1.5h", "45s", "500ms"])
def test_span_ttls_in_gos_duration_syntax_are_accepted(value: str) -> None:
    assert CommonSettings(jaeger_span_ttl=value).jaeger_span_ttl == value


@pytest.mark.parametrize("value", ["0s", "0h0m", "72", "3d", "3 days", "h", "-1h", ""])
def test_a_span_ttl_that_is_not_a_positive_go_duration_is_refused(value: str) -> None:
    with pytest.raises(ValidationError, match="jaeger_span_ttl"):
        CommonSettings(jaeger_span_ttl=value)


def test_the_environment_variables_reach_jaegers_process(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GENWIRE_JAEGER_MEMORY_LIMIT", "768MiB")
    monkeypatch.setenv("GENWIRE_JAEGER_SPAN_TTL", "24h")
    env = _jaeger(tmp_path).environment()
    assert env["GOMEMLIMIT"] == "768MiB"
    assert env["JAEGER_SPAN_TTL"] == "24h"


def test_the_defaults_reach_jaegers_process(tmp_path: Path) -> None:
    env = _jaeger(tmp_path).environment()
    assert env["GOMEMLIMIT"] == DEFAULTS["jaeger_memory_limit"].default == "1GiB"
    assert env["JAEGER_SPAN_TTL"] == DEFAULTS["jaeger_span_ttl"].default


def test_the_config_reads_the_ttl_with_the_settings_default() -> None:
    config = yaml.safe_load((REPO / "deploy" / "native" / "jaeger" / "config.yaml").read_text())
    badger = config["extensions"]["jaeger_storage"]["backends"]["genwire_store"]["badger"]
    ttl = DEFAULTS["jaeger_span_ttl"].default
    assert badger["ttl"]["spans"] == f"${{env:JAEGER_SPAN_TTL:-{ttl}}}"


def test_compose_passes_the_same_settings_with_the_same_defaults() -> None:
    compose = yaml.safe_load((REPO / "deploy" / "compose" / "compose.yaml").read_text())
    env = compose["services"]["jaeger"]["environment"]
    limit = DEFAULTS["jaeger_memory_limit"].default
    ttl = DEFAULTS["jaeger_span_ttl"].default
    assert env["GOMEMLIMIT"] == f"${{GENWIRE_JAEGER_MEMORY_LIMIT:-{limit}}}"
    assert env["JAEGER_SPAN_TTL"] == f"${{GENWIRE_JAEGER_SPAN_TTL:-{ttl}}}"


def _bytes(quantity: str) -> int:
    """A Kubernetes binary quantity or a GOMEMLIMIT value (they share the Ki/Mi/Gi units)."""
    match = re.fullmatch(r"([0-9]+)(Ki|Mi|Gi|Ti)?B?", quantity)
    assert match, quantity
    power = {None: 0, "Ki": 1, "Mi": 2, "Gi": 3, "Ti": 4}[match.group(2)]
    return int(match.group(1)) * 1024**power


def test_kubernetes_sets_a_soft_limit_with_room_below_the_containers_limit() -> None:
    docs = yaml.safe_load_all((REPO / "deploy/kubernetes/base/jaeger/jaeger.yaml").read_text())
    deployment = next(d for d in docs if d and d["kind"] == "Deployment")
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e["value"] for e in container["env"]}
    soft = _bytes(env["GOMEMLIMIT"])
    hard = _bytes(container["resources"]["limits"]["memory"])
    # Measured (docs/observability.md): reading a backlog at GOMEMLIMIT=1GiB, the process
    # peaked at 1.46 GB resident; the runtime's own memory comes on top of the heap.
    assert soft * 1.5 <= hard
