"""deploy/kubernetes: rendered, strictly decoded into the real API types, and in agreement with
the native stack and deploy/compose (docs/kubernetes.md).

No cluster runs here: the Go checker (deploy/kubernetes/check) renders each Kustomize tree as
`kubectl kustomize` does and decodes every document into k8s.io/api, KEDA's v1alpha1 types or
the Strimzi types it carries, failing on unknown fields, wrong types and unknown kinds; the tests
below then compare the rendered objects with genwire's own definitions.
"""

from __future__ import annotations

import copy
import importlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from genwire_stack.catalog import (
    GATEWAY_GRPC_PORT,
    JAEGER_VERSION,
    KAFKA_VERSION,
    SERVICE_PORTS,
    TRITON_GRPC_PORT,
    TRITON_HTTP_PORT,
    TRITON_METRICS_PORT,
    TRITON_NGC_TAG,
)

from genwire.kafka.consumer import RECORDS_CANCEL_S, STOP_COMMIT_S
from genwire.service.runtime import TASKS_STOP_S
from genwire.settings import CommonSettings, ServiceSettings
from genwire.topics import TOPIC_SPECS, Topic
from tests.deploy.k8scheck import KUBE_DIR, REPO, Built, ensure_checker, run_checker

# A cold build of the checker (Kubernetes, KEDA and Kustomize packages) takes minutes.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]

TREES = {
    "base": KUBE_DIR / "base",
    "cpu": KUBE_DIR / "overlays" / "cpu",
    "gpu": KUBE_DIR / "overlays" / "gpu",
}
COMPOSE = REPO / "deploy" / "compose" / "compose.yaml"
COMPOSE_GPU = REPO / "deploy" / "compose" / "compose.gpu.yaml"
STAGES = ("preprocess", "inference", "postprocess")
"""The consumer stages KEDA scales; each consumes one topic in the group of its service name."""
STAGE_TOPICS = {
    "preprocess": Topic.REQUESTS,
    "inference": Topic.PREPARED,
    "postprocess": Topic.GENERATIONS,
}
BOOTSTRAP = "genwire-kafka-bootstrap:9092"
"""Strimzi's bootstrap Service of Kafka cluster `genwire`, listener on 9092."""
# Compose's in-network addresses and the cluster's Service names for the same things.
COMPOSE_TO_CLUSTER = {"kafka:19092": BOOTSTRAP}
MAX_MESSAGE_BYTES = "16777216"  # genwire.kafka.admin.ensure_topics, the native broker's limit


@pytest.fixture(scope="module")
def checker() -> Built:
    return ensure_checker()


@pytest.fixture(scope="module")
def rendered(checker: Built, tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[Any]]:
    """Every tree rendered and checked; the documents of each, parsed."""
    out_dir = tmp_path_factory.mktemp("rendered")
    docs: dict[str, list[Any]] = {}
    for name, tree in TREES.items():
        out = out_dir / f"{name}.yaml"
        result = run_checker(checker.path, tree, out=out)
        assert result.returncode == 0, f"{name}:\n{result.stdout}\n{result.stderr}"
        docs[name] = [d for d in yaml.safe_load_all(out.read_text()) if d]
    return docs


def objects(docs: list[Any], kind: str) -> dict[str, Any]:
    return {d["metadata"]["name"]: d for d in docs if d["kind"] == kind}


def container(deployment: dict[str, Any]) -> dict[str, Any]:
    containers = deployment["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1, deployment["metadata"]["name"]
    result: dict[str, Any] = containers[0]
    return result


def _bytes(quantity: str) -> int:
    """A Kubernetes memory quantity in binary units (``1Gi``, ``256Mi``) as bytes."""
    units = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30}
    return int(quantity[:-2]) * units[quantity[-2:]]


def env_of(c: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: e["value"] for e in c.get("env", [])}


