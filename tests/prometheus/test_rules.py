"""deploy/prometheus and deploy/grafana: the rules load, their unit tests pass, their names exist.

promtool is built from the Go module proxy (deploy/prometheus/build_promtool.py, cached under
GENWIRE_HOME/opt: minutes the first time, instant afterwards), then runs ``check rules``,
``check config`` (compose and Kubernetes) and ``test rules`` on deploy/prometheus/tests/*.yml.
Every metric a rule or a dashboard panel reads must exist in the services' registries, so a
renamed metric fails here rather than in a silent dashboard.
"""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml
from genwire_stack.components import SERVICE_PORTS
from genwire_stack.paths import repo_root
from prometheus_client import CollectorRegistry

ROOT = repo_root()
PROM = ROOT / "deploy" / "prometheus"
GRAFANA = ROOT / "deploy" / "grafana"
RULES = sorted((PROM / "rules").glob("*.rules.yml"))
UNIT_TESTS = sorted((PROM / "tests").glob("*.yml"))
K8S_COMPONENT = ROOT / "deploy" / "kubernetes" / "components" / "monitoring"

# A cold `go install` of promtool: measured 29 min on two cores shared with another Go build
# (11 min of CPU); a warm run finds the cached binary in under a second.
BUILD_TIMEOUT = pytest.mark.timeout(2400)


