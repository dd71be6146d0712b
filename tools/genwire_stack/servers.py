"""How Redis, Triton, Jaeger and genwire's own services are installed, started and probed."""

from __future__ import annotations

import importlib
import os
import shutil
import sys
from functools import cache
from pathlib import Path

from genwire import triton_admin
from genwire.settings import CommonSettings, ServiceSettings
from genwire_stack import bootstrap
from genwire_stack.catalog import (
    JAEGER_HEALTH_PORT,
    JAEGER_METRICS_PORT,
    JAEGER_MODULE,
    JAEGER_MODULE_VERSION,
    JAEGER_OTLP_GRPC_PORT,
    JAEGER_OTLP_HTTP_PORT,
    JAEGER_QUERY_GRPC_PORT,
    JAEGER_UI_PORT,
    JAEGER_VERSION,
    KAFKA_PORT,
    PYTRITON_WHEEL,
    REDIS_PORT,
    STUB_SITE_PACKAGES_ENV,
    TRITON_GRPC_PORT,
    TRITON_HTTP_PORT,
    TRITON_METRICS_PORT,
    TRITON_SERVER_VERSION,
)
from genwire_stack.component import Component, Readiness, readyz
from genwire_stack.default_model import DEFAULT_MODEL
from genwire_stack.errors import StackError
from genwire_stack.health import free_port, http_status, redis_ping
from genwire_stack.layout import instance_name
from genwire_stack.paths import StackPaths, site_packages
from genwire_stack.secure import SecureStack, secure_redis_ping


class Redis(Component):
    """Redis from Debian's ``redis-server`` package; an already-running Redis is reused."""

    name = "redis"
    title = "Redis"
    phase = 1
    start_timeout_s = 30.0
    adoptable = True

    def __init__(
        self,
        paths: StackPaths,
        settings: CommonSettings,
        port: int = REDIS_PORT,
        *,
        security: SecureStack | None = None,
    ) -> None:
        super().__init__(paths, settings)
        self.port = port
        self.security = security
        if security is not None:
            # TLS only, with a password; a stranger's plaintext Redis is never reused.
            self.title = "Redis (TLS, password)"
            self.adoptable = False

    @property
    def url(self) -> str:
        """What the services connect to."""
        if self.security is not None:
            return self.security.redis_url(self.port)
        return f"redis://127.0.0.1:{self.port}/0"

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

    @property
    def config_file(self) -> Path:
        """The secure Redis's redis.conf (0600: it holds the password)."""
        return self.paths.conf / "redis.conf"

    def prepare(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if self.security is not None:
            self.security.ensure()
            self.config_file.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.config_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as handle:
                handle.write(self.security.redis_config(self.port, self.data_dir))
            # The admin tools (genwire keys, dlq, model) reach this Redis with these.
            self.security.write_env("admin", {"GENWIRE_REDIS_URL": self.url})

    def command(self) -> list[str]:
        binary = self._binary()
        if binary is None:
            raise StackError("redis-server not found: apt-get install redis-server")
        if self.security is not None:
            # The password stays out of argv (ps shows argv to every user).
            return [binary, str(self.config_file)]
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
            # crash loses at most the last second. No RDB snapshot schedule: a restart reads
            # the append-only file, and a snapshot every few minutes would write every live key
            # again each time (docs/reliability.md, "Redis's persistence").
            "--save",
            "",
            "--appendonly",
            "yes",
            "--appendfsync",
            "everysec",
            "--logfile",
            "",
        ]

    def healthy(self) -> bool:
        if self.security is not None:
            return secure_redis_ping(self.port, self.security)
        return redis_ping(self.port)


