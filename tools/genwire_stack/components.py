"""The native stack's components: one small class each (ports, install, start, health).

Versions are pinned here and nowhere else; ``deploy/compose/compose.yaml`` uses the same ones
(``tests/stack/test_compose.py`` checks).
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import shutil
import string
import sys
import time
import uuid
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import httpx

from genwire.settings import CommonSettings
from genwire_stack import bootstrap
from genwire_stack.errors import StackError
from genwire_stack.health import http_status, redis_ping, run_coro, tcp_open
from genwire_stack.layout import StackLayout, instance_name, instance_port, read_layout
from genwire_stack.paths import StackPaths, site_packages

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


@dataclass(frozen=True)
class Readiness:
    """One probe's verdict: ready or not, whether it answered at all, and why not."""

    ready: bool
    answered: bool
    reason: str | None = None


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
    supervised: bool = True
    """Runs under :mod:`genwire_stack.supervise`, which restarts it whenever it exits."""
    stop_timeout_s: float = 20.0
    """How long its supervisor waits after SIGTERM before SIGKILL."""

    def __init__(self, paths: StackPaths, settings: CommonSettings) -> None:
        self.paths = paths
        self.settings = settings
        self.group = ""
        """Several components answering to one name in ``--only`` (Kafka nodes, instances)."""
        self.aliases: tuple[str, ...] = ()
        """Other names of this component in ``--only`` (``kafka-1``, ``preprocess-1``)."""

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

    def readiness(self) -> Readiness:
        """Like ``healthy``, with the reason when it answers but is not ready (services)."""
        ok = self.healthy()
        return Readiness(ok, answered=ok)

    def after_restart(self) -> tuple[str, list[str]] | None:
        """What its supervisor runs after each restart, once the URL answers 200:
        ``(url, argv)`` (Triton: load the default model again), or None."""
        return None

    def unready_restart(self) -> tuple[str, float] | None:
        """``(readiness URL, seconds)``: its supervisor restarts it once the URL has not
        answered 200 for that long (None: never for being unready)."""
        return None