def settings_class(short: str) -> type[ServiceSettings]:
    module = importlib.import_module(f"genwire_{short}.config")
    (cls,) = (
        obj
        for obj in vars(module).values()
        if isinstance(obj, type)
        and issubclass(obj, ServiceSettings)
        and obj is not ServiceSettings
        and obj.__module__ == module.__name__
    )
    return cls


def env_keys(cls: type[CommonSettings]) -> set[str]:
    """The variables ``cls`` reads (a service's ``not_read`` fields it refuses: not those)."""
    prefix = str(cls.model_config.get("env_prefix", ""))
    unread: frozenset[str] = getattr(cls, "not_read", frozenset())
    return {f"{prefix}{name}".upper() for name in cls.model_fields if name not in unread}


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(COMPOSE.read_text())
    services: dict[str, Any] = data["services"]
    return services


# --- the strict check -----------------------------------------------------------------------


def test_every_tree_renders_and_decodes_strictly(
    checker: Built, rendered: dict[str, list[Any]]
) -> None:
    for name, docs in rendered.items():
        kinds = {d["kind"] for d in docs}
        # Not vacuous: the trees hold what the check is for.
        assert {"Deployment", "Service", "PodDisruptionBudget", "ScaledObject"} <= kinds, name
        assert {"KafkaTopic", "HorizontalPodAutoscaler", "StatefulSet", "Job"} <= kinds, name
    assert {"Kafka", "KafkaNodePool"} <= {d["kind"] for d in rendered["cpu"]}
    assert all(
        d["metadata"].get("namespace") == "genwire"
        for d in rendered["cpu"]
        if d["kind"] != "Namespace"
    )


def first(docs: list[Any], kind: str, name: str) -> dict[str, Any]:
    return copy.deepcopy(objects(docs, kind)[name])


def broken_variants(docs: list[Any]) -> Iterator[tuple[str, dict[str, Any], str]]:
    """(what, a real rendered object with one defect, a word the failure must name)."""
    d = first(docs, "Deployment", "gateway")
    container(d)["imagePullPolice"] = "Always"
    yield "unknown field in a container", d, "imagePullPolice"
    d = first(docs, "Deployment", "gateway")
    d["spec"]["replicas"] = "two"
    yield "string for an integer", d, "replicas"
    d = first(docs, "Deployment", "preprocess")
    container(d)["ports"][0]["ContainerPort"] = container(d)["ports"][0].pop("containerPort")
    yield "field name in the wrong case", d, "ContainerPort"
    d = first(docs, "Deployment", "inference")
    container(d)["readinessProbe"]["httpGet"]["port"] = ["http"]
    yield "list for an int-or-string", d, "port"
    d = first(docs, "PodDisruptionBudget", "gateway")
    d["spec"]["minAvailible"] = 1
    yield "unknown field in a PodDisruptionBudget", d, "minAvailible"
    s = first(docs, "ScaledObject", "inference")
    s["spec"]["maxReplicas"] = 3
    yield "unknown field in a ScaledObject", s, "maxReplicas"
    s = first(docs, "ScaledObject", "inference")
    s["spec"]["minReplicaCount"] = "one"
    yield "string for a ScaledObject's integer", s, "minReplicaCount"
    s = first(docs, "ScaledObject", "preprocess")
    s["spec"]["triggers"][0]["metadata"]["lagTreshold"] = "10"
    yield "misspelt kafka trigger metadata", s, "lagTreshold"
    s = first(docs, "ScaledObject", "preprocess")
    s["spec"]["triggers"][0]["metadata"]["lagThreshold"] = "ten"
    yield "kafka lagThreshold that is not a number", s, "lagThreshold"
    s = first(docs, "ScaledObject", "postprocess")
    s["spec"]["triggers"][0]["metadata"]["offsetResetPolicy"] = "oldest"
    yield "kafka offsetResetPolicy outside its enum", s, "offsetResetPolicy"
    s = first(docs, "ScaledObject", "postprocess")
    s["spec"]["minReplicaCount"], s["spec"]["maxReplicaCount"] = 4, 3
    yield "minReplicaCount above maxReplicaCount", s, "MinReplicaCount"
    t = first(docs, "KafkaTopic", "genwire-requests")
    t["spec"]["partition"] = 3
    yield "unknown field in a KafkaTopic", t, "partition"
    t = first(docs, "KafkaTopic", "genwire-requests")
    t["spec"]["partitions"] = "3"
    yield "string for a KafkaTopic's partitions", t, "partitions"
    yield (
        "a kind with no Go type",
        {"apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": "w"}},
        "Widget",
    )


