"""deploy/compose agrees with the native stack: versions, ports, topics and settings variables.

No Docker engine runs here, so this parses the files and compares them with the native
definitions (genwire_stack.components, genwire.topics, each service's settings class), and runs
the real compose CLI's ``config`` (built from the Go module proxy by deploy/compose/
build_compose.py, cached under the genwire home) on compose.yaml alone and with the GPU
override: a mismatch or an invalid file fails.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pytest
import yaml
from genwire_cli.main import build_parser
from genwire_stack.components import (
    JAEGER_OTLP_GRPC_PORT,
    JAEGER_OTLP_HTTP_PORT,
    JAEGER_UI_PORT,
    JAEGER_VERSION,
    KAFKA_PORT,
    KAFKA_VERSION,
    REDIS_PORT,
    SERVICE_PORTS,
    TRITON_GRPC_PORT,
    TRITON_HTTP_PORT,
    TRITON_NGC_TAG,
    Jaeger,
    Service,
    build_components,
)
from genwire_stack.paths import StackPaths, repo_root

from genwire.settings import CommonSettings, ServiceSettings
from genwire.topics import Topic

COMPOSE_DIR = repo_root() / "deploy" / "compose"
NATIVE_DIR = repo_root() / "deploy" / "native"


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((COMPOSE_DIR / "compose.yaml").read_text())
    return data


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    result: dict[str, dict[str, Any]] = compose["services"]
    return result


@pytest.fixture(scope="module")
def native(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    settings = CommonSettings(home=tmp_path_factory.mktemp("home"))
    return dict(build_components(StackPaths.from_settings(settings), settings))


def published(service: dict[str, Any]) -> dict[int, int]:
    """host port -> container port of a compose service (all bound to 127.0.0.1)."""
    result: dict[int, int] = {}
    for entry in service.get("ports", []):
        host_ip, host, container = str(entry).split(":")
        assert host_ip == "127.0.0.1", f"{entry}: publish on loopback only, like the native stack"
        result[int(host)] = int(container)
    return result


def with_defaults(text: str) -> str:
    """The collector's ``${env:NAME:-default}`` with every variable unset."""
    return re.sub(r"\$\{env:[A-Z_]+:-([^}]*)\}", r"\1", text)


def kafka_internal(services: dict[str, dict[str, Any]]) -> str:
    listeners = services["kafka"]["environment"]["KAFKA_ADVERTISED_LISTENERS"]
    match = re.search(r"INTERNAL://([^,]+)", listeners)
    assert match, "kafka needs an INTERNAL listener for the compose network"
    return match.group(1)


def settings_class(short: str) -> type[ServiceSettings]:
    module = importlib.import_module(f"genwire_{short}.config")
    classes = [
        obj
        for obj in vars(module).values()
        if isinstance(obj, type)
        and issubclass(obj, ServiceSettings)
        and obj is not ServiceSettings
        and obj.__module__ == module.__name__
    ]
    assert len(classes) == 1, f"genwire_{short}.config should define one settings class"
    return classes[0]


def test_images_are_pinned_to_the_native_versions(services: dict[str, dict[str, Any]]) -> None:
    for name, service in services.items():
        image = service.get("image", "")
        assert ":" in image and not image.endswith(":latest"), f"{name}: pin {image!r}"
    assert services["kafka"]["image"] == f"apache/kafka:{KAFKA_VERSION}"
    assert services["jaeger"]["image"] == f"jaegertracing/jaeger:{JAEGER_VERSION}"
    dockerfile = (COMPOSE_DIR / "Dockerfile").read_text()
    assert f"ARG TRITON_IMAGE=nvcr.io/nvidia/tritonserver:{TRITON_NGC_TAG}-py3" in dockerfile
    assert services["triton"]["build"]["target"] == "triton"
    assert "triton" in dockerfile_stages()