class Kafka(Component):
    """Apache Kafka, one KRaft node (broker + controller), jars from Maven Central.

    Alone (``kafka``), or one of a cluster (``kafka-1``…, see :func:`kafka_nodes`): every node
    is broker and controller, all of them controller voters, sharing one cluster id.
    """

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
        *,
        node_id: int = 1,
        cluster: Sequence[tuple[int, int]] | None = None,
        heap: str = "1g",
    ) -> None:
        """``cluster``: (broker port, controller port) of every node, this one included, in
        node-id order; None: a single node."""
        super().__init__(paths, settings)
        self.port = port
        self.controller_port = controller_port
        self.version = version
        self.node_id = node_id
        self.cluster = list(cluster) if cluster else [(port, controller_port)]
        self.heap = heap
        self.group = "kafka"
        if len(self.cluster) > 1:
            self.name = f"kafka-{node_id}"
            self.title = f"Apache Kafka {version} (KRaft node {node_id} of {len(self.cluster)})"
        else:
            self.aliases = ("kafka-1",)

    @property
    def size(self) -> int:
        """Nodes in its cluster (1: a single node)."""
        return len(self.cluster)

    @property
    def bootstrap(self) -> str:
        """Every broker of its cluster, comma separated: what clients should be given."""
        return ",".join(f"127.0.0.1:{broker}" for broker, _ in self.cluster)

    @property
    def replication_factor(self) -> int:
        """Of genwire's topics and Kafka's internal ones: a copy on every broker."""
        return self.size

    @property
    def min_insync_replicas(self) -> int:
        """2 of 3 (a write with acks=all survives losing one broker); 1 on a single node."""
        return 2 if self.size >= 3 else 1

    @property
    def dest(self) -> Path:
        return self.paths.opt / f"kafka-{self.version}"

    @property
    def data_dir(self) -> Path:
        return self.paths.data / self.name

    @property
    def config_file(self) -> Path:
        return self.paths.conf / f"{self.name}.properties"

    @property
    def cluster_id_file(self) -> Path:
        """The id every node of a cluster is formatted with (kept for a node wiped later)."""
        ports = "-".join(str(b) for b, _ in self.cluster)
        return self.paths.data / f"kafka-cluster-{ports}.id"

    def _cluster_id(self) -> str:
        if self.size == 1:
            return base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        try:
            return self.cluster_id_file.read_text().strip()
        except FileNotFoundError:
            pass
        cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        self.cluster_id_file.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.cluster_id_file.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(cluster_id)
        tmp.replace(self.cluster_id_file)
        return cluster_id

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
        voters = ",".join(
            f"{node}@127.0.0.1:{controller}"
            for node, (_, controller) in enumerate(self.cluster, start=1)
        )
        text = string.Template(template).substitute(
            node_id=self.node_id,
            voters=voters,
            port=self.port,
            controller_port=self.controller_port,
            data_dir=self.data_dir,
            replication_factor=self.replication_factor,
            min_insync_replicas=self.min_insync_replicas,
        )
        self.config_file.parent.mkdir(parents=True, exist_ok=True)
        self.config_file.write_text(text)
        if not (self.data_dir / "meta.properties").exists():
            self.data_dir.mkdir(parents=True, exist_ok=True)
            cluster_id = self._cluster_id()
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
            f"-Xmx{self.heap}",
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
        if self.size == 1:
            run_coro(ensure_topics(f"127.0.0.1:{self.port}"))
        else:
            run_coro(self._ensure_cluster_topics(timeout_s=120.0))

    async def _ensure_cluster_topics(self, timeout_s: float) -> None:
        """Once every broker has registered (RF 3 needs three), create the missing topics."""
        from aiokafka.admin import AIOKafkaAdminClient

        from genwire.kafka import ensure_topics
        from genwire.topics import TOPIC_SPECS

        deadline = time.monotonic() + timeout_s
        brokers = 0
        while True:
            admin = AIOKafkaAdminClient(bootstrap_servers=self.bootstrap, request_timeout_ms=5000)
            try:
                await admin.start()
                if {s.name for s in TOPIC_SPECS} <= set(await admin.list_topics()):
                    return
                brokers = len((await admin.describe_cluster())["brokers"])
            except Exception:
                brokers = 0
            finally:
                await admin.close()
            if brokers >= self.size:
                break
            if time.monotonic() > deadline:
                raise StackError(
                    f"only {brokers} of {self.size} Kafka brokers registered within "
                    f"{timeout_s:.0f} s, so the topics (replication factor {self.size}) cannot be "
                    f"created; see the kafka-N logs in {self.paths.logs}"
                )
            await asyncio.sleep(0.5)
        await ensure_topics(
            self.bootstrap,
            timeout_s=timeout_s,
            replication_factor=self.replication_factor,
            min_insync_replicas=self.min_insync_replicas,
        )


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

    @property
    def data_dir(self) -> Path:
        """The RDB dump and the append-only files (``appendonlydir/``)."""
        return self.paths.data / "redis"

    def prepare(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)

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
            str(self.data_dir),
            "--daemonize",
            "no",
            # Durable: every write goes to the append-only file, fsynced once a second, so a
            # crash loses at most the last second; the RDB snapshot stays as a second copy.
            "--save",
            "300 10",
            "--appendonly",
            "yes",
            "--appendfsync",
            "everysec",
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
        env = {
            "LD_LIBRARY_PATH": f"{libs}:{current}" if current else libs,
            STUB_SITE_PACKAGES_ENV: str(site_packages()),
            # For the supervisor's after-restart step (`genwire default-model`): same home.
            "GENWIRE_HOME": str(self.paths.home),
        }
        if self.settings.model_repository is not None:
            env["GENWIRE_MODEL_REPOSITORY"] = str(self.settings.model_repository)
        return env

    def after_restart(self) -> tuple[str, list[str]] | None:
        # A restarted Triton (explicit model control) serves no model until it is loaded again.
        return (
            f"http://127.0.0.1:{self.http_port}/v2/health/ready",
            [
                sys.executable,
                "-m",
                "genwire_cli",
                "default-model",
                "--triton-http",
                f"127.0.0.1:{self.http_port}",
            ],
        )

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
        kafka_bootstrap: str | None = None,
        initial_offset: str = "earliest",
    ) -> None:
        super().__init__(paths, settings)
        self.initial_offset = initial_offset
        """Where a new consumer group starts on ``otlp_spans``: ``earliest`` (every retained
        span) or ``latest`` (a throwaway instance that must not read a day of backlog)."""
        self._ports = {
            "ui+query": JAEGER_UI_PORT,
            "query-grpc": JAEGER_QUERY_GRPC_PORT,
            "otlp-grpc": JAEGER_OTLP_GRPC_PORT,
            "otlp-http": JAEGER_OTLP_HTTP_PORT,
            "health": JAEGER_HEALTH_PORT,
            "metrics": JAEGER_METRICS_PORT,
            **(ports or {}),
        }
        self.consumer_group = group
        self.kafka_bootstrap = kafka_bootstrap or f"127.0.0.1:{kafka_port}"
        """Every broker, comma separated (the config's ``brokers`` splits the list)."""

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
            "JAEGER_KAFKA_BROKERS": self.kafka_bootstrap,
            "JAEGER_KAFKA_GROUP": self.consumer_group,
            "JAEGER_KAFKA_INITIAL_OFFSET": self.initial_offset,
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
    """One of genwire's own services: ``python -m genwire_<svc>`` from the venv.

    Instance ``index`` > 1 (``preprocess-2``…, ``genwire up --scale``) runs the same module with
    the same service name, so the consumer stages share their consumer group; only its ports
    (``GENWIRE_<SVC>_PORT``, the gateway's ``GENWIRE_GATEWAY_GRPC_PORT``), log and pid file differ.
    """

    phase = 4
    start_timeout_s = 180.0
    unready_restart_s = 600.0

    def __init__(
        self,
        paths: StackPaths,
        settings: CommonSettings,
        short: str,
        port: int,
        extra_ports: dict[str, int] | None = None,
        *,
        index: int = 1,
        kafka_bootstrap: str | None = None,
    ) -> None:
        super().__init__(paths, settings)
        self.short = short
        self.index = index
        self.name = instance_name(short, index)
        self.group = short
        self.aliases = (f"{short}-1",) if index == 1 else ()
        self.title = f"genwire {short} service" + (f" #{index}" if index > 1 else "")
        self.module = f"genwire_{short}"
        self.port = port
        self.extra_ports = extra_ports or {}
        self.kafka_bootstrap = kafka_bootstrap

    def ports(self) -> dict[str, int]:
        return {"http": self.port, **self.extra_ports}

    def endpoints(self) -> str:
        extra = " ".join(f"{role}:{port}" for role, port in self.extra_ports.items())
        return f"http://127.0.0.1:{self.port}/readyz {extra}".strip()

    def environment(self) -> dict[str, str]:
        # Services read GENWIRE_HOME like the stack, so both agree on the model repository.
        prefix = f"GENWIRE_{self.short.upper()}_"
        env = {
            "GENWIRE_HOME": str(self.paths.home),
            "PYTHONUNBUFFERED": "1",
            f"{prefix}PORT": str(self.port),
            **{f"{prefix}{role.upper()}_PORT": str(p) for role, p in self.extra_ports.items()},
        }
        if self.kafka_bootstrap is not None:
            # Every broker: a client that knows one only cannot start while that one is down.
            env["GENWIRE_KAFKA_BOOTSTRAP_SERVERS"] = self.kafka_bootstrap
            env[f"{prefix}KAFKA_BOOTSTRAP_SERVERS"] = self.kafka_bootstrap
        return env

    def command(self) -> list[str]:
        return [sys.executable, "-m", self.module]

    def healthy(self) -> bool:
        return self.readiness().ready

    def readiness(self) -> Readiness:
        """``/readyz``: 200 ready; 503 with ``{"ready", "failed", "reasons"}`` says why not."""
        return readyz(f"http://127.0.0.1:{self.port}/readyz")

    def unready_restart(self) -> tuple[str, float] | None:
        # A service gives up and exits by itself after its outage budget (default 300 s); one
        # that stays not-ready twice as long is stuck, and a restart is what is left to try.
        return f"http://127.0.0.1:{self.port}/readyz", self.unready_restart_s