def test_the_check_fails_each_defect_and_passes_the_original(
    checker: Built, rendered: dict[str, list[Any]], tmp_path: Path
) -> None:
    docs = rendered["cpu"]
    originals = tmp_path / "originals.yaml"
    originals.write_text(
        yaml.safe_dump_all(
            [
                first(docs, "Deployment", "gateway"),
                first(docs, "ScaledObject", "preprocess"),
                first(docs, "KafkaTopic", "genwire-requests"),
                first(docs, "PodDisruptionBudget", "gateway"),
            ]
        )
    )
    ok = run_checker(checker.path, originals)
    assert ok.returncode == 0, ok.stdout
    for i, (what, obj, word) in enumerate(broken_variants(docs)):
        path = tmp_path / f"broken-{i}.yaml"
        path.write_text(yaml.safe_dump(obj))
        result = run_checker(checker.path, path)
        assert result.returncode == 1, f"{what}: passed the check\n{result.stdout}"
        fail = [line for line in result.stdout.splitlines() if line.startswith("FAIL")]
        assert len(fail) == 1 and word in fail[0], f"{what}: {result.stdout}"


def test_a_yaml_duplicate_key_fails(checker: Built, tmp_path: Path) -> None:
    path = tmp_path / "dup.yaml"
    path.write_text("apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: a\n  name: b\n")
    result = run_checker(checker.path, path)
    assert result.returncode == 1 and "FAIL" in result.stdout, result.stdout


# --- agreement with the native stack and compose ------------------------------------------


def test_services_images_commands_and_ports(
    rendered: dict[str, list[Any]], compose: dict[str, Any]
) -> None:
    docs = rendered["cpu"]
    deployments, services = objects(docs, "Deployment"), objects(docs, "Service")
    for short, port in SERVICE_PORTS.items():
        c = container(deployments[short])
        assert c["image"] == compose[short]["image"] == f"genwire/{short}:0.1.0"
        assert c["command"] == compose[short]["command"]
        ports = {p["name"]: p["containerPort"] for p in c["ports"]}
        assert ports["http"] == port
        svc_ports = {p["port"] for p in services[short]["spec"]["ports"]}
        published = {int(str(p).rsplit(":", 1)[1]) for p in compose[short]["ports"]}
        assert svc_ports == published == set(ports.values()), short
        assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
        assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
        assert (
            services[short]["spec"]["selector"]
            == deployments[short]["spec"]["selector"]["matchLabels"]
        )
        for key in ("cpu", "memory"):
            assert key in c["resources"]["requests"] and key in c["resources"]["limits"]
    gateway_ports = {
        p["name"]: p["containerPort"] for p in container(deployments["gateway"])["ports"]
    }
    assert gateway_ports["grpc"] == GATEWAY_GRPC_PORT


