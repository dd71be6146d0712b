"""The native stack's components: one small class each (ports, install, start, health).

Versions are pinned here and nowhere else; ``deploy/compose/compose.yaml`` uses the same ones
(``tests/stack/test_compose.py`` checks).
"""

from __future__ import annotations

import base64
import os
import shutil
import string
import sys
import uuid
from abc import ABC, abstractmethod
from pathlib import Path

from genwire.settings import CommonSettings
from genwire.stack import bootstrap
from genwire.stack.errors import StackError
from genwire.stack.health import http_status, redis_ping, run_coro, tcp_open
from genwire.stack.paths import StackPaths, site_packages

KAFKA_VERSION = "3.9.1"
"""Apache Kafka broker (KRaft). 3.9 is the last line that still accepts the older protocol
versions; aiokafka 0.14.0 is tested against it here. Kafka 4.x would also work (see README)."""
KAFKA_PORT = 9092
KAFKA_CONTROLLER_PORT = 9093

REDIS_PORT = 6379

PYTRITON_WHEEL = "nvidia-pytriton==0.7.0"
"""Carries Triton Inference Server 2.51.0 (``tritonserver``, the Python backend, its stubs)."""
TRITON_SERVER_VERSION = "2.51.0"
TRITON_NGC_TAG = "24.10"
"""NGC's container release with the same Triton (compose: nvcr.io/nvidia/tritonserver:24.10-py3)."""
TRITON_HTTP_PORT = 8000
TRITON_GRPC_PORT = 8001
TRITON_METRICS_PORT = 8002
STUB_SITE_PACKAGES_ENV = "GENWIRE_STUB_SITE_PACKAGES"
"""Set on tritonserver (and so on its Python stubs): the venv's site-packages, which a model's
``model.py`` puts on ``sys.path`` before importing numpy, onnxruntime or tokenizers."""

JAEGER_MODULE = "github.com/jaegertracing/jaeger"
JAEGER_MODULE_VERSION = "v1.76.0"
"""Jaeger's Go module has no /v2 suffix: module v1.76.0 is the release tagged Jaeger v2.13.0."""
JAEGER_VERSION = "2.13.0"
JAEGER_UI_PORT = 16686
JAEGER_QUERY_GRPC_PORT = 16685
JAEGER_OTLP_GRPC_PORT = 4317
JAEGER_OTLP_HTTP_PORT = 4318
JAEGER_HEALTH_PORT = 13133
JAEGER_METRICS_PORT = 8888
"""Jaeger's own Prometheus metrics (kafka receiver lag, storage writes)."""


class Component(ABC):
    """A server genwire can install, start, probe and stop."""

    name: str
    """Short id: pid file, log file and the ``--only`` option use it."""
    title: str
    """What it is, for the status table."""
    phase: int
    """Start order: every component of a phase is started together, phases one after another."""
    start_timeout_s: float = 120.0
    adoptable: bool = False
    """A server of this kind already running (not started by genwire) may be reused."""

    def __init__(self, paths: StackPaths, settings: CommonSettings) -> None:
        self.paths = paths
        self.settings = settings

    @property
    def log(self) -> Path:
        """This component's log file."""
        return self.paths.logs / f"{self.name}.log"

    @abstractmethod
    def ports(self) -> dict[str, int]:
        """Every port it listens on, by role (all on 127.0.0.1)."""

    def endpoints(self) -> str:
        """Where to reach it, for the status table."""
        return " ".join(f"{role}:{port}" for role, port in self.ports().items())

    def installed(self) -> bool:
        """Whether what it needs is already in the genwire home (or on the system)."""
        return True

    def install(self) -> None:
        """Fetch and build what is missing (idempotent)."""
        return None

    def prepare(self) -> None:
        """Write configuration and initialise storage before each start."""
        return None

    @abstractmethod
    def command(self) -> list[str]:
        """The argv that runs it in the foreground."""

    def environment(self) -> dict[str, str]:
        """Extra environment variables for the process."""
        return {}

    @abstractmethod
    def healthy(self) -> bool:
        """One cheap probe: does it serve now?"""

    def after_ready(self) -> None:
        """Run once it is healthy, also when an existing instance is reused (idempotent)."""
        return None