def readyz(url: str, timeout_s: float = 2.0) -> Readiness:
    """A service's ``/readyz`` verdict, with the first reason it gives when not ready."""
    try:
        with httpx.Client(timeout=timeout_s, trust_env=False) as client:
            response = client.get(url)
    except httpx.HTTPError:
        return Readiness(False, answered=False)
    if response.status_code == 200:
        return Readiness(True, answered=True)
    reason: str | None = None
    try:
        body = response.json()
    except (ValueError, json.JSONDecodeError):
        body = None
    if isinstance(body, dict):
        reasons = body.get("reasons")
        if isinstance(reasons, list) and reasons:
            reason = str(reasons[0])
        elif body.get("failed"):
            reason = str(body["failed"])
    reason = one_line(reason or f"HTTP {response.status_code}")
    return Readiness(False, answered=True, reason=reason)


def one_line(text: str, limit: int = 200) -> str:
    """``text`` squeezed onto one line of at most ``limit`` characters."""
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


SERVICE_PORTS: dict[str, int] = {
    "preprocess": 8091,
    "inference": 8092,
    "postprocess": 8093,
    "monitor": 8090,
    "gateway": 8080,
}
"""Health/metrics HTTP port of each service's first instance (the gateway's also serves the
OpenAI-style API); instance n adds 100·(n−1) (:func:`genwire_stack.layout.instance_port`)."""
GATEWAY_GRPC_PORT = 50051