def test_environment_matches_compose_and_the_settings(
    rendered: dict[str, list[Any]], compose: dict[str, Any]
) -> None:
    docs = rendered["cpu"]
    common = objects(docs, "ConfigMap")
    (shared,) = (cm["data"] for name, cm in common.items() if name.startswith("genwire-common"))
    compose_common = compose["gateway"]["environment"]  # x-common-env plus the gateway's own
    for key, value in shared.items():
        assert key in compose_common, f"{key}: not in compose's common environment"
        assert value == COMPOSE_TO_CLUSTER.get(compose_common[key], compose_common[key]), key
    assert {k for k in compose_common if not k.startswith("GENWIRE_GATEWAY_")} == set(shared)
    assert set(shared) - {"OTEL_TRACES_EXPORTER"} <= env_keys(CommonSettings)
    deployments = objects(docs, "Deployment")
    for short in SERVICE_PORTS:
        c = container(deployments[short])
        envfrom = [e["configMapRef"]["name"] for e in c["envFrom"]]
        assert any(n.startswith("genwire-common") for n in envfrom), short
        own = env_of(c)
        theirs = {
            k: str(v)
            for k, v in compose[short]["environment"].items()
            if k.startswith(f"GENWIRE_{short.upper()}_")
        }
        # Every variable compose sets, with the cluster's address for the same thing ...
        for key, value in theirs.items():
            assert own.get(key) == COMPOSE_TO_CLUSTER.get(value, value), f"{short}: {key}"
        # ... and nothing a settings class would not read.
        unknown = set(own) - env_keys(settings_class(short))
        assert not unknown, f"{short}: no setting reads {sorted(unknown)}"


def test_no_service_variables_reach_the_services(rendered: dict[str, list[Any]]) -> None:
    """Kubernetes gives a pod ``<SERVICE>_PORT`` and the like for every Service in its
    namespace: one named ``genwire-inference`` would set ``GENWIRE_INFERENCE_PORT`` to
    ``tcp://…``, which inference reads as its port (and refuses names it does not know)."""
    for tree, docs in rendered.items():
        for short, deployment in objects(docs, "Deployment").items():
            if short in SERVICE_PORTS:
                spec = deployment["spec"]["template"]["spec"]
                assert spec.get("enableServiceLinks") is False, f"{tree}: {short}"


def test_grace_period_outlasts_the_drain(rendered: dict[str, list[Any]]) -> None:
    """terminationGracePeriodSeconds > preStop + each consumer's bounded stop + flushes.

    ServiceRuntime.stop stops the stage's consumer and its retry replayer one after the other,
    each waiting up to shutdown_timeout_s for in-flight records, RECORDS_CANCEL_S for cancelled
    ones and STOP_COMMIT_S for its last commit (a Kafka outage), then cancels its background
    tasks (TASKS_STOP_S at most); the rebalance drain (drain_timeout_s) runs on the instances
    that stay, within the same window.
    """
    defaults = ServiceSettings()
    consumer_stop = defaults.shutdown_timeout_s + RECORDS_CANCEL_S + STOP_COMMIT_S
    for short in SERVICE_PORTS:
        spec = objects(rendered["cpu"], "Deployment")[short]["spec"]["template"]["spec"]
        pre_stop = container({"spec": {"template": {"spec": spec}}})["lifecycle"]["preStop"][
            "sleep"
        ]["seconds"]
        needed = pre_stop + 2 * consumer_stop + TASKS_STOP_S
        assert spec["terminationGracePeriodSeconds"] > needed, short
        assert spec["terminationGracePeriodSeconds"] > defaults.drain_timeout_s + pre_stop


def test_topics_are_exactly_genwire_topics(rendered: dict[str, list[Any]]) -> None:
    topics = {t["spec"]["topicName"]: t for t in objects(rendered["cpu"], "KafkaTopic").values()}
    assert set(topics) == {s.name for s in TOPIC_SPECS}
    (kafka,) = objects(rendered["cpu"], "Kafka").values()
    for spec in TOPIC_SPECS:
        t = topics[spec.name]
        assert t["metadata"]["labels"]["strimzi.io/cluster"] == kafka["metadata"]["name"]
        assert t["spec"]["partitions"] == spec.partitions, spec.name
        config = {k: str(v) for k, v in t["spec"]["config"].items()}
        assert config["retention.ms"] == str(spec.retention_ms), spec.name
        assert config["max.message.bytes"] == MAX_MESSAGE_BYTES
        compact = getattr(spec, "compact", False)
        assert (config.get("cleanup.policy") == "compact") == compact, spec.name
        assert config.get("cleanup.policy", "compact") == "compact", spec.name