class Kafka(Component):
    """Apache Kafka, one KRaft node (broker + controller), jars from Maven Central."""

    name = "kafka"
    title = f"Apache Kafka {KAFKA_VERSION} (KRaft)"
    phase = 1

    def __init__(
        self,
        paths: StackPaths,
        settings: CommonSettings,
        port: int = KAFKA_PORT,
        controller_port: int = KAFKA_CONTROLLER_PORT,
        version: str = KAFKA_VERSION,
    ) -> None:
        super().__init__(paths, settings)
        self.port = port
        self.controller_port = controller_port
        self.version = version

    @property
    def dest(self) -> Path:
        return self.paths.opt / f"kafka-{self.version}"

    @property
    def data_dir(self) -> Path:
        return self.paths.data / "kafka"

    @property
    def config_file(self) -> Path:
        return self.paths.conf / "kafka.properties"

    def ports(self) -> dict[str, int]:
        return {"broker": self.port, "controller": self.controller_port}

    def installed(self) -> bool:
        return (self.dest / "libs" / f"kafka_2.13-{self.version}.jar").exists()

    def install(self) -> None:
        bootstrap.install_kafka(
            self.version,
            self.dest,
            pom=self.paths.deploy / "kafka" / "pom.xml",
            m2=self.paths.home / "m2",
            log=self.log,
        )

    def _java(self) -> str:
        return bootstrap.require_tool("java", bootstrap.JAVA_HINT)

    def prepare(self) -> None:
        template = (self.paths.deploy / "kafka" / "server.properties").read_text()
        text = string.Template(template).substitute(
            port=self.port, controller_port=self.controller_port, data_dir=self.data_dir
        )
        self.config_file.parent.mkdir(parents=True, exist_ok=True)
        self.config_file.write_text(text)
        if not (self.data_dir / "meta.properties").exists():
            self.data_dir.mkdir(parents=True, exist_ok=True)
            cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
            bootstrap.run_step(
                [
                    self._java(),
                    *self._java_opts(),
                    "-cp",
                    str(self.dest / "libs" / "*"),
                    "kafka.tools.StorageTool",
                    "format",
                    "-t",
                    cluster_id,
                    "-c",
                    str(self.config_file),
                ],
                what="formatting Kafka's KRaft storage",
                log=self.log,
                hint=f"remove {self.data_dir} and run `make up` again",
            )

    def _java_opts(self) -> list[str]:
        log4j = self.paths.deploy / "kafka" / "log4j.properties"
        return [f"-Dlog4j.configuration=file:{log4j}", "-Djava.awt.headless=true"]

    def command(self) -> list[str]:
        return [
            self._java(),
            # A small heap suits a dev box: the page cache does Kafka's real caching.
            "-Xms256m",
            "-Xmx1g",
            "-XX:+UseG1GC",
            "-XX:MaxGCPauseMillis=20",
            *self._java_opts(),
            "-cp",
            str(self.dest / "libs" / "*"),
            "kafka.Kafka",
            str(self.config_file),
        ]

    def healthy(self) -> bool:
        if not tcp_open(self.port):
            return False
        return run_coro(_kafka_answers(f"127.0.0.1:{self.port}"))

    def after_ready(self) -> None:
        from genwire.kafka import ensure_topics

        # Auto-create is off: every topic of genwire.topics.TOPIC_SPECS is created here.
        run_coro(ensure_topics(f"127.0.0.1:{self.port}"))


async def _kafka_answers(bootstrap_servers: str) -> bool:
    """True once the broker answers a metadata request (the controller quorum is up)."""
    from aiokafka.admin import AIOKafkaAdminClient

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap_servers, request_timeout_ms=3000)
    try:
        await admin.start()
        await admin.list_topics()
        return True
    except Exception:
        return False
    finally:
        await admin.close()


class Redis(Component):
    """Redis from Debian's ``redis-server`` package; an already-running Redis is reused."""

    name = "redis"
    title = "Redis"
    phase = 1
    start_timeout_s = 30.0
    adoptable = True

    def __init__(self, paths: StackPaths, settings: CommonSettings, port: int = REDIS_PORT) -> None:
        super().__init__(paths, settings)
        self.port = port

    def ports(self) -> dict[str, int]:
        return {"redis": self.port}

    def _binary(self) -> str | None:
        return shutil.which("redis-server") or (
            "/usr/bin/redis-server" if Path("/usr/bin/redis-server").exists() else None
        )

    def installed(self) -> bool:
        return self._binary() is not None

    def install(self) -> None:
        bootstrap.apt_install(["redis-server"], why="Redis for genwire", log=self.log)

    def prepare(self) -> None:
        (self.paths.data / "redis").mkdir(parents=True, exist_ok=True)

    def command(self) -> list[str]:
        binary = self._binary()
        if binary is None:
            raise StackError("redis-server not found: apt-get install redis-server")
        return [
            binary,
            "--bind",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--dir",
            str(self.paths.data / "redis"),
            "--daemonize",
            "no",
            "--save",
            "300 10",
            "--appendonly",
            "no",
            "--logfile",
            "",
        ]

    def healthy(self) -> bool:
        return redis_ping(self.port)