TRITON_ADMIN_CALLERS = ("gateway", "inference")
"""Services that call Triton's restricted APIs (the model list; model configs and states):
only they get the admin header's secret in a secure stack."""


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
        security: SecureStack | None = None,
    ) -> None:
        super().__init__(paths, settings)
        self.security = security
        """Secure stack: the repository and model-config APIs need the admin header."""
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
        if self.security is not None:
            env |= self.security.triton_env()  # the after-restart load sends the header
        return env

    def nice(self) -> int:
        return self.settings.triton_nice

    def after_restart(self) -> tuple[str, list[str]] | None:
        # A restarted Triton loads the default model itself (restart_arguments()); this step
        # builds nothing (a crash must not roll out runtime code changed on disk since) and
        # loads again what `genwire model load` served (explicit model control forgets it).
        return (
            f"http://127.0.0.1:{self.http_port}/v2/health/ready",
            [
                sys.executable,
                "-m",
                "genwire_cli",
                "default-model",
                "--restore",
                "--triton-http",
                f"127.0.0.1:{self.http_port}",
            ],
        )

    def restart_arguments(self) -> list[str]:
        # A restart (not `genwire up`'s start, which loads the model outside the stack's lock
        # and only when asked) loads the default model before the server answers: requests
        # flow again without waiting for the step above, whose Python start-up and policy
        # read took 3 s on two busy cores. It serves what config.pbtxt names, as before the
        # crash. A model failing to load must not keep the server down (the step then brings
        # it up as `genwire up` does).
        return ["--load-model", DEFAULT_MODEL, "--exit-on-error", "false"]

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
            # Models are loaded and unloaded through the repository API: the first start loads
            # nothing (genwire up loads the default model), so a broken model never keeps the
            # server from starting; a restart adds restart_arguments().
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
            # Secure stack: loading, unloading and model configs need the admin header (only
            # the stack's own callers have it: genwire.triton_admin). The secret is in argv
            # (tritonserver reads no config file): docs/security.md says what that covers.
            *(
                triton_admin.restriction_arguments(self.security.triton_admin_key)
                if self.security is not None
                else []
            ),
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
        security: SecureStack | None = None,
    ) -> None:
        super().__init__(paths, settings)
        self.security = security
        """Secure stack: its kafka receiver reads as the SCRAM user ``jaeger`` over SASL_SSL."""
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

    @classmethod
    def beside(
        cls, stack: CommonSettings, settings: CommonSettings, *, group: str, initial_offset: str
    ) -> Jaeger:
        """A second Jaeger next to the stack's (tests, measurements): free ports, the data of
        ``settings.home``, its own consumer group on the stack's Kafka, and the binary the
        stack built (a link: no second build)."""
        real = cls(StackPaths.from_settings(stack), stack)
        jaeger = cls(
            StackPaths.from_settings(settings),
            settings,
            ports={role: free_port() for role in real.ports()},
            group=group,
            kafka_bootstrap=stack.kafka_bootstrap_servers,
            initial_offset=initial_offset,
        )
        jaeger.dest.parent.mkdir(parents=True, exist_ok=True)
        jaeger.dest.symlink_to(real.dest)
        return jaeger

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
            "JAEGER_SPAN_TTL": self.settings.jaeger_span_ttl,
            # The Go runtime's own variable: a soft limit its garbage collector paces against.
            "GOMEMLIMIT": self.settings.jaeger_memory_limit,
            **(
                {
                    "JAEGER_KAFKA_USERNAME": "jaeger",
                    "JAEGER_KAFKA_PASSWORD": self.security.password("jaeger"),
                    "JAEGER_KAFKA_CA_FILE": str(self.security.ca),
                }
                if self.security is not None
                else {}
            ),
        }

    def nice(self) -> int:
        return self.settings.jaeger_nice

    def command(self) -> list[str]:
        configs = [self.paths.deploy / "jaeger" / "config.yaml"]
        if self.security is not None:
            configs.append(self.paths.deploy / "jaeger" / "kafka-secure.yaml")
        return [str(self.binary), *(arg for c in configs for arg in ("--config", str(c)))]

    def healthy(self) -> bool:
        return http_status(f"http://127.0.0.1:{self.ui_port}/api/services") == 200


@cache
def settings_class(short: str) -> type[ServiceSettings] | None:
    """Service ``short``'s settings class; None for a module that is not a genwire service."""
    try:
        module = importlib.import_module(f"genwire_{short}.config")
    except ModuleNotFoundError as exc:
        if exc.name not in (f"genwire_{short}", f"genwire_{short}.config"):
            raise  # a service whose settings cannot load: not one that has none
        return None
    for value in vars(module).values():
        if (
            isinstance(value, type)
            and issubclass(value, ServiceSettings)
            and value.__module__ == module.__name__
        ):
            return value
    return None