def load(path: Path) -> ModuleType:
    """Import one of the standalone scripts under deploy/."""
    spec = importlib.util.spec_from_file_location(path.stem, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[path.stem] = module
    spec.loader.exec_module(module)
    return module


slo_gen = load(PROM / "generate_slo_rules.py")
build_promtool = load(PROM / "build_promtool.py")


@pytest.fixture(scope="session")
def promtool() -> Path:
    """The cached promtool binary, built first when missing."""
    proc = subprocess.run(
        [sys.executable, str(PROM / "build_promtool.py")],
        capture_output=True,
        text=True,
        check=False,
        timeout=2350,
    )
    assert proc.returncode == 0, f"building promtool failed:\n{proc.stderr[-3000:]}"
    return Path(proc.stdout.strip().splitlines()[-1])


def run(promtool: Path, *args: str, cwd: Path = ROOT) -> str:
    proc = subprocess.run(
        [str(promtool), *args], capture_output=True, text=True, cwd=cwd, check=False, timeout=300
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"promtool {' '.join(args)} failed:\n{out}"
    return out


def rule_groups(paths: list[Path] = RULES) -> Iterator[dict[str, Any]]:
    for path in paths:
        for group in yaml.safe_load(path.read_text())["groups"]:
            yield from group["rules"]


# --- generated files and copies -----------------------------------------------------------


@pytest.mark.parametrize(
    "script",
    [
        PROM / "generate_slo_rules.py",
        GRAFANA / "generate_dashboard.py",
        PROM / "sync_kubernetes.py",
    ],
    ids=lambda p: p.name,
)
def test_generated_files_and_copies_are_up_to_date(script: Path) -> None:
    proc = subprocess.run(
        [sys.executable, str(script), "--check"], capture_output=True, text=True, check=False
    )
    assert proc.returncode == 0, f"{proc.stderr}run: python {script.relative_to(ROOT)}"


# --- promtool -----------------------------------------------------------------------------


@BUILD_TIMEOUT
@pytest.mark.slow
def test_promtool_checks_the_rules(promtool: Path) -> None:
    out = run(promtool, "check", "rules", "--lint=all", "--lint-fatal", *map(str, RULES))
    assert out.count("SUCCESS") == len(RULES)


@BUILD_TIMEOUT
@pytest.mark.slow
@pytest.mark.parametrize(
    "config", [PROM / "prometheus.yml", K8S_COMPONENT / "prometheus.yml"], ids=["compose", "k8s"]
)
def test_promtool_checks_the_scrape_config(promtool: Path, config: Path, tmp_path: Path) -> None:
    """The config as Prometheus would load it, its rule_files glob pointed at the repo's rules."""
    text = config.read_text()
    assert "/etc/prometheus/rules/*.rules.yml" in text
    (tmp_path / "rules").mkdir()
    for rule in RULES:
        (tmp_path / "rules" / rule.name).write_text(rule.read_text())
    local = tmp_path / "prometheus.yml"
    local.write_text(text.replace("/etc/prometheus/rules/", f"{tmp_path}/rules/"))
    out = run(promtool, "check", "config", "--lint=all", "--lint-fatal", str(local))
    assert f"SUCCESS: {len(RULES)} rule files found" in out


@BUILD_TIMEOUT
@pytest.mark.slow
def test_promtool_rule_unit_tests_pass(promtool: Path) -> None:
    assert UNIT_TESTS, "deploy/prometheus/tests/*.yml is empty"
    run(promtool, "test", "rules", *(p.name for p in UNIT_TESTS), cwd=PROM / "tests")


@BUILD_TIMEOUT
@pytest.mark.slow
def test_a_broken_expectation_fails_the_unit_tests(promtool: Path, tmp_path: Path) -> None:
    """The unit tests can fail: expect silence where the e2e page fires and promtool says so."""
    case = yaml.safe_load((PROM / "tests" / "slo_test.yml").read_text())
    case["rule_files"] = [str(p) for p in RULES]
    case["tests"] = case["tests"][:1]  # the 50x e2e burn, which pages
    for test in case["tests"]:
        for alert in test.get("alert_rule_test", []):
            assert alert["alertname"] != "GenwireLatencySLOBurnPage" or alert["exp_alerts"]
            alert["exp_alerts"] = []
    path = tmp_path / "broken_test.yml"
    path.write_text(yaml.safe_dump(case))
    proc = subprocess.run(
        [str(promtool), "test", "rules", str(path)], capture_output=True, text=True, check=False
    )
    assert proc.returncode != 0
    assert "GenwireLatencySLOBurnPage" in proc.stdout + proc.stderr


def test_every_alert_has_a_firing_and_a_silent_case() -> None:
    """Each alert fires on a series that should page and stays silent on one that should not."""
    fires: set[str] = set()
    silent: set[str] = set()
    for path in UNIT_TESTS:
        for test in yaml.safe_load(path.read_text())["tests"]:
            for case in test.get("alert_rule_test", []):
                (fires if case.get("exp_alerts") else silent).add(case["alertname"])
    alerts = {r["alert"] for r in rule_groups() if "alert" in r}
    assert alerts - fires == set(), "alerts no unit test fires"
    assert alerts - silent == set(), "alerts no unit test keeps silent"
    assert len(alerts) >= 12


def test_alerts_carry_a_severity_and_labels_without_spaces() -> None:
    for rule in rule_groups():
        if "alert" in rule:
            assert rule["labels"]["severity"] in ("page", "ticket"), rule["alert"]
            assert {"summary", "description", "runbook_url"} <= set(rule["annotations"])
        for key, value in rule.get("labels", {}).items():
            assert re.fullmatch(r"[a-zA-Z_][a-zA-Z0-9_]*", key)
            assert not re.search(r"\s", str(value)), f"{rule}: label {key}={value!r}"


# --- the names the rules read exist --------------------------------------------------------


def registry_names() -> set[str]:
    """Every sample name the services can expose, from their own metric classes."""
    from genwire_gateway.telemetry import GatewayMetrics
    from genwire_inference.metrics import InferenceMetrics
    from genwire_monitor.promexport import register as register_monitor
    from genwire_postprocess.metrics import ResultMetrics

    from genwire.health import Dependencies
    from genwire.metrics import ConsumerMetrics

    names: set[str] = set()
    for make in (
        ConsumerMetrics,
        GatewayMetrics,
        InferenceMetrics,
        ResultMetrics,
        register_monitor,
        lambda r: Dependencies("stage", r),
    ):
        registry = CollectorRegistry()
        make(registry)
        for family in registry.collect():
            names |= {s.name for s in family.samples}
            if family.type == "counter":
                names |= {f"{family.name}_total"}
            elif family.type == "histogram":
                names |= {f"{family.name}_{s}" for s in ("bucket", "count", "sum")}
            else:
                names.add(family.name)
    return names


def _names_in(expr: str) -> set[str]:
    """Metric and recording-rule names in a PromQL expression (ours all start with genwire)."""
    bare = re.sub(r'"[^"]*"', '""', expr)
    tokens = re.findall(r"(?<![a-zA-Z0-9_:])[a-zA-Z_:][a-zA-Z0-9_:]*", bare)
    names = {t for t in tokens if "genwire" in t}
    if re.search(r"\bup\{", bare):
        names.add("up")
    return names


def used_names() -> dict[str, set[str]]:
    """name -> where it is read (rule files and dashboard panels)."""
    where: dict[str, set[str]] = {}
    for rule in rule_groups():
        for name in _names_in(rule["expr"]):
            where.setdefault(name, set()).add(rule.get("record") or rule["alert"])
    import json

    dashboard = json.loads((GRAFANA / "genwire.json").read_text())
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            for name in _names_in(target["expr"]):
                where.setdefault(name, set()).add(f"panel {panel['title']!r}")
    return where


def test_every_metric_the_rules_and_dashboard_read_exists_in_a_service_registry() -> None:
    recorded = {r["record"] for r in rule_groups() if "record" in r}
    known = registry_names() | recorded | {"up"}
    used = used_names()
    missing = {name: sorted(users) for name, users in used.items() if name not in known}
    assert not missing, f"rules or panels read names no service exposes: {missing}"
    # The check sees the raw metrics too (not only recorded series).
    raw = {n for n in used if ":" not in n}
    assert {"genwire_request_duration_seconds_bucket", "genwire_dlq_total"} <= raw
    assert {"genwire_monitor_partition_lag", "genwire_partition_stalled"} <= raw


def test_a_renamed_metric_would_be_caught() -> None:
    assert "genwire_dlq_total" in registry_names()
    assert "genwire_dead_letters_total" not in registry_names()
    assert _names_in('rate(genwire_dead_letters_total{code="x"}[5m])') == {
        "genwire_dead_letters_total"
    }


def test_server_error_codes_are_the_5xx_codes() -> None:
    from genwire_gateway.grpc_service import UNEXPECTED

    from genwire.request import ERROR_HTTP_STATUS

    server = {str(code) for code, status in ERROR_HTTP_STATUS.items() if status >= 500}
    assert set(slo_gen.SERVER_ERROR_CODES) == server | {UNEXPECTED}
    joined = "|".join(slo_gen.SERVER_ERROR_CODES)
    for rule in rule_groups():
        for codes in re.findall(r'(?:code|outcome)=~"([^"]*)"', rule["expr"]):
            if "internal" in codes:
                assert codes == joined, f"{rule.get('record') or rule.get('alert')}: {codes}"


def test_label_values_the_rules_select_exist() -> None:
    """Method names, topics and stages the SLOs select are the ones the code emits."""
    from genwire.topics import Topic

    assert set(slo_gen.STAGE_TOPICS) == {
        Topic.REQUESTS.value,
        Topic.PREPARED.value,
        Topic.GENERATIONS.value,
    }
    grpc_source = (ROOT / "services/gateway/genwire_gateway/grpc_service.py").read_text()
    http_source = (ROOT / "services/gateway/genwire_gateway/http_api.py").read_text()
    for method in slo_gen.GENERATION_METHODS:
        if method.startswith("/"):
            assert f'"{method}"' in http_source, method
        else:
            assert f"async def {method}(" in grpc_source, method
    stages = {s.extra or s.by for s in slo_gen.slis()}
    assert stages  # the stage SLIs name real services
    for sli in slo_gen.slis():
        for stage in re.findall(r'stage="([^"]+)"', sli.total):
            assert stage in SERVICE_PORTS


def test_stage_rules_count_the_request_topics_only() -> None:
    """The stage: rules read each stage's request topic, the SLO generator's STAGE_TOPICS: the
    control consumer's heartbeats and the retry replayer's waits are not requests."""
    topics = f'topic=~"{"|".join(slo_gen.STAGE_TOPICS)}"'
    (group,) = (
        g
        for g in yaml.safe_load((PROM / "rules" / "genwire.rules.yml").read_text())["groups"]
        if g["name"] == "genwire-stages"
    )
    checked = set()
    for rule in group["rules"]:
        record = rule.get("record", "")
        if not record.startswith("stage:"):
            continue
        raws = (
            "genwire_messages_total",
            "genwire_process_duration_seconds_bucket",
            "genwire_dlq_total",
        )
        for raw in raws:
            for selector in re.findall(rf"{raw}(\{{[^}}]*\}})?", rule["expr"]):
                assert topics in selector, f"{record}: {raw}{selector} counts every topic"
                checked.add(record)
    assert {
        "stage:genwire_messages:rate5m",
        "stage:genwire_message_failures:ratio_rate5m",
        "stage:genwire_process_duration_seconds:p50_5m",
        "stage:genwire_process_duration_seconds:p99_5m",
        "stage:genwire_dlq:rate5m",
    } <= checked
    dlq = next(r for r in group["rules"] if r.get("record") == "stage:genwire_dlq:ratio_rate5m")
    assert "/ stage:genwire_messages:rate5m" in dlq["expr"]


def test_ttft_slo_reads_the_callers_wait_at_the_gateway() -> None:
    """The ttft SLI is caller-side like the monitor's: the gateway's histogram (from its
    receipt), not inference's (from its Triton call); its selector and 1 s edge exist there."""
    from genwire_gateway.telemetry import GatewayMetrics

    (ttft,) = (s for s in slo_gen.slis() if s.slo == "ttft")
    read = set(re.findall(r"(genwire_\w+?)_(?:count|bucket)\{", ttft.bad + ttft.total))
    assert read == {slo_gen.TTFT_METRIC} == {"genwire_gateway_time_to_first_token_seconds"}
    registry = CollectorRegistry()
    GatewayMetrics(registry).ttft.labels("http").observe(0.5)
    samples = [
        s
        for family in registry.collect()
        if family.name == slo_gen.TTFT_METRIC
        for s in family.samples
        if s.name == f"{slo_gen.TTFT_METRIC}_bucket"
    ]
    assert {s.labels["le"] for s in samples} >= {"1.0"}
    assert 'entrypoint!=""' in ttft.total and all(s.labels["entrypoint"] for s in samples)


# --- compose and Kubernetes ------------------------------------------------------------------


def test_compose_scrapes_every_service_and_runs_the_promtool_release() -> None:
    config = yaml.safe_load((PROM / "prometheus.yml").read_text())
    jobs = {j["job_name"]: j for j in config["scrape_configs"]}
    for short, port in SERVICE_PORTS.items():
        (sd,) = jobs[short]["dns_sd_configs"]
        assert sd["names"] == [short] and sd["port"] == port and sd["type"] == "A"
    assert jobs["triton"]["static_configs"][0]["targets"] == ["triton:8002"]
    assert jobs["jaeger"]["static_configs"][0]["targets"] == ["jaeger:8888"]
    compose = yaml.safe_load((ROOT / "deploy/compose/compose.yaml").read_text())["services"]
    assert {*SERVICE_PORTS, "triton", "jaeger"} <= set(compose)
    release = "v3." + str(int(build_promtool.VERSION.split(".")[1]) - 300) + ".0"
    assert compose["prometheus"]["image"] == f"prom/prometheus:{release}"
    mounts = {v.split(":")[1]: v.split(":")[0] for v in compose["prometheus"]["volumes"]}
    compose_dir = ROOT / "deploy" / "compose"
    assert (compose_dir / mounts["/etc/prometheus/prometheus.yml"]).resolve() == (
        PROM / "prometheus.yml"
    )
    assert (compose_dir / mounts["/etc/prometheus/rules"]).resolve() == PROM / "rules"
    grafana = {v.split(":")[1]: v.split(":")[0] for v in compose["grafana"]["volumes"]}
    assert (
        compose_dir / grafana["/etc/grafana/provisioning"]
    ).resolve() == GRAFANA / "provisioning"
    board = grafana["/var/lib/grafana/dashboards/genwire/genwire.json"]
    assert (compose_dir / board).resolve() == GRAFANA / "genwire.json"
    providers = yaml.safe_load((GRAFANA / "provisioning/dashboards/genwire.yml").read_text())
    assert providers["providers"][0]["options"]["path"] == "/var/lib/grafana/dashboards/genwire"


def test_dashboard_panels_use_the_provisioned_datasource() -> None:
    import json

    sources = yaml.safe_load((GRAFANA / "provisioning/datasources/prometheus.yml").read_text())
    uid = sources["datasources"][0]["uid"]
    dashboard = json.loads((GRAFANA / "genwire.json").read_text())
    panels = [p for p in dashboard["panels"] if p["type"] != "row"]
    assert len(panels) >= 20
    for panel in panels:
        assert panel["datasource"]["uid"] == uid
        assert panel["targets"]
    titles = " ".join(p["title"] for p in panels).lower()
    for word in ("lag", "dead letters", "burn rate", "p99", "requests/s"):
        assert word in titles


def render_with_component(tmp_path: Path) -> list[dict[str, Any]]:
    """deploy/kubernetes/base plus the monitoring component, rendered by kustomize."""
    import os
    import shutil

    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl (kustomize) is not installed")
    rel = os.path.relpath(ROOT, tmp_path)
    (tmp_path / "kustomization.yaml").write_text(
        "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\n"
        "namespace: genwire\n"
        f"resources:\n  - {rel}/deploy/kubernetes/base\n"
        f"components:\n  - {rel}/deploy/kubernetes/components/monitoring\n"
    )
    proc = subprocess.run(
        [kubectl, "kustomize", str(tmp_path)], capture_output=True, text=True, check=False
    )
    assert proc.returncode == 0, proc.stderr
    return [d for d in yaml.safe_load_all(proc.stdout) if d]


def test_kubernetes_component_discovers_every_service_pod(tmp_path: Path) -> None:
    """The pods of deploy/kubernetes/base match the component's discovery rules: label
    part-of=genwire, component=service and a port named http for the services, a port named
    metrics for Triton and Jaeger."""
    docs = render_with_component(tmp_path)
    deployments = {d["metadata"]["name"]: d for d in docs if d["kind"] == "Deployment"}
    assert {"prometheus", "grafana"} <= set(deployments)

    def pod(name: str) -> tuple[dict[str, str], dict[str, int]]:
        template = deployments[name]["spec"]["template"]
        ports = {
            p["name"]: p["containerPort"]
            for c in template["spec"]["containers"]
            for p in c.get("ports", [])
        }
        return template["metadata"]["labels"], ports

    for short, port in SERVICE_PORTS.items():
        labels, ports = pod(short)
        assert labels["app.kubernetes.io/part-of"] == "genwire", short
        assert labels["app.kubernetes.io/component"] == "service", short
        assert labels["app.kubernetes.io/name"] == short
        assert ports["http"] == port, short
    assert pod("triton")[1]["metrics"] == 8002
    assert pod("jaeger")[1]["metrics"] == 8888
    # Prometheus's own pod is not a genwire target (no http/metrics port).
    assert "metrics" not in pod("prometheus")[1] and "http" not in pod("prometheus")[1]
    config_maps = {d["metadata"]["name"] for d in docs if d["kind"] == "ConfigMap"}
    volumes = deployments["prometheus"]["spec"]["template"]["spec"]["volumes"]
    for volume in volumes:
        if "configMap" in volume:
            assert volume["configMap"]["name"] in config_maps
    rules = next(
        d
        for d in docs
        if d["kind"] == "ConfigMap" and d["metadata"]["name"].startswith("prometheus-rules")
    )
    assert set(rules["data"]) == {p.name for p in RULES}


# --- the running stack -----------------------------------------------------------------------


def test_the_running_services_expose_every_metric_the_rules_read(stack: object) -> None:
    """Scrape each service of the running stack: the union of names covers the rules' raw names."""
    import urllib.request

    exposed: set[str] = set()
    for port in SERVICE_PORTS.values():
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as resp:
            text = resp.read().decode()
        for name, kind in re.findall(r"^# TYPE (\S+) (\S+)$", text, flags=re.MULTILINE):
            exposed.add(name)
            if kind == "histogram":
                exposed |= {f"{name}_{s}" for s in ("bucket", "count", "sum")}
            if kind == "counter" and not name.endswith("_total"):
                exposed.add(f"{name}_total")
    raw = {n for n in used_names() if ":" not in n and n != "up"}
    assert raw - exposed == set(), "the rules read metrics the running services do not expose"


def test_slo_objectives_are_the_monitors_defaults() -> None:
    """The rules page on the same objectives as the monitor (one alerting story, two engines)."""
    from genwire_monitor.config import default_slos

    rules = {(s.slo, s.sli): s.objective for s in slo_gen.slis()}
    for slo in default_slos():
        assert rules[(slo.name, "latency")] == slo.objective, slo.name