class Triton(Component):
    """Triton Inference Server (from the nvidia-pytriton wheel), CPU, Python backend."""

    name = "triton"
    title = f"Triton Inference Server {TRITON_SERVER_VERSION}"
    phase = 1

    def __init__(
        self,
        paths: StackPaths,
        settings: CommonSettings,
        http_port: int = TRITON_HTTP_PORT,
        grpc_port: int = TRITON_GRPC_PORT,
        metrics_port: int = TRITON_METRICS_PORT,
    ) -> None:
        super().__init__(paths, settings)
        self.http_port = http_port
        self.grpc_port = grpc_port
        self.metrics_port = metrics_port

    @property
    def dest(self) -> Path:
        return self.paths.opt / f"pytriton-{PYTRITON_WHEEL.split('==')[1]}"

    @property
    def server_dir(self) -> Path:
        return self.dest / "pytriton" / "tritonserver"

    @property
    def repository(self) -> Path:
        """The model repository Triton serves (fixed for the server's lifetime)."""
        return self.settings.model_repository or self.paths.home / "models" / "repository"

    def ports(self) -> dict[str, int]:
        return {"http": self.http_port, "grpc": self.grpc_port, "metrics": self.metrics_port}

    def installed(self) -> bool:
        stub = self.server_dir / "backends" / "python" / "triton_python_backend_stub"
        return (self.server_dir / "bin" / "tritonserver").exists() and stub.exists()

    def install(self) -> None:
        bootstrap.install_triton(
            PYTRITON_WHEEL, self.dest, downloads=self.paths.downloads, log=self.log
        )

    def environment(self) -> dict[str, str]:
        libs = str(self.dest / "nvidia_pytriton.libs")
        current = os.environ.get("LD_LIBRARY_PATH")
        return {
            "LD_LIBRARY_PATH": f"{libs}:{current}" if current else libs,
            STUB_SITE_PACKAGES_ENV: str(site_packages()),
        }

    def prepare(self) -> None:
        self.repository.mkdir(parents=True, exist_ok=True)
        stub = self.server_dir / "backends" / "python" / "triton_python_backend_stub"
        env = {**os.environ, **self.environment()}
        missing = bootstrap.missing_libraries(stub, env)
        if any(lib.startswith("libpython3.11") for lib in missing):
            # The stub embeds the system's Python 3.11 (Debian's libpython3.11), not the venv's.
            bootstrap.apt_install(["libpython3.11"], why="Triton's Python stub", log=self.log)
            missing = bootstrap.missing_libraries(stub, env)
        if missing:
            raise StackError(
                f"Triton's Python stub cannot find {', '.join(missing)}: install them "
                "(Debian package names usually match), then `make up` again"
            )

    def command(self) -> list[str]:
        return [
            str(self.server_dir / "bin" / "tritonserver"),
            "--model-repository",
            str(self.repository),
            "--backend-directory",
            str(self.server_dir / "backends"),
            # Models are loaded and unloaded through the repository API (genwire up loads
            # the default model), so a broken model never keeps the server from starting.
            "--model-control-mode",
            "explicit",
            "--http-address",
            "127.0.0.1",
            "--http-port",
            str(self.http_port),
            "--grpc-address",
            "127.0.0.1",
            "--grpc-port",
            str(self.grpc_port),
            "--metrics-address",
            "127.0.0.1",
            "--metrics-port",
            str(self.metrics_port),
            "--allow-gpu-metrics",
            "false",
            # Ready means the server serves: one model stuck loading or unloading must not make
            # the whole server look down (genwire up checks the default model separately).
            "--strict-readiness",
            "false",
            "--log-verbose",
            "0",
        ]

    def healthy(self) -> bool:
        return http_status(f"http://127.0.0.1:{self.http_port}/v2/health/ready") == 200