def test_strimzi_cluster_is_the_bootstrap_the_services_use(rendered: dict[str, list[Any]]) -> None:
    docs = rendered["cpu"]
    (kafka,) = objects(docs, "Kafka").values()
    spec = kafka["spec"]["kafka"]
    assert spec["version"] == KAFKA_VERSION
    (listener,) = spec["listeners"]
    assert f"{kafka['metadata']['name']}-kafka-bootstrap:{listener['port']}" == BOOTSTRAP
    assert spec["config"]["auto.create.topics.enable"] is False
    assert str(spec["config"]["message.max.bytes"]) == MAX_MESSAGE_BYTES
    jaeger = env_of(container(objects(docs, "Deployment")["jaeger"]))
    assert jaeger["JAEGER_KAFKA_BROKERS"] == BOOTSTRAP


def test_each_consumer_stage_scales_on_its_groups_lag(rendered: dict[str, list[Any]]) -> None:
    docs = rendered["cpu"]
    scaled = objects(docs, "ScaledObject")
    assert set(scaled) == set(STAGES)
    partitions = {s.name: s.partitions for s in TOPIC_SPECS}
    thresholds = {}
    for stage in STAGES:
        spec = scaled[stage]["spec"]
        assert spec["scaleTargetRef"]["name"] in objects(docs, "Deployment")
        (trigger,) = spec["triggers"]
        md = trigger["metadata"]
        assert trigger["type"] == "kafka"
        assert md["bootstrapServers"] == BOOTSTRAP
        # The group id is the service name (genwire.service.runtime) ...
        assert md["consumerGroup"] == settings_class(stage)().service_name
        # ... consuming this topic (the stage's app.py registers it).
        assert md["topic"] == STAGE_TOPICS[stage]
        app = (REPO / "services" / stage / f"genwire_{stage}" / "app.py").read_text()
        assert f"Topic.{STAGE_TOPICS[stage].name}" in app
        assert md["allowIdleConsumers"] == "false"
        assert spec["maxReplicaCount"] <= partitions[md["topic"]]
        assert spec["minReplicaCount"] >= 1
        thresholds[stage] = int(md["lagThreshold"])
        assert 0 <= int(md["activationLagThreshold"]) < thresholds[stage]
    # Slow per record scales first; fast per record (and many chunks per request) later.
    assert thresholds["inference"] < thresholds["preprocess"] < thresholds["postprocess"]


def test_gateway_scales_on_cpu_and_the_monitor_stays_single(
    rendered: dict[str, list[Any]],
) -> None:
    docs = rendered["cpu"]
    (hpa,) = objects(docs, "HorizontalPodAutoscaler").values()
    assert hpa["spec"]["scaleTargetRef"]["name"] == "gateway"
    assert hpa["spec"]["minReplicas"] >= 2
    # Each gateway owns a partition of the reply topic: no more gateways than partitions.
    replies = {s.name: s.partitions for s in TOPIC_SPECS}.get("genwire.replies")
    if replies is not None:
        assert hpa["spec"]["maxReplicas"] <= replies
    (metric,) = hpa["spec"]["metrics"]
    assert metric["resource"]["name"] == "cpu"
    monitor = objects(docs, "Deployment")["monitor"]["spec"]
    assert monitor["replicas"] == 1 and monitor["strategy"]["type"] == "Recreate"
    pdbs = objects(docs, "PodDisruptionBudget")
    assert set(SERVICE_PORTS) <= set(pdbs)
    for name, pdb in pdbs.items():
        target = objects(docs, "Deployment")[name]["spec"]["selector"]["matchLabels"]
        assert pdb["spec"]["selector"]["matchLabels"] == target