INFRA = ("kafka", "redis", "triton", "jaeger")
SERVICES = tuple(SERVICE_PORTS)


def kafka_nodes(
    paths: StackPaths,
    settings: CommonSettings,
    brokers: int = 1,
    ports: Sequence[tuple[int, int]] | None = None,
) -> list[Kafka]:
    """The Kafka node(s) of a stack: ``kafka`` alone, or ``kafka-1``… of a KRaft cluster.

    Node n listens on 9092 + 100·(n−1) (broker) and 9093 + 100·(n−1) (controller): 9092/9093,
    9192/9193, 9292/9293. ``ports`` replaces them (tests).
    """
    chosen = (
        list(ports)
        if ports is not None
        else [
            (instance_port(KAFKA_PORT, n), instance_port(KAFKA_CONTROLLER_PORT, n))
            for n in range(1, brokers + 1)
        ]
    )
    if len(chosen) == 1:
        return [Kafka(paths, settings, chosen[0][0], chosen[0][1])]
    # Three JVMs on a small machine: a smaller heap each.
    return [
        Kafka(paths, settings, broker, controller, node_id=n, cluster=chosen, heap="512m")
        for n, (broker, controller) in enumerate(chosen, start=1)
    ]


def build_components(
    paths: StackPaths, settings: CommonSettings, layout: StackLayout | None = None
) -> dict[str, Component]:
    """Every component of the stack by name, in start order.

    ``layout`` (default: the one recorded in the run dir, see :mod:`genwire_stack.layout`) says
    how many Kafka nodes and service instances there are.
    """
    shape = layout if layout is not None else read_layout(paths.run)
    nodes = kafka_nodes(paths, settings, shape.brokers)
    bootstrap = nodes[0].bootstrap
    components: list[Component] = [
        *nodes,
        Redis(paths, settings),
        Triton(paths, settings),
        Jaeger(paths, settings, kafka_bootstrap=bootstrap),
    ]
    for short, port in SERVICE_PORTS.items():
        for index in range(1, shape.instances(short) + 1):
            extra = (
                {"grpc": instance_port(GATEWAY_GRPC_PORT, index)} if short == "gateway" else None
            )
            components.append(
                Service(
                    paths,
                    settings,
                    short,
                    instance_port(port, index),
                    extra,
                    index=index,
                    kafka_bootstrap=bootstrap,
                )
            )
    return {c.name: c for c in components}
