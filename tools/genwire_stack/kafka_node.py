"""Apache Kafka (KRaft): how a node, or each node of a three-node cluster, is installed and run."""

from __future__ import annotations

import asyncio
import base64
import os
import string
import time
import uuid
from collections.abc import Sequence
from pathlib import Path

from genwire.kafka_security import client_options
from genwire.settings import CommonSettings
from genwire_stack import bootstrap
from genwire_stack.catalog import KAFKA_CONTROLLER_PORT, KAFKA_PORT, KAFKA_VERSION
from genwire_stack.component import Component
from genwire_stack.errors import StackError
from genwire_stack.health import free_port, run_coro, tcp_open
from genwire_stack.layout import instance_port
from genwire_stack.paths import StackPaths
from genwire_stack.secure import ADMIN, SecureStack, acl_bindings, create_acls


def new_cluster_id() -> str:
    """A KRaft cluster id as Kafka makes them (``Uuid.randomUuid``): 16 random bytes in URL-safe
    base64, never starting with "-", which Kafka's tools would read as an option (1 in 64
    draws: one CI run's secure stack failed its format so)."""
    while True:
        cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not cluster_id.startswith("-"):
            return cluster_id


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
        security: SecureStack | None = None,
    ) -> None:
        """``cluster``: (broker port, controller port) of every node, this one included, in
        node-id order; None: a single node. ``security``: SASL_SSL with SCRAM users and ACLs
        (``genwire up --secure``), its KRaft storage apart from the plaintext one's."""
        super().__init__(paths, settings)
        self.port = port
        self.controller_port = controller_port
        self.version = version
        self.node_id = node_id
        self.cluster = list(cluster) if cluster else [(port, controller_port)]
        self.heap = heap
        self.security = security
        self.group = "kafka"
        if len(self.cluster) > 1:
            self.name = f"kafka-{node_id}"
            self.title = f"Apache Kafka {version} (KRaft node {node_id} of {len(self.cluster)})"
        else:
            self.aliases = ("kafka-1",)
        if security is not None:
            self.title += ", SASL_SSL"

    @classmethod
    def beside(cls, stack: CommonSettings, settings: CommonSettings, heap: str = "512m") -> Kafka:
        """A private single-node broker next to the stack's (tests, measurements): free ports,
        its storage in ``settings.home``, and the jars the stack installed (a link: no second
        download). Started and stopped with ``ensure_up``/``down`` and ``{"kafka": it}``."""
        node = cls(
            StackPaths.from_settings(settings), settings, free_port(), free_port(), heap=heap
        )
        node.use_installed(stack)
        return node

    def use_installed(self, stack: CommonSettings) -> None:
        """Run on the jars the stack ``stack`` installed: a link, no second download."""
        self.dest.parent.mkdir(parents=True, exist_ok=True)
        self.dest.symlink_to(
            Kafka(StackPaths.from_settings(stack), stack, version=self.version).dest
        )

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
        # A secure node has its own storage: its SCRAM users are made when it is formatted.
        return self.paths.data / (f"{self.name}-secure" if self.security else self.name)

    def admin_settings(self) -> CommonSettings | None:
        """How the stack's own admin client connects (None: plaintext, as everyone)."""
        if self.security is None:
            return None
        return self.security.kafka_settings(ADMIN, self.bootstrap)

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
            return new_cluster_id()
        try:
            return self.cluster_id_file.read_text().strip()
        except FileNotFoundError:
            pass
        cluster_id = new_cluster_id()
        self.cluster_id_file.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.cluster_id_file.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(cluster_id)
        tmp.replace(self.cluster_id_file)
        return cluster_id

    def ports(self) -> dict[str, int]:
        jmx = self.jmx_port
        extra = {} if jmx is None or self.security is not None else {"jmx": jmx}
        return {"broker": self.port, "controller": self.controller_port, **extra}

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

    def properties(self) -> str:
        """This node's server.properties: deploy/native/kafka/server.properties filled in (a
        secure node's additions aside). deploy/compose's broker is checked against it."""
        template = (self.paths.deploy / "kafka" / "server.properties").read_text()
        voters = ",".join(
            f"{node}@127.0.0.1:{controller}"
            for node, (_, controller) in enumerate(self.cluster, start=1)
        )
        return string.Template(template).substitute(
            node_id=self.node_id,
            voters=voters,
            port=self.port,
            controller_port=self.controller_port,
            data_dir=self.data_dir,
            replication_factor=self.replication_factor,
            min_insync_replicas=self.min_insync_replicas,
        )

    def prepare(self) -> None:
        text = self.properties()
        if self.security is not None:
            self.security.ensure()
            text += self.security.kafka_properties(self.port, self.controller_port)
        self.config_file.parent.mkdir(parents=True, exist_ok=True)
        # 0600: a secure node's file holds its private key and the admin password.
        fd = os.open(self.config_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
        os.chmod(self.config_file, 0o600)
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
                    # One argument: an id starting with "-" (an older genwire made them) would
                    # read as an option and fail the format.
                    f"--cluster-id={cluster_id}",
                    "-c",
                    str(self.config_file),
                    *(self.security.scram_arguments() if self.security else []),
                ],
                what="formatting Kafka's KRaft storage",
                log=self.log,
                hint=f"remove {self.data_dir} and run `make up` again",
            )

    def _java_opts(self) -> list[str]:
        log4j = self.paths.deploy / "kafka" / "log4j.properties"
        return [f"-Dlog4j.configuration=file:{log4j}", "-Djava.awt.headless=true"]

    @property
    def jmx_port(self) -> int | None:
        """This node's JMX port (``GENWIRE_KAFKA_JMX_PORT`` + node id − 1), None: off."""
        base = self.settings.kafka_jmx_port
        return None if base is None else base + self.node_id - 1

    def _jmx_opts(self) -> list[str]:
        port = self.jmx_port
        if port is None:
            return []
        if self.security is not None:
            # Unauthenticated JMX can read and change the broker: not beside SASL and ACLs.
            raise StackError(
                "GENWIRE_KAFKA_JMX_PORT serves JMX without authentication; "
                "unset it for a secure stack (genwire up --secure)"
            )
        return [
            f"-Dcom.sun.management.jmxremote.port={port}",
            f"-Dcom.sun.management.jmxremote.rmi.port={port}",
            "-Dcom.sun.management.jmxremote.host=127.0.0.1",
            "-Djava.rmi.server.hostname=127.0.0.1",
            "-Dcom.sun.management.jmxremote.authenticate=false",
            "-Dcom.sun.management.jmxremote.ssl=false",
        ]

    def command(self) -> list[str]:
        return [
            self._java(),
            # A small heap suits a dev box: the page cache does Kafka's real caching.
            "-Xms256m",
            f"-Xmx{self.heap}",
            "-XX:+UseG1GC",
            "-XX:MaxGCPauseMillis=20",
            # As Kafka's own start script: a System.gc() (JMX's RMI runs one hourly) is a
            # concurrent cycle, not a full stop of the broker.
            "-XX:+ExplicitGCInvokesConcurrent",
            *self._java_opts(),
            *self._jmx_opts(),  # the broker only: not the storage format run by prepare()
            "-cp",
            str(self.dest / "libs" / "*"),
            "kafka.Kafka",
            str(self.config_file),
        ]

    def healthy(self) -> bool:
        if not tcp_open(self.port):
            return False
        return run_coro(
            _kafka_answers(f"127.0.0.1:{self.port}", self.admin_settings(), self.node_id)
        )

    def after_ready(self) -> None:
        from genwire.kafka import ensure_topics

        # Auto-create is off: every topic of genwire.topics.TOPIC_SPECS is created here.
        if self.size == 1:
            run_coro(ensure_topics(f"127.0.0.1:{self.port}", settings=self.admin_settings()))
        else:
            run_coro(self._ensure_cluster_topics(timeout_s=120.0))
        admin = self.admin_settings()
        if admin is not None:
            # Each service's user may read and write its own topics only (idempotent).
            run_coro(create_acls(admin, acl_bindings()))

    async def _ensure_cluster_topics(self, timeout_s: float) -> None:
        """Once every broker has registered (RF 3 needs three), create the missing topics."""
        from aiokafka.admin import AIOKafkaAdminClient

        from genwire.kafka import ensure_topics
        from genwire.topics import TOPIC_SPECS

        deadline = time.monotonic() + timeout_s
        brokers = 0
        while True:
            admin = AIOKafkaAdminClient(
                bootstrap_servers=self.bootstrap,
                request_timeout_ms=5000,
                **client_options(self.admin_settings()),
            )
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
            settings=self.admin_settings(),
        )