def test_published_ports_match_the_native_components(
    services: dict[str, dict[str, Any]], native: dict[str, Any]
) -> None:
    expected = {
        "kafka": {KAFKA_PORT},
        "redis": {REDIS_PORT},
        "triton": set(native["triton"].ports().values()),
        "jaeger": {JAEGER_UI_PORT, JAEGER_OTLP_GRPC_PORT, JAEGER_OTLP_HTTP_PORT},
        **{short: set(native[short].ports().values()) for short in SERVICE_PORTS},
    }
    for name, ports in expected.items():
        mapping = published(services[name])
        assert set(mapping) == ports, f"{name}: compose publishes {sorted(mapping)}"
        assert all(h == c for h, c in mapping.items()), f"{name}: same port inside and out"
        assert ports <= set(native[name].ports().values()), f"{name}: not a native port"


def dockerfile_stages() -> dict[str, str]:
    """Stage name -> its instructions, from deploy/compose/Dockerfile."""
    text = (COMPOSE_DIR / "Dockerfile").read_text()
    parts = re.split(r"^FROM\s+\S+\s+AS\s+(\S+)\s*$", text, flags=re.MULTILINE)
    return dict(zip(parts[1::2], parts[2::2], strict=True))


def installed_extras(stage: str) -> set[str]:
    """The extras of genwire that a stage's ``pip install ".[a,b]"`` installs."""
    found = re.findall(r'pip install [^\n]*"\.\[([a-z,]+)\]"', dockerfile_stages()[stage])
    assert len(found) == 1, f"stage {stage}: expected one pip install of genwire"
    return set(found[0].split(","))


ONE_SHOTS = ("kafka-init", "model-init", "keys-init")


def test_each_genwire_service_has_its_own_image_and_runs_like_natively(
    services: dict[str, dict[str, Any]], native: dict[str, Any]
) -> None:
    builds = {
        name: s["build"]
        for name, s in services.items()
        if s.get("build", {}).get("target") != "triton" and "build" in s
    }
    assert set(builds) == {*SERVICE_PORTS, *ONE_SHOTS}
    for build in builds.values():
        assert build["dockerfile"] == "deploy/compose/Dockerfile"
        assert (COMPOSE_DIR / build["context"]).resolve() == repo_root()
    for short in SERVICE_PORTS:
        assert builds[short]["target"] == short, f"{short}: build its own Dockerfile target"
        assert services[short]["image"] == f"genwire/{short}:0.1.0"
        component = native[short]
        assert isinstance(component, Service)
        assert services[short]["command"] == ["python", *component.command()[1:]]
    # The one-shot inits run `genwire topics` / `genwire default-model`: the model image.
    for name in ONE_SHOTS:
        assert builds[name]["target"] == "model"
        assert services[name]["image"] == "genwire/model:0.1.0"


def test_each_image_installs_only_its_own_extra() -> None:
    from tests.stack.test_packaging import HEAVY, closure

    stages = dockerfile_stages()
    for short in SERVICE_PORTS:
        assert installed_extras(short) == {short}, f"stage {short} installs another extra"
        assert "torch" not in stages[short].lower(), f"stage {short} mentions torch"
        own = {"scipy"} if short == "monitor" else set()
        heavy = {d for d in closure(frozenset({short})) if HEAVY.match(d)} - own
        assert not heavy, f"the {short} image would install {sorted(heavy)}"
    assert installed_extras("model") == {"model", "tools"}
    assert "torch" in closure(frozenset(installed_extras("model")))
    # Every genwire image starts from `source`, which installs nothing itself.
    text = (COMPOSE_DIR / "Dockerfile").read_text()
    for stage in (*SERVICE_PORTS, "model"):
        assert re.search(rf"^FROM source AS {stage}$", text, flags=re.MULTILINE), stage
    assert "pip install" not in stages["source"]


def test_source_stage_copies_every_packaged_folder() -> None:
    """The wheel's packages (pyproject.toml) are in the build (`genwire` is tools/genwire_cli)."""
    import tomllib

    pyproject = tomllib.loads((repo_root() / "pyproject.toml").read_text())
    packages = pyproject["tool"]["hatch"]["build"]["targets"]["wheel"]["packages"]
    copied = set(re.findall(r"^COPY (\S+) ", dockerfile_stages()["source"], flags=re.MULTILINE))
    for package in packages:
        assert package.split("/")[0] in copied, f"{package} is not copied into the image"
    ignored = (COMPOSE_DIR / "Dockerfile.dockerignore").read_text().split()
    assert not {"genwire", "services", "tools", "README.md"} & set(ignored)