class Jaeger(Component):
    """Jaeger v2, built from the Go module proxy; ingests ``otlp_spans`` from Kafka."""

    name = "jaeger"
    title = f"Jaeger {JAEGER_VERSION}"
    phase = 2  # its kafka receiver needs the broker and the otlp_spans topic

    def __init__(
        self,
        paths: StackPaths,
        settings: CommonSettings,
        ports: dict[str, int] | None = None,
        group: str = "jaeger",
        kafka_port: int = KAFKA_PORT,
    ) -> None:
        super().__init__(paths, settings)
        self._ports = {
            "ui+query": JAEGER_UI_PORT,
            "query-grpc": JAEGER_QUERY_GRPC_PORT,
            "otlp-grpc": JAEGER_OTLP_GRPC_PORT,
            "otlp-http": JAEGER_OTLP_HTTP_PORT,
            "health": JAEGER_HEALTH_PORT,
            "metrics": JAEGER_METRICS_PORT,
            **(ports or {}),
        }
        self.group = group
        self.kafka_port = kafka_port

    @property
    def dest(self) -> Path:
        return self.paths.opt / f"jaeger-{JAEGER_VERSION}"

    @property
    def binary(self) -> Path:
        return self.dest / "jaeger"

    @property
    def ui_port(self) -> int:
        return self._ports["ui+query"]

    def ports(self) -> dict[str, int]:
        return dict(self._ports)

    def endpoints(self) -> str:
        otlp = f"{self._ports['otlp-grpc']}/{self._ports['otlp-http']}"
        return f"http://127.0.0.1:{self.ui_port} otlp:{otlp}"

    def installed(self) -> bool:
        return self.binary.exists()

    def install(self) -> None:
        bootstrap.install_jaeger(
            JAEGER_MODULE,
            JAEGER_MODULE_VERSION,
            self.dest,
            go_root=self.paths.home / "go",
            log=self.log,
            version_tag=f"v{JAEGER_VERSION}",
        )

    def prepare(self) -> None:
        (self.paths.data / "jaeger").mkdir(parents=True, exist_ok=True)

    def environment(self) -> dict[str, str]:
        # deploy/native/jaeger/config.yaml reads these (its defaults are the same values).
        return {
            "JAEGER_DATA_DIR": str(self.paths.data / "jaeger"),
            "JAEGER_UI_ASSETS": str(self.paths.deploy / "jaeger" / "ui"),
            "JAEGER_KAFKA_BROKERS": f"127.0.0.1:{self.kafka_port}",
            "JAEGER_KAFKA_GROUP": self.group,
            "JAEGER_LISTEN_HOST": "127.0.0.1",
            "JAEGER_UI_PORT": str(self._ports["ui+query"]),
            "JAEGER_QUERY_GRPC_PORT": str(self._ports["query-grpc"]),
            "JAEGER_OTLP_GRPC_PORT": str(self._ports["otlp-grpc"]),
            "JAEGER_OTLP_HTTP_PORT": str(self._ports["otlp-http"]),
            "JAEGER_HEALTH_PORT": str(self._ports["health"]),
            "JAEGER_METRICS_PORT": str(self._ports["metrics"]),
        }

    def command(self) -> list[str]:
        return [str(self.binary), "--config", str(self.paths.deploy / "jaeger" / "config.yaml")]

    def healthy(self) -> bool:
        return http_status(f"http://127.0.0.1:{self.ui_port}/api/services") == 200


class Service(Component):
    """One of genwire's own services: ``python -m genwire_<svc>`` from the venv."""

    phase = 4
    start_timeout_s = 180.0

    def __init__(
        self,
        paths: StackPaths,
        settings: CommonSettings,
        short: str,
        port: int,
        extra_ports: dict[str, int] | None = None,
    ) -> None:
        super().__init__(paths, settings)
        self.name = short
        self.title = f"genwire {short} service"
        self.module = f"genwire_{short}"
        self.port = port
        self.extra_ports = extra_ports or {}

    def ports(self) -> dict[str, int]:
        return {"http": self.port, **self.extra_ports}

    def endpoints(self) -> str:
        extra = " ".join(f"{role}:{port}" for role, port in self.extra_ports.items())
        return f"http://127.0.0.1:{self.port}/readyz {extra}".strip()

    def environment(self) -> dict[str, str]:
        # Services read GENWIRE_HOME like the stack, so both agree on the model repository.
        return {"GENWIRE_HOME": str(self.paths.home), "PYTHONUNBUFFERED": "1"}

    def command(self) -> list[str]:
        return [sys.executable, "-m", self.module]

    def healthy(self) -> bool:
        return http_status(f"http://127.0.0.1:{self.port}/readyz") == 200


SERVICE_PORTS: dict[str, int] = {
    "preprocess": 8091,
    "inference": 8092,
    "postprocess": 8093,
    "monitor": 8090,
    "gateway": 8080,
}
"""Health/metrics HTTP port of each service (the gateway's also serves the OpenAI-style API)."""
GATEWAY_GRPC_PORT = 50051

INFRA = ("kafka", "redis", "triton", "jaeger")
SERVICES = tuple(SERVICE_PORTS)


def build_components(paths: StackPaths, settings: CommonSettings) -> dict[str, Component]:
    """Every component of the stack by name, in start order."""
    components: list[Component] = [
        Kafka(paths, settings),
        Redis(paths, settings),
        Triton(paths, settings),
        Jaeger(paths, settings),
    ]
    for short, port in SERVICE_PORTS.items():
        extra = {"grpc": GATEWAY_GRPC_PORT} if short == "gateway" else None
        components.append(Service(paths, settings, short, port, extra))
    return {c.name: c for c in components}
