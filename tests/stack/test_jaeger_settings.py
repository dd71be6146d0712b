"""Jaeger's memory limit and span TTL: validated, passed to Jaeger, alike in every deploy."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
import yaml
from genwire_stack.components import Jaeger
from genwire_stack.paths import StackPaths
from pydantic import ValidationError

from genwire import gosyntax
from genwire.settings import CommonSettings

REPO = Path(__file__).resolve().parents[2]
DEFAULTS = CommonSettings.model_fields


@pytest.fixture(autouse=True)
def _no_settings_from_the_shell(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in [n for n in os.environ if n.startswith("GENWIRE_")]:
        monkeypatch.delenv(name)


def _jaeger(tmp_path: Path, **overrides: str) -> Jaeger:
    settings = CommonSettings(home=tmp_path, **overrides)  # type: ignore[arg-type]
    return Jaeger(StackPaths.from_settings(settings), settings)


@pytest.mark.parametrize(
    "value", ["off", "1GiB", "512MiB", "256MiB", "2TiB", "268435456B", "536870912", "+1GiB"]
)
def test_memory_limits_in_gos_syntax_are_accepted(value: str) -> None:
    assert CommonSettings(jaeger_memory_limit=value).jaeger_memory_limit == value


# Go's runtime aborts at start on a malformed GOMEMLIMIT (overflow included): each of these must
# fail here instead; 0 and other tiny limits Go takes, but its collector then never rests.
@pytest.mark.parametrize(
    "value",
    ["1GB", "1gib", "1.5GiB", "-1", "1 GiB", "none", "GiB", "99999999999999999999",
     "8388608TiB", "0", "0B", "64MiB", "255MiB"],
)  # fmt: skip
def test_a_memory_limit_go_would_refuse_or_starve_on_is_refused(value: str) -> None:
    with pytest.raises(ValidationError, match="jaeger_memory_limit"):
        CommonSettings(jaeger_memory_limit=value)


@pytest.mark.parametrize(
    "value",
    [
        "72h",
        "24h",
        "90m",
        "1h30m",
        "1.5h",
        "1.h",
        ".5h",
        "1s",
        "+72h",
        "2562047h",
        "0.999999999999999999s",
        "2562047h47m16.8547758079s",
    ],
)
def test_span_ttls_in_gos_duration_syntax_are_accepted(value: str) -> None:
    assert CommonSettings(jaeger_span_ttl=value).jaeger_span_ttl == value


# time.ParseDuration refuses the malformed ones and 2562048h (past int64 nanoseconds); a TTL
# under a second expires spans as they are written.
@pytest.mark.parametrize(
    "value",
    [
        "0",
        "0s",
        "0h0m",
        "72",
        "3d",
        "3 days",
        "h",
        "1hm",
        "-1h",
        "2562048h",
        "500ms",
        "0.5ns",
        "1\u03bcs",
        "2562047h47m16.854775808s",
    ],
)
def test_a_span_ttl_go_would_refuse_or_that_is_under_a_second_is_refused(value: str) -> None:
    with pytest.raises(ValidationError, match="jaeger_span_ttl"):
        CommonSettings(jaeger_span_ttl=value)


def test_gos_duration_units_and_fractions_are_read_as_go_reads_them() -> None:
    assert gosyntax.duration_ns("1h30m") == 5400 * 10**9
    assert gosyntax.duration_ns("1.5h") == gosyntax.duration_ns("90m")
    assert gosyntax.duration_ns(".5s") == 500 * 10**6
    # Both spellings of micro: U+00B5 (micro sign) and U+03BC (Greek mu).
    assert gosyntax.duration_ns("3\u00b5s") == gosyntax.duration_ns("3\u03bcs") == 3000
    assert gosyntax.byte_count("1GiB") == 2**30 == gosyntax.byte_count("1073741824")
    # A fraction goes through float64, per term, as in time.ParseDuration: just under a
    # second reads as one second, and the largest duration is exactly int64's maximum.
    assert gosyntax.duration_ns("0.999999999999999999s") == 10**9
    assert gosyntax.duration_ns("2562047h47m16.8547758079s") == 2**63 - 1
    assert gosyntax.duration_ns("0") == 0 and gosyntax.duration_ns("-1h") == -3600 * 10**9


def test_a_set_but_empty_variable_means_the_default_as_in_compose(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("GENWIRE_JAEGER_MEMORY_LIMIT", "")
    monkeypatch.setenv("GENWIRE_JAEGER_SPAN_TTL", "")
    settings = CommonSettings()
    assert settings.jaeger_memory_limit == "1GiB"
    assert settings.jaeger_span_ttl == "72h"


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
    """A Kubernetes binary quantity (Ki, Mi, Gi, Ti)."""
    match = re.fullmatch(r"([0-9]+)(Ki|Mi|Gi|Ti)?", quantity)
    assert match, quantity
    power = {None: 0, "Ki": 1, "Mi": 2, "Gi": 3, "Ti": 4}[match.group(2)]
    return int(match.group(1)) * 1024**power


MEASURED_PEAK_RSS_AT_1GIB = 1_655 * 2**20
"""The highest resident memory measured reading a day of spans at GOMEMLIMIT=1GiB
(docs/benchmarks.md, Jaeger's memory reading a backlog of spans)."""


def test_kubernetes_sets_the_measured_soft_limit_with_room_below_the_containers_limit() -> None:
    docs = yaml.safe_load_all((REPO / "deploy/kubernetes/base/jaeger/jaeger.yaml").read_text())
    deployment = next(d for d in docs if d and d["kind"] == "Deployment")
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e["value"] for e in container["env"]}
    resources = container["resources"]
    # Go's syntax, not Kubernetes' (1Gi would crash-loop Jaeger); the peak was measured at it.
    assert gosyntax.byte_count(env["GOMEMLIMIT"]) == 2**30
    assert _bytes(resources["limits"]["memory"]) >= 1.25 * MEASURED_PEAK_RSS_AT_1GIB
    # Scheduled where the soft limit fits, not only a quarter of it.
    assert _bytes(resources["requests"]["memory"]) >= 2**30


def test_jaeger_runs_below_the_pipelines_priority_in_each_deploy(tmp_path: Path) -> None:
    from genwire_stack.process import supervised_argv

    assert _jaeger(tmp_path).nice() == DEFAULTS["jaeger_nice"].default == 10
    assert _jaeger(tmp_path, jaeger_nice="0").nice() == 0  # the same priority
    with pytest.raises(ValidationError, match="jaeger_nice"):
        CommonSettings(jaeger_nice=20)
    jaeger = _jaeger(tmp_path)
    argv = supervised_argv(
        "jaeger", jaeger.command(), tmp_path, python="py", stop_timeout_s=5, nice=jaeger.nice()
    )
    assert argv[argv.index("--nice") + 1] == "10"
    compose = yaml.safe_load((REPO / "deploy" / "compose" / "compose.yaml").read_text())
    assert compose["services"]["jaeger"]["cpu_shares"] == 512  # half the others' 1024