def test_triton_redis_and_jaeger_as_in_compose(
    rendered: dict[str, list[Any]], compose: dict[str, Any]
) -> None:
    gpu_compose = yaml.safe_load(COMPOSE_GPU.read_text())["services"]["triton"]
    # The image compose runs Triton on: the CPU one, or with compose.gpu.yaml the GPU one (the
    # `triton-gpu` target, with TensorRT and CUDA torch: tests/stack/test_compose.py).
    images = {"cpu": compose["triton"]["image"], "gpu": gpu_compose["image"]}
    assert images == {
        "cpu": f"genwire/triton:{TRITON_NGC_TAG}",
        "gpu": f"genwire/triton-gpu:{TRITON_NGC_TAG}",
    }
    for overlay in ("cpu", "gpu"):
        docs = rendered[overlay]
        deployments = objects(docs, "Deployment")
        # Every inference instance shares the one Triton Service (docs/kubernetes.md).
        assert all(container(deployments[s])["image"] != "genwire/triton" for s in SERVICE_PORTS)
        triton = container(deployments["triton"])
        assert triton["image"] == images[overlay], overlay
        pod = deployments["triton"]["spec"]["template"]["spec"]
        assert {c["image"] for c in pod["initContainers"]} == {images[overlay]}, overlay
        assert triton["args"] == compose["triton"]["command"]
        # Writable, as compose's and the native repository: the model writes each version's
        # runtime-status.json there and, on a GPU, the TensorRT engine it builds at load.
        (repository,) = [m for m in triton["volumeMounts"] if m["mountPath"] == "/models"]
        assert not repository.get("readOnly", False), overlay
        for short in SERVICE_PORTS:
            mounts = container(deployments[short]).get("volumeMounts", [])
            assert all(m.get("readOnly") for m in mounts if m["name"] == "models"), short
        ports = {p["containerPort"] for p in triton["ports"]}
        assert ports == {TRITON_HTTP_PORT, TRITON_GRPC_PORT, TRITON_METRICS_PORT}
        gpus = triton["resources"]["limits"].get("nvidia.com/gpu")
        assert (gpus == 1) if overlay == "gpu" else gpus is None, overlay
        if overlay == "gpu":
            # Compose's GPU settings: the engine built at load when the version has none.
            assert env_of(triton).items() >= gpu_compose["environment"].items()
        redis = container(objects(docs, "StatefulSet")["redis"])
        assert redis["image"] == compose["redis"]["image"]
        # Compose's durability, and writes refused below the container's hard memory limit.
        assert redis["args"][:-4] == compose["redis"]["command"]
        assert redis["args"][-4:-2] == ["--maxmemory", "640mb"]
        assert redis["args"][-2:] == ["--maxmemory-policy", "noeviction"]
        limit = _bytes(redis["resources"]["limits"]["memory"])
        assert limit > 1.5 * 640 * 2**20  # room for fragmentation and copy-on-write
        jaeger = container(deployments["jaeger"])
        assert jaeger["image"] == f"jaegertracing/jaeger:{JAEGER_VERSION}"
    copy_ = (KUBE_DIR / "base" / "jaeger" / "config.yaml").read_text()
    assert copy_ == (REPO / "deploy" / "native" / "jaeger" / "config.yaml").read_text(), (
        "deploy/kubernetes/base/jaeger/config.yaml must be a copy of "
        "deploy/native/jaeger/config.yaml"
    )


def test_the_admin_key_job_registers_a_key_from_a_secret(rendered: dict[str, list[Any]]) -> None:
    """Auth is on by default: a Job registers the admin key, taken from a Secret the operator
    creates (never a key in this tree), as compose's keys-init does (docs/security.md)."""
    for name, docs in rendered.items():
        job = objects(docs, "Job")["keys-init"]
        c = container(job)
        assert c["image"] == "genwire/model:0.1.0", name
        assert c["command"] == ["genwire", "keys", "ensure-admin", "--from-env"], name
        (key_env,) = [e for e in c["env"] if e["name"] == "GENWIRE_API_KEY"]
        assert key_env["valueFrom"]["secretKeyRef"] == {
            "name": "genwire-admin-key",
            "key": "api-key",
        }, name
        assert {"configMapRef": {"name": "genwire-common"}} in c["envFrom"], name
        assert job["spec"]["template"]["spec"]["securityContext"]["runAsNonRoot"] is True
        assert not any(d["kind"] == "Secret" for d in docs), f"{name}: a key in the tree"