def test_one_shot_commands_run_on_the_model_image() -> None:
    """`genwire topics` and `genwire default-model` import only what `.[model,tools]` installs
    (besides TensorRT, the gpu extra, and what exists only inside Triton)."""
    from tests.stack.test_packaging import (
        OUTSIDE_ANY_EXTRA,
        closure,
        module_distribution,
        third_party_imports,
    )

    allowed = closure(frozenset(installed_extras("model")))
    missing = {}
    for package in ("genwire_cli", "genwire_stack", "genwire_model"):
        for module, users in third_party_imports(package).items():
            if module.split(".")[0] in OUTSIDE_ANY_EXTRA:
                continue
            dist = module_distribution(module)
            if dist not in allowed:
                missing[module] = (dist, sorted(users)[:2])
    assert not missing, f"the model image lacks: {missing}"


def test_topics_and_span_ingestion_use_the_project_names(
    services: dict[str, dict[str, Any]], native: dict[str, Any]
) -> None:
    init = services["kafka-init"]["command"]
    assert init == ["genwire", "topics", "--bootstrap-servers", kafka_internal(services)]
    build_parser().parse_args(init[1:])  # the subcommand exists
    assert services["kafka"]["environment"]["KAFKA_AUTO_CREATE_TOPICS_ENABLE"] == "false"
    native_props = (NATIVE_DIR / "kafka" / "server.properties").read_text()
    assert "\nauto.create.topics.enable=false\n" in native_props

    jaeger = services["jaeger"]
    mounted = {
        (COMPOSE_DIR / v.split(":")[0]).resolve(): v.split(":")[1]
        for v in jaeger["volumes"]
        if v.startswith(".")
    }
    component = native["jaeger"]
    assert isinstance(component, Jaeger)
    native_config = Path(component.command()[-1]).resolve()
    assert mounted.get(native_config) == jaeger["command"][-1], "compose must use the same config"
    assert jaeger["environment"]["JAEGER_KAFKA_BROKERS"] == kafka_internal(services)
    # Compose sets no JAEGER_KAFKA_GROUP/JAEGER_*_PORT: the config's defaults apply there.
    assert not {"JAEGER_KAFKA_GROUP", "JAEGER_UI_PORT"} & set(jaeger["environment"])
    config = yaml.safe_load(with_defaults(native_config.read_text()))
    receiver = config["receivers"]["kafka"]
    assert receiver["traces"] == {"topic": Topic.SPANS.value, "encoding": "otlp_proto"}
    assert receiver["group_id"] == "jaeger"
    query = config["extensions"]["jaeger_query"]
    assert query["http"]["endpoint"].endswith(f":{JAEGER_UI_PORT}")
    assert "kafka" in config["service"]["pipelines"]["traces"]["receivers"]