async def _kafka_answers(
    bootstrap_servers: str, settings: CommonSettings | None = None, node_id: int = 1
) -> bool:
    """True once the broker answers a metadata request itself, listing itself among the live
    brokers (registered and unfenced: the controller quorum is up).

    The bootstrap's request is the one sent to this broker; a later admin request may go to
    another broker of a cluster, and one broker's death made the others look down.
    """
    from aiokafka.admin import AIOKafkaAdminClient

    admin = AIOKafkaAdminClient(
        bootstrap_servers=bootstrap_servers, request_timeout_ms=3000, **client_options(settings)
    )
    try:
        await admin.start()  # raises unless this broker answered its metadata request
        # The answer of this broker (the bootstrap's): aiokafka keeps it on its client.
        return any(b.nodeId == node_id for b in admin._client.cluster.brokers())
    except Exception:
        return False
    finally:
        await admin.close()


def kafka_nodes(
    paths: StackPaths,
    settings: CommonSettings,
    brokers: int = 1,
    ports: Sequence[tuple[int, int]] | None = None,
    security: SecureStack | None = None,
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
        return [Kafka(paths, settings, chosen[0][0], chosen[0][1], security=security)]
    # Three JVMs on a small machine: a smaller heap each.
    return [
        Kafka(
            paths,
            settings,
            broker,
            controller,
            node_id=n,
            cluster=chosen,
            heap="512m",
            security=security,
        )
        for n, (broker, controller) in enumerate(chosen, start=1)
    ]