def refused_settings(short: str) -> frozenset[str]:
    """The settings service ``short`` refuses under its own prefix (its settings class's
    ``not_read``); none for a module that is not a genwire service."""
    cls = settings_class(short)
    return cls.not_read if cls is not None else frozenset()


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
        security: SecureStack | None = None,
        redis_url: str | None = None,
    ) -> None:
        """``security``: connect as its own SCRAM user over SASL_SSL, to Redis over TLS with
        the password (``redis_url``), and (the gateway) serve HTTP and gRPC over TLS."""
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
        self.security = security
        self.redis_url = redis_url

    @property
    def tls(self) -> bool:
        """Whether its HTTP port serves TLS (the gateway of a secure stack)."""
        return self.security is not None and self.short == "gateway"

    @property
    def scheme(self) -> str:
        return "https" if self.tls else "http"

    def ports(self) -> dict[str, int]:
        return {"http": self.port, **self.extra_ports}

    def endpoints(self) -> str:
        extra = " ".join(f"{role}:{port}" for role, port in self.extra_ports.items())
        return f"{self.scheme}://127.0.0.1:{self.port}/readyz {extra}".strip()

    def environment(self) -> dict[str, str]:
        # Services read the stack's home, so both agree on the model repository.
        prefix = f"GENWIRE_{self.short.upper()}_"
        env = {
            "GENWIRE_HOME": str(self.paths.home),
            f"{prefix}HOME": str(self.paths.home),
            "PYTHONUNBUFFERED": "1",
            f"{prefix}PORT": str(self.port),
            **{f"{prefix}{role.upper()}_PORT": str(p) for role, p in self.extra_ports.items()},
        }
        if self.kafka_bootstrap is not None:
            # Every broker: a client that knows one only cannot start while that one is down.
            env["GENWIRE_KAFKA_BOOTSTRAP_SERVERS"] = self.kafka_bootstrap
            env[f"{prefix}KAFKA_BOOTSTRAP_SERVERS"] = self.kafka_bootstrap
        if self.redis_url is not None:
            env["GENWIRE_REDIS_URL"] = self.redis_url
            env[f"{prefix}REDIS_URL"] = self.redis_url
        if self.settings.model_repository is not None:
            env["GENWIRE_MODEL_REPOSITORY"] = str(self.settings.model_repository)
            env[f"{prefix}MODEL_REPOSITORY"] = str(self.settings.model_repository)
        if f"{prefix}KAFKA_CLIENT" not in os.environ:  # a service's own variable wins
            # GENWIRE_KAFKA_CLIENT=librdkafka `genwire up`: every service's data path on it
            env[f"{prefix}KAFKA_CLIENT"] = self.settings.kafka_client
        if self.security is not None:
            # Its own SCRAM user: the ACLs of genwire_stack.secure.ACCESS[short] apply.
            for env_prefix in ("GENWIRE_", prefix):
                env |= self.security.kafka_env(self.short, env_prefix)
                if self.short in TRITON_ADMIN_CALLERS:
                    env |= self.security.triton_env(env_prefix)
            if self.tls:
                env |= self.security.gateway_env(prefix)
        # Both names are set so that the stack's value wins over a user's own variable (but
        # KAFKA_CLIENT's); a service refuses its own name for a setting it does not read
        # (Redis, the repository, the home in the monitor).
        refused = {f"{prefix}{name.upper()}" for name in refused_settings(self.short)}
        return {k: v for k, v in env.items() if k not in refused}

    def command(self) -> list[str]:
        return [sys.executable, "-m", self.module]

    def healthy(self) -> bool:
        return self.readiness().ready

    def readiness(self) -> Readiness:
        """``/readyz``: 200 ready; 503 with ``{"ready", "failed", "reasons"}`` says why not."""
        if self.tls and self.security is not None:
            # The stack's probe is a client like any other: the CA, and a certificate (mTLS).
            return readyz(
                f"https://127.0.0.1:{self.port}/readyz",
                verify=self.security.client_context(certificate=self.security.mtls),
            )
        return readyz(f"http://127.0.0.1:{self.port}/readyz")

    def unready_restart(self) -> tuple[str, float] | None:
        # A service gives up and exits by itself after its outage budget (default 300 s); one
        # that stays not-ready twice as long is stuck, and a restart is what is left to try.
        return f"{self.scheme}://127.0.0.1:{self.port}/readyz", self.unready_restart_s

    def probe_tls(self) -> tuple[str, str | None, str | None] | None:
        if not self.tls or self.security is None:
            return None
        # The supervisor is a client like any other: the local CA, and (mTLS) the client cert.
        if self.security.mtls:
            files = self.security
            return str(files.ca), str(files.file("client.pem")), str(files.file("client-key.pem"))
        return str(self.security.ca), None, None