@pytest.mark.parametrize("short", sorted(SERVICE_PORTS))
def test_service_variables_reach_its_settings(
    services: dict[str, dict[str, Any]], short: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    env = {k: str(v) for k, v in services[short]["environment"].items()}
    cls = settings_class(short)
    prefix = str(cls.model_config.get("env_prefix", ""))
    fields = set(cls.model_fields)
    for key in env:
        # pydantic-settings ignores unknown variables: a typo would silently change nothing.
        if key.startswith(prefix):
            assert key[len(prefix) :].lower() in fields, f"{key} is no field of {cls.__name__}"
        elif key.startswith("GENWIRE_"):
            assert key[len("GENWIRE_") :].lower() in CommonSettings.model_fields, key
    for key in list(os.environ):
        if key.startswith("GENWIRE_"):
            monkeypatch.delenv(key)
    for key, value in env.items():
        monkeypatch.setenv(key, value)

    settings = cls()
    assert settings.kafka_bootstrap_servers == kafka_internal(services)
    redis = urlparse(settings.redis_url)
    assert (redis.hostname, redis.port) == ("redis", REDIS_PORT)
    assert settings.triton_grpc_url == f"triton:{TRITON_GRPC_PORT}"
    assert settings.triton_http_url == f"triton:{TRITON_HTTP_PORT}"
    assert urlparse(settings.jaeger_ui_url).port == JAEGER_UI_PORT
    # Links for people open the real Jaeger UI (compose has it; the native build has none).
    assert settings.trace_url("ab" * 16) == f"http://localhost:{JAEGER_UI_PORT}/trace/{'ab' * 16}"
    assert settings.repository == Path("/models")
    assert settings.host == "0.0.0.0"
    assert settings.port == SERVICE_PORTS[short] == cls().port
    for key in list(env):
        monkeypatch.delenv(key)
    assert cls().port == SERVICE_PORTS[short], "the native default port differs"
    assert urlparse(cls().trace_url("ab")).port == SERVICE_PORTS["monitor"]  # its trace view
    common = CommonSettings()
    assert common.kafka_bootstrap_servers == f"127.0.0.1:{KAFKA_PORT}"


TRITON_FLAGS_NOT_COMPARED = {
    "--model-repository": "a path: the volume's mount point (/models)",
    "--backend-directory": "a path: the NGC image's own backends",
    "--http-address": "the container listens on every interface; compose publishes on loopback",
    "--grpc-address": "the same",
    "--metrics-address": "the same",
    "--allow-gpu-metrics": "the GPU image reports its GPU (nv_gpu_*); the CPU image has none",
}
"""Native Triton flags compose leaves to the image, each for its reason; every other one must
be in compose's command with the native value."""


def triton_flags(argv: list[str]) -> dict[str, str]:
    """``--flag value`` (native) or ``--flag=value`` (compose) pairs as {flag: value}; a flag
    given twice fails (tritonserver would take the last, or add both for --load-model)."""
    flags: dict[str, str] = {}
    args = list(argv[1:])
    while args:
        arg = args.pop(0)
        assert arg.startswith("--"), f"{arg!r}: not a flag"
        flag, eq, value = arg.partition("=")
        if not eq:
            value = args.pop(0)
        assert flag not in flags, f"{flag} given twice"
        flags[flag] = value
    return flags


def test_triton_runs_with_the_native_flags(
    services: dict[str, dict[str, Any]], native: dict[str, Any]
) -> None:
    """Every start of the compose container is what a native restart runs: the command plus
    restart_arguments() (the default model loaded as config.pbtxt names it, and a model that
    fails to load leaves the server serving), not `--load-model=*`, which also loaded models
    `genwire model unload` took out and let one broken model take Triton down."""
    triton = native["triton"]
    native_flags = triton_flags([*triton.command(), *triton.restart_arguments()])
    compose_argv = services["triton"]["command"]
    assert compose_argv[0] == "tritonserver"
    compose_flags = triton_flags(compose_argv)
    # The flags this check is about are there at all (not vacuous).
    assert {
        "--model-control-mode",
        "--load-model",
        "--exit-on-error",
        "--strict-readiness",
        "--log-verbose",
    } <= set(native_flags)
    compared = set(native_flags) - set(TRITON_FLAGS_NOT_COMPARED)
    assert set(compose_flags) - {"--model-repository"} == compared
    for flag in sorted(compared):
        assert compose_flags[flag] == native_flags[flag], flag
    assert compose_flags["--model-repository"] == "/models"
    assert any(v.endswith(":/models") for v in services["triton"]["volumes"])
    ports = triton.ports()
    for role in ("http", "grpc", "metrics"):
        assert compose_flags[f"--{role}-port"] == str(ports[role])


def kafka_env_properties(environment: dict[str, Any]) -> dict[str, str]:
    """The apache/kafka image's server.properties from its KAFKA_* variables: the prefix
    dropped, ``___`` is ``-``, ``__`` is ``_``, ``_`` is ``.``, lower case (the image's
    documented convention; CLUSTER_ID and the KAFKA_*_OPTS of the JVM are not properties)."""
    props: dict[str, str] = {}
    for key, value in environment.items():
        if not key.startswith("KAFKA_") or key.endswith("_OPTS"):
            continue
        name = "-".join(
            "_".join(part.replace("_", ".") for part in chunk.split("__"))
            for chunk in key[len("KAFKA_") :].lower().split("___")
        )
        props[name] = str(value).lower() if isinstance(value, bool) else str(value)
    return props


KAFKA_PROPERTIES_NOT_COMPARED = {
    "listeners": "compose adds the INTERNAL listener of the compose network",
    "advertised.listeners": "the same",
    "listener.security.protocol.map": "the same",
    "inter.broker.listener.name": "INTERNAL (the container's name), natively PLAINTEXT",
    "controller.quorum.voters": "the container's own controller port",
    "log.dirs": "the volume's mount point",
}
"""Native broker settings compose sets otherwise, each for its reason: where a broker is
reached and where it keeps its data. Every other key is compose's, with the native value."""


def test_kafka_broker_is_configured_like_the_native_one(
    services: dict[str, dict[str, Any]], native: dict[str, Any]
) -> None:
    """The native single node's server.properties (genwire_stack's Kafka, rendered as `make
    up` writes it) key for key: partitions of the group offsets topic, segment size, threads…
    A key the native file gains fails here until compose sets it too."""
    text = native["kafka"].properties()
    native_props = dict(
        line.split("=", 1)
        for line in text.splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    )
    assert native_props["offsets.topic.num.partitions"] == "10"  # not vacuous
    compose_props = kafka_env_properties(services["kafka"]["environment"])
    compared = set(native_props) - set(KAFKA_PROPERTIES_NOT_COMPARED)
    missing = sorted(compared - set(compose_props))
    assert not missing, f"compose's broker does not set {missing}"
    for key in sorted(compared):
        assert compose_props[key] == native_props[key], f"{key}: {compose_props[key]!r}"
    extra = sorted(set(compose_props) - set(native_props))
    assert not extra, f"compose's broker sets {extra}, the native one does not"
    # Reached from the host where the native broker is.
    assert f"HOST://127.0.0.1:{KAFKA_PORT}" in compose_props["advertised.listeners"].split(",")


def test_gpu_override_runs_triton_on_the_gpu_image_with_a_gpu() -> None:
    gpu = yaml.safe_load((COMPOSE_DIR / "compose.gpu.yaml").read_text())
    assert set(gpu["services"]) == {"triton"}
    triton = gpu["services"]["triton"]
    devices = triton["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["capabilities"] == ["gpu"]
    # Not the CPU image: the GPU target carries TensorRT and CUDA torch.
    assert triton["build"]["target"] == "triton-gpu"
    stage = dockerfile_stages()["triton-gpu"]
    assert "tensorrt-cu12==" in stage and "+cu126" in stage and "--index-url" in stage
    assert triton["environment"]["GENWIRE_TENSORRT_BUILD_ON_LOAD"] == "1"


LONG_RUNNING = ("kafka", "redis", "triton", "jaeger", *SERVICE_PORTS)


def test_compose_restarts_what_gives_up_like_the_native_supervisor(
    services: dict[str, dict[str, Any]],
) -> None:
    for name in LONG_RUNNING:
        assert services[name].get("restart") == "unless-stopped", f"{name}: no supervisor"
    for name in ONE_SHOTS:
        assert services[name]["restart"] == "no", f"{name} is a one-shot"
    # A restarted Triton container loads the default model as a native restart does (the
    # flags: test_triton_runs_with_the_native_flags), never every model in the repository.
    assert "--load-model=genwire-gpt" in services["triton"]["command"]
    assert "--load-model=*" not in services["triton"]["command"]


def test_redis_is_durable_like_the_native_one(
    services: dict[str, dict[str, Any]], native: dict[str, Any]
) -> None:
    def flags(argv: list[str]) -> dict[str, str]:
        return {argv[i]: argv[i + 1] for i in range(1, len(argv) - 1) if argv[i].startswith("--")}

    compose_flags = flags(services["redis"]["command"])
    native_flags = flags(native["redis"].command())
    for flag, value in {"--appendonly": "yes", "--appendfsync": "everysec"}.items():
        assert compose_flags[flag] == native_flags[flag] == value
    assert compose_flags["--save"] == native_flags["--save"] == ""  # no snapshot schedule
    assert "redis-data:/data" in services["redis"]["volumes"]


def test_kafka_init_creates_every_project_topic(services: dict[str, dict[str, Any]]) -> None:
    """`genwire topics` creates genwire.topics.TOPIC_SPECS (the retry topic too, once listed
    there): compose names no topic itself that could fall out of step."""
    from genwire.topics import TOPIC_SPECS

    init = services["kafka-init"]["command"]
    assert init[:2] == ["genwire", "topics"]
    compose_text = (COMPOSE_DIR / "compose.yaml").read_text()
    for spec in TOPIC_SPECS:
        assert f"create --topic {spec.name}" not in compose_text
    names = {spec.name for spec in TOPIC_SPECS}
    if hasattr(Topic, "RETRY"):
        assert Topic.RETRY.value in names


# -- the real compose CLI ------------------------------------------------------------------------

BUILD_TIMEOUT = pytest.mark.timeout(2400)


@pytest.fixture(scope="session")
def compose_cli() -> Path:
    """The cached compose CLI, built from the Go module proxy first when missing."""
    if shutil.which("go") is None and not (Path.home() / ".cache" / "genwire" / "opt").is_dir():
        pytest.skip("the Go toolchain is missing: the compose CLI cannot be built")
    proc = subprocess.run(
        [sys.executable, str(COMPOSE_DIR / "build_compose.py")],
        capture_output=True,
        text=True,
        check=False,
        timeout=2350,
    )
    assert proc.returncode == 0, f"building the compose CLI failed:\n{proc.stderr[-3000:]}"
    return Path(proc.stdout.strip().splitlines()[-1])


def compose_config(cli: Path, *files: str) -> dict[str, Any]:
    args = [str(cli)]
    for name in files:
        args += ["-f", str(COMPOSE_DIR / name)]
    proc = subprocess.run(
        [*args, "config", "--format", "json"],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
        cwd=COMPOSE_DIR,
    )
    assert proc.returncode == 0, f"compose config {files} failed:\n{proc.stderr}"
    rendered: dict[str, Any] = json.loads(proc.stdout)
    return rendered


@BUILD_TIMEOUT
@pytest.mark.parametrize("files", [("compose.yaml",), ("compose.yaml", "compose.gpu.yaml")])
def test_compose_cli_accepts_the_files(compose_cli: Path, files: tuple[str, ...]) -> None:
    rendered = compose_config(compose_cli, *files)
    services = rendered["services"]
    assert {"kafka", "redis", "triton", "model-init", *SERVICE_PORTS} <= set(services)
    triton = services["triton"]
    if "compose.gpu.yaml" in files:
        assert triton["build"]["target"] == "triton-gpu"
        device = triton["deploy"]["resources"]["reservations"]["devices"][0]
        assert device["capabilities"] == ["gpu"] and device["driver"] == "nvidia"
    else:
        assert triton["build"]["target"] == "triton"
        assert "deploy" not in triton
    # What compose itself resolved: restarts, durable volumes, the model-init's home.
    for name in LONG_RUNNING:
        assert services[name]["restart"] == "unless-stopped", name
    mounts = {
        name: {(v["source"], v["target"]) for v in s.get("volumes", []) if v["type"] == "volume"}
        for name, s in services.items()
    }
    assert ("redis-data", "/data") in mounts["redis"]
    assert ("kafka-data", "/var/lib/kafka/data") in mounts["kafka"]
    assert ("genwire-home", "/var/lib/genwire") in mounts["model-init"]
    assert ("models", "/models") in mounts["triton"]
    # Auth is on by default: keys-init saves the admin key in the same home volume, and every
    # genwire service starts after it (docs/security.md).
    keys_init = services["keys-init"]
    assert keys_init["command"] == ["genwire", "keys", "ensure-admin"]
    assert ("genwire-home", "/var/lib/genwire") in mounts["keys-init"]
    assert keys_init["environment"]["GENWIRE_HOME"] == "/var/lib/genwire"
    assert keys_init["environment"]["GENWIRE_REDIS_URL"] == "redis://redis:6379/0"
    for name in SERVICE_PORTS:
        wait = services[name]["depends_on"]["keys-init"]["condition"]
        assert wait == "service_completed_successfully", name


# The executables each image is known to ship: the base image's own tools and what its
# Dockerfile stage installs. A healthcheck naming anything else would never turn healthy.
IMAGE_BINARIES = {
    "apache/kafka": {"/opt/kafka/bin/kafka-broker-api-versions.sh"},  # the Kafka distribution
    "redis": {"redis-cli", "redis-server"},
    "prom/prometheus": {"wget", "prometheus", "promtool"},  # busybox base
    "python": {"python", "python3", "pip"},  # python:3.11-slim, every genwire image's base
    "nvcr.io/nvidia/tritonserver": {"python3", "pip", "tritonserver"},  # the Python backend's
}


def image_of(name: str, service: dict[str, Any]) -> str:
    target = service.get("build", {}).get("target")
    if target:  # ours: the base image of the target's stage
        text = (COMPOSE_DIR / "Dockerfile").read_text()
        base = re.search(rf"^FROM\s+(\S+)\s+AS\s+{re.escape(target)}\s*$", text, re.M)
        assert base, f"{name}: no Dockerfile stage {target}"
        origin = base.group(1)
        if origin == "source":  # every genwire image builds on the Python base
            origin = "${PYTHON_IMAGE}"
        arg = re.search(rf"^ARG {origin.strip('${}')}=(\S+)$", text, re.M)
        return arg.group(1) if arg else origin
    image: str = service["image"]
    return image


def test_every_healthcheck_runs_a_binary_its_image_has(
    services: dict[str, dict[str, Any]],
) -> None:
    gpu = yaml.safe_load((COMPOSE_DIR / "compose.gpu.yaml").read_text())["services"]
    checked = 0
    for name, service in [
        *services.items(),
        *(("gpu " + k, {**services[k], **v}) for k, v in gpu.items()),
    ]:
        test = service.get("healthcheck", {}).get("test")
        if not test:
            continue
        kind, *argv = test
        binary = argv[0].split()[0] if kind == "CMD-SHELL" else argv[0]
        image = image_of(name, service).split(":")[0]
        known = IMAGE_BINARIES.get(image)
        assert known is not None, f"{name}: no binary list for image {image}"
        assert binary in known, f"{name}: {binary} is not in {image} ({sorted(known)})"
        checked += 1
    assert checked >= 10


def test_every_genwire_image_runs_as_a_user() -> None:
    stages = dockerfile_stages()
    for stage in (*SERVICE_PORTS, "model", "triton", "triton-gpu"):
        users = re.findall(r"^USER (\S+)$", stages[stage], flags=re.MULTILINE)
        assert users and users[-1] not in ("root", "0"), f"stage {stage} runs as root"


def load_script(path: Path) -> Any:
    spec = importlib.util.spec_from_file_location(path.stem, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_a_dependency_added_without_relocking_is_reported_stale(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A lock that lacks a distribution the extras now pull in fails the check by name (it
    once crashed with a KeyError instead)."""
    lock = copied_locks(tmp_path, monkeypatch)
    model = tmp_path / "model.txt"
    lines = model.read_text().splitlines()
    pinned = [i for i, line in enumerate(lines) if line and not line.startswith("#")]
    dropped = lines[pinned[-1]].partition("==")[0]
    model.write_text("\n".join(lines[: pinned[-1]] + lines[pinned[-1] + 1 :]) + "\n")
    assert lock.main(["--check"]) == 1
    err = capsys.readouterr().err
    assert f"stale model.txt: added ['{dropped}']" in err
    assert "constraints.txt" not in err and "gateway.txt" not in err


def copied_locks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    """lock.py with its image locks and the native constraints copied under ``tmp_path``."""
    lock = load_script(COMPOSE_DIR / "lock.py")
    for target in lock.TARGETS:
        shutil.copy(lock.OUT / f"{target}.txt", tmp_path / f"{target}.txt")
    shutil.copy(lock.NATIVE, tmp_path / "constraints.txt")
    monkeypatch.setattr(lock, "OUT", tmp_path)
    monkeypatch.setattr(lock, "NATIVE", tmp_path / "constraints.txt")
    assert lock.main(["--check"]) == 0
    return lock


def test_a_venv_upgraded_without_relocking_fails_the_check(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The native venv is installed from the constraints, so a version that differs from them
    is an upgrade nobody relocked (GENWIRE_UNLOCKED=1): stale, with the move named."""
    lock = copied_locks(tmp_path, monkeypatch)
    native = tmp_path / "constraints.txt"
    text = native.read_text()
    version = re.search(r"^aiokafka==(\S+)$", text, re.M)
    assert version is not None
    native.write_text(text.replace(f"aiokafka=={version[1]}", "aiokafka==0.0.1"))
    assert lock.main(["--check"]) == 1
    err = capsys.readouterr().err
    assert f"stale constraints.txt: moved ['aiokafka 0.0.1->{version[1]}']" in err


def test_the_native_constraints_pin_the_whole_venv_torch_included() -> None:
    """Every distribution genwire[all,dev] pulls in is pinned, CUDA torch's companions too (PyPI's
    torch for Linux pulls them in): an unpinned one would resolve to a new release on a fresh
    clone. Local version tags are dropped (pip -c matches torch==X against X+cu...)."""
    lock = load_script(COMPOSE_DIR / "lock.py")
    pins = [p for p in lock.NATIVE.read_text().splitlines() if p and not p.startswith("#")]
    assert all(re.match(r"^[a-z0-9._-]+==[^+\s]+$", p) for p in pins), pins
    names = {p.partition("==")[0] for p in pins}
    assert set(lock.closure(lock.NATIVE_EXTRAS)) == names
    assert {"torch", "aiokafka", "pytest", "ruff", "tritonclient"} <= names
    assert "genwire" not in names


def test_images_install_their_fresh_locks_without_resolving() -> None:
    lock = load_script(COMPOSE_DIR / "lock.py")
    assert lock.main(["--check"]) == 0, "a lock is stale: run deploy/compose/lock.py"
    stages = dockerfile_stages()
    heavy = re.compile(r"^(torch|transformers|onnx|onnxruntime|tensorrt.*|nvidia-.*|triton)==")
    for target in lock.TARGETS:
        stage = stages[target]
        assert f"pip install --no-deps -r requirements/{target}.txt" in stage, target
        assert re.search(r"pip install (?!--no-deps)", stage) is None, f"{target} resolves"
        pinned = (COMPOSE_DIR / "requirements" / f"{target}.txt").read_text().splitlines()
        pins = [p for p in pinned if p and not p.startswith("#")]
        assert all(re.match(r"^[a-z0-9._-]+==\S+$", p) for p in pins), target
        if target != "model":
            assert not [p for p in pins if heavy.match(p)], f"{target} would install {pins}"
    # CPU torch from the CPU index only, the release the lock (and the tests) used.
    model = stages["model"]
    assert "--extra-index-url" not in model and '--index-url "${TORCH_INDEX}"' in model
    assert f"ARG TORCH_VERSION={lock.locked_torch_version()}" in model
    model_pins = (COMPOSE_DIR / "requirements" / "model.txt").read_text().splitlines()
    cuda = [p for p in model_pins if p.startswith(("torch==", "nvidia-", "triton=="))]
    assert not cuda, f"the model lock would install CUDA torch: {cuda}"


def test_triton_images_carry_what_the_models_runtime_imports() -> None:
    """Every third-party module genwire's Triton model imports (tools/genwire_model/runtime/,
    which runs in the stub's own Python) is installed in the Triton images; the GPU image also
    has what the TensorRT runner needs. modelopt and onnx only build TensorRT 11 FP16 graphs."""
    import ast

    runtime = repo_root() / "tools" / "genwire_model" / "runtime"
    imported: set[str] = set()
    for path in runtime.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                imported |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                imported.add(node.module.split(".")[0])
    provided = {"triton_python_backend_utils", "genwire_runtime", "__future__"}
    optional = {"modelopt", "onnx"}  # TensorRT 11's AutoCast only; the GPU image runs 10
    gpu_only = {"tensorrt": "tensorrt-cu12", "torch": "torch"}
    third_party = {m for m in imported if m not in sys.stdlib_module_names} - provided - optional
    stages = dockerfile_stages()
    for module in sorted(third_party):
        dist = gpu_only.get(module, module)
        assert f"{dist}==" in stages["triton-gpu"] or f'"{dist}==' in stages["triton-gpu"], module
        if module not in gpu_only:
            assert f"{dist}==" in stages["triton"], f"the triton image lacks {dist}"
