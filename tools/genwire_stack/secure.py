"""``genwire up --secure``: a local CA, certificates, SCRAM users and ACLs for the native stack.

Everything lives in ``<GENWIRE_HOME>/secure`` (mode 0700, files 0600), made once and reused:

- ``ca.pem`` / ``ca-key.pem``: the local certificate authority (EC P-256, made with the
  ``cryptography`` package; no openssl CLI needed);
- ``kafka-broker.pem`` / ``kafka-broker-key.pem``: the brokers' certificate (``CN=genwire-kafka-
  broker``), also their client certificate on the KRaft controller listener (mutual TLS there);
- ``server.pem`` / ``server-key.pem``: Redis's and the gateway's certificate (SAN 127.0.0.1,
  ::1, localhost);
- ``client.pem`` / ``client-key.pem``: a client certificate (``CN=genwire-client``) for callers
  of a gateway that requires one (``--secure mtls``) and the stack's own probes;
- ``credentials.json``: the SCRAM password of every Kafka principal and the Redis password;
- ``triton-admin-key``: the secret header value that opens Triton's repository and model-config
  APIs (genwire.triton_admin; Triton refuses those calls without it);
- ``env/<principal>.env``: the ``GENWIRE_KAFKA_*`` variables of each principal (``set -a; .
  env/bench.env`` before ``genwire bench`` against a secure stack); ``admin.env`` also has
  ``GENWIRE_REDIS_URL`` (``genwire keys``, ``genwire dlq``, ``genwire model``).

The broker runs SASL_SSL with SCRAM-SHA-512 and the StandardAuthorizer: every service has its
own user, and :data:`ACCESS` lists what each may read and write; ``admin`` (the stack itself:
topics, ACLs, ``genwire dlq``) is the only super user besides the brokers' certificate.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import json
import os
import secrets
import shlex
import ssl
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from genwire import triton_admin
from genwire.settings import CommonSettings
from genwire.tls import client_context
from genwire.topics import Topic
from genwire_stack.errors import StackError
from genwire_stack.layout import SecureMode
from genwire_stack.paths import StackPaths

if TYPE_CHECKING:  # imported where used: `genwire up` without --secure never loads it
    from cryptography import x509

SCRAM = "SCRAM-SHA-512"
ADMIN = "admin"
BROKER_CN = "genwire-kafka-broker"
CLIENT_CN = "genwire-client"
CA_DAYS = 825
LEAF_DAYS = 397
RENEW_BEFORE = dt.timedelta(days=30)
"""A certificate that expires sooner than this is made again when ``genwire up`` next starts a
component of the secure stack (the CA with every leaf, as they are signed by it, and only while
nothing of the stack runs): :meth:`SecureStack.ensure` with ``renew``."""


@dataclass(frozen=True)
class Access:
    """What one Kafka principal may do: topics it reads, topics it writes, consumer groups
    (prefixes) it joins, and what it may only describe (the monitor's lag polling)."""

    reads: tuple[str, ...] = ()
    writes: tuple[str, ...] = ()
    groups: tuple[str, ...] = ()
    describe_topic_prefixes: tuple[str, ...] = ()
    describe_group_prefixes: tuple[str, ...] = ()


_STAGE_FAILURES = (Topic.RETRY, Topic.DLQ)
"""Every consuming stage parks records on genwire.retry (and reads them back) and
dead-letters poison on genwire.dlq; nobody but admin reads the DLQ. Its replayer republishes a
parked record onto the stage's own input topic, so each stage also writes the topic it reads."""

ACCESS: dict[str, Access] = {
    "gateway": Access(
        reads=(Topic.REPLIES,),
        writes=(Topic.REQUESTS, Topic.CONTROL, Topic.FEEDBACK, Topic.USAGE, Topic.SPANS),
        groups=("genwire-gateway",),
    ),
    "preprocess": Access(
        reads=(Topic.REQUESTS, Topic.RETRY, Topic.CONFIG),
        # A rejected request's error chunk goes to postprocess like any final chunk.
        writes=(
            Topic.PREPARED,
            Topic.GENERATIONS,
            Topic.REQUESTS,
            *_STAGE_FAILURES,
            Topic.SPANS,
        ),
        groups=("genwire-preprocess",),
    ),
    "inference": Access(
        reads=(Topic.PREPARED, Topic.CONTROL, Topic.RETRY),
        writes=(Topic.GENERATIONS, Topic.PREPARED, *_STAGE_FAILURES, Topic.SPANS),
        groups=("genwire-inference",),
    ),
    "postprocess": Access(
        reads=(Topic.GENERATIONS, Topic.RETRY),
        writes=(
            Topic.TOKENS,
            Topic.RESULTS,
            Topic.REPLIES,
            Topic.SHADOW,
            Topic.USAGE,  # the usage of requests produced straight to Kafka (docs/security.md)
            Topic.GENERATIONS,
            *_STAGE_FAILURES,
            Topic.SPANS,
        ),
        groups=("genwire-postprocess",),
    ),
    "monitor": Access(
        reads=(
            Topic.SPANS,
            Topic.ALERT_STATE,
            Topic.CONFIG,
            Topic.FEEDBACK,
            Topic.USAGE,
            Topic.SHADOW,
        ),
        writes=(Topic.ALERTS, Topic.ALERT_STATE, Topic.CONFIG),
        groups=("genwire-monitor",),
        # Lag and stalls: the stages' committed offsets and their topics' end offsets.
        describe_topic_prefixes=("genwire.",),
        describe_group_prefixes=("genwire-",),
    ),
    "jaeger": Access(reads=(Topic.SPANS,), groups=("jaeger",)),
    "bench": Access(
        # genwire.config: which version a model's policy serves (genwire_bench.served)
        reads=(Topic.RESULTS, Topic.TOKENS, Topic.REPLIES, Topic.CONFIG),
        writes=(Topic.REQUESTS, Topic.CONTROL),
        groups=("genwire-bench",),
    ),
}
"""Kafka ACLs per principal (one SCRAM user per service, plus ``jaeger`` and ``bench``)."""

PRINCIPALS: tuple[str, ...] = (ADMIN, *ACCESS)

# Kafka's ACL protocol codes (org.apache.kafka.common.acl / resource).
_TOPIC, _GROUP = 2, 3
_LITERAL, _PREFIXED = 3, 4
_READ, _WRITE, _DESCRIBE = 3, 4, 8
_ALLOW = 3


def acl_bindings(access: Mapping[str, Access] = ACCESS) -> list[tuple[int, str, int, str, int]]:
    """``(resource type, name, pattern type, principal, operation)`` of every ACL to create."""
    out: list[tuple[int, str, int, str, int]] = []
    for user, rules in access.items():
        principal = f"User:{user}"
        out += [(_TOPIC, str(t), _LITERAL, principal, _READ) for t in dict.fromkeys(rules.reads)]
        out += [(_TOPIC, str(t), _LITERAL, principal, _WRITE) for t in dict.fromkeys(rules.writes)]
        out += [(_GROUP, g, _PREFIXED, principal, _READ) for g in rules.groups]
        out += [(_TOPIC, p, _PREFIXED, principal, _DESCRIBE) for p in rules.describe_topic_prefixes]
        out += [(_GROUP, p, _PREFIXED, principal, _DESCRIBE) for p in rules.describe_group_prefixes]
    return out


@dataclass
class SecureStack:
    """The secure material of one genwire home and what each component needs of it."""

    paths: StackPaths
    mode: SecureMode = "tls"
    _credentials: dict[str, Any] = field(default_factory=dict, repr=False)

    @property
    def root(self) -> Path:
        """``<home>/secure``."""
        return self.paths.home / "secure"

    @property
    def mtls(self) -> bool:
        """Whether the gateway requires client certificates."""
        return self.mode == "mtls"

    def file(self, name: str) -> Path:
        """One file of the material: ``ca.pem``, ``server-key.pem``…"""
        return self.root / name

    @property
    def ca(self) -> Path:
        """The local CA's certificate: what every client trusts."""
        return self.file("ca.pem")

    def ensure(self, *, renew: bool = False, running: Sequence[str] = ()) -> None:
        """Make the CA, certificates and passwords that are missing (idempotent); what exists
        is left as it is. Any process may call it (a lookup of a password, a probe, a tool).

        ``renew`` (the stack's start alone, under the stack lock: ``genwire_stack.manager``)
        also makes again a certificate near its end (:data:`RENEW_BEFORE`) or one another CA
        signed. The CA is not made again while ``running`` (the components of the stack alive
        now, which trust it) is not empty: it says to stop the stack first, and refuses to go
        on with a CA that has expired.
        """
        self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(self.root, 0o700)
        _ensure_certificates(self.root, renew=renew, running=running)
        path = self.file("credentials.json")
        fresh = not path.exists()
        if fresh:
            creds = {
                "kafka": {user: secrets.token_hex(24) for user in PRINCIPALS},
                "redis": secrets.token_hex(24),
            }
            _write_private(path, json.dumps(creds, indent=2) + "\n")
        creds = json.loads(path.read_text())
        missing = [u for u in PRINCIPALS if u not in creds.get("kafka", {})]
        if missing:
            raise StackError(
                f"{path} has no password for {', '.join(missing)}: remove {self.root} and the "
                f"secure Kafka data ({self.paths.data}/kafka*-secure), then `genwire up --secure`"
            )
        self._credentials = creds
        triton_key = triton_admin.key_path(self.paths.home)
        if not triton_key.exists():  # (material made before Triton was restricted gets one)
            _write_private(triton_key, secrets.token_hex(24) + "\n")
        for user in PRINCIPALS:
            if fresh or not (self.root / "env" / f"{user}.env").exists():
                self.write_env(user)  # (Redis's start adds its URL to admin.env: kept)

    def write_env(self, user: str, extra: Mapping[str, str] | None = None) -> Path:
        """``env/<user>.env``: the ``GENWIRE_KAFKA_*`` variables of ``user`` (and ``extra``)."""
        env_dir = self.root / "env"
        env_dir.mkdir(mode=0o700, exist_ok=True)
        path = env_dir / f"{user}.env"
        values = {**self.kafka_env(user), **(extra or {})}
        # Shell syntax (``set -a; . admin.env``): the Redis URL has ``&`` and ``?`` in it.
        _write_private(path, "".join(f"{k}={shlex.quote(v)}\n" for k, v in values.items()))
        return path

    def _creds(self) -> dict[str, Any]:
        if not self._credentials:
            self.ensure()  # a lookup: makes what is missing, never renews (replaces) a file
        return self._credentials

    def password(self, user: str) -> str:
        """The SCRAM password of Kafka principal ``user``."""
        return str(self._creds()["kafka"][user])

    @property
    def triton_admin_key(self) -> str:
        """The value of Triton's admin header (genwire.triton_admin.HEADER)."""
        path = triton_admin.key_path(self.paths.home)
        if not path.exists():
            self.ensure()
        return path.read_text().strip()

    def triton_env(self, prefix: str = "GENWIRE_") -> dict[str, str]:
        """``<prefix>TRITON_ADMIN_KEY``: what a caller of Triton's repository API sends."""
        return {f"{prefix}TRITON_ADMIN_KEY": self.triton_admin_key}

    @property
    def redis_password(self) -> str:
        """Redis's ``requirepass``."""
        return str(self._creds()["redis"])

    def kafka_env(self, user: str, prefix: str = "GENWIRE_") -> dict[str, str]:
        """The ``<prefix>KAFKA_*`` variables that make a client connect as ``user``."""
        return {
            f"{prefix}KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
            f"{prefix}KAFKA_SASL_MECHANISM": SCRAM,
            f"{prefix}KAFKA_SASL_USERNAME": user,
            f"{prefix}KAFKA_SASL_PASSWORD": self.password(user),
            f"{prefix}KAFKA_SSL_CAFILE": str(self.ca),
        }

    def kafka_settings(self, user: str, bootstrap: str) -> CommonSettings:
        """Settings of a client connecting as ``user`` (the stack itself: ``admin``)."""
        return CommonSettings.model_validate(
            {
                "kafka_bootstrap_servers": bootstrap,
                "kafka_security_protocol": "SASL_SSL",
                "kafka_sasl_mechanism": SCRAM,
                "kafka_sasl_username": user,
                "kafka_sasl_password": self.password(user),
                "kafka_ssl_cafile": self.ca,
            }
        )

    def redis_url(self, port: int) -> str:
        """``rediss://`` with the password and the CA to check Redis's certificate against."""
        return (
            f"rediss://:{self.redis_password}@127.0.0.1:{port}/0"
            f"?ssl_ca_certs={self.ca}&ssl_cert_reqs=required"
        )

    def client_context(self, certificate: bool = True) -> ssl.SSLContext:
        """A client TLS context trusting the local CA (presenting ``client.pem`` if asked)."""
        if certificate:
            return client_context(self.ca, self.file("client.pem"), self.file("client-key.pem"))
        return client_context(self.ca)

    def gateway_env(self, prefix: str) -> dict[str, str]:
        """TLS on the gateway's HTTP and gRPC ports; with ``mtls`` client certificates too."""
        env = {
            f"{prefix}TLS_CERTFILE": str(self.file("server.pem")),
            f"{prefix}TLS_KEYFILE": str(self.file("server-key.pem")),
        }
        if self.mtls:
            env[f"{prefix}TLS_CLIENT_CA_FILE"] = str(self.ca)
        return env

    def kafka_properties(self, port: int, controller_port: int) -> str:
        """What the secure broker adds to (and overrides in) the plain server.properties."""
        key = _properties_value(self.file("kafka-broker-key.pem").read_text())
        chain = _properties_value(self.file("kafka-broker.pem").read_text())
        admin = self.password(ADMIN)
        return "\n".join(
            [
                "",
                "# --- genwire up --secure (genwire_stack.secure) ---",
                f"listeners=SASL_SSL://127.0.0.1:{port},CONTROLLER://127.0.0.1:{controller_port}",
                f"advertised.listeners=SASL_SSL://127.0.0.1:{port}",
                "listener.security.protocol.map=SASL_SSL:SASL_SSL,CONTROLLER:SSL",
                "inter.broker.listener.name=SASL_SSL",
                f"sasl.enabled.mechanisms={SCRAM}",
                f"sasl.mechanism.inter.broker.protocol={SCRAM}",
                f"listener.name.sasl_ssl.{SCRAM.lower()}.sasl.jaas.config="
                "org.apache.kafka.common.security.scram.ScramLoginModule required "
                f'username="{ADMIN}" password="{admin}";',
                "ssl.keystore.type=PEM",
                f"ssl.keystore.certificate.chain={chain}",
                f"ssl.keystore.key={key}",
                "ssl.truststore.type=PEM",
                f"ssl.truststore.location={self.ca}",
                "ssl.endpoint.identification.algorithm=https",
                "ssl.enabled.protocols=TLSv1.3,TLSv1.2",
                # The controller listener: TLS both ways, only the brokers' certificate.
                "listener.name.controller.ssl.client.auth=required",
                "authorizer.class.name=org.apache.kafka.metadata.authorizer.StandardAuthorizer",
                f"super.users=User:{ADMIN};User:CN={BROKER_CN}",
                "allow.everyone.if.no.acl.found=false",
                "",
            ]
        )

    def scram_arguments(self) -> list[str]:
        """``kafka-storage format`` arguments that create every SCRAM user with the storage."""
        out: list[str] = []
        for user in PRINCIPALS:
            out += ["--add-scram", f"{SCRAM}=[name={user},password={self.password(user)}]"]
        return out

    def redis_config(self, port: int, data_dir: Path) -> str:
        """redis.conf of the secure Redis: TLS only (no plain port), a password."""
        return "\n".join(
            [
                "bind 127.0.0.1",
                "port 0",
                f"tls-port {port}",
                f"tls-cert-file {self.file('server.pem')}",
                f"tls-key-file {self.file('server-key.pem')}",
                f"tls-ca-cert-file {self.ca}",
                # Clients prove who they are with the password; TLS proves the server.
                "tls-auth-clients no",
                f"requirepass {self.redis_password}",
                f"dir {data_dir}",
                "daemonize no",
                'save ""',  # the append-only file alone, as the plaintext Redis
                "appendonly yes",
                "appendfsync everysec",
                'logfile ""',
                "",
            ]
        )


def secure_redis_ping(port: int, stack: SecureStack, timeout_s: float = 1.0) -> bool:
    """True if the TLS Redis on ``port`` accepts the password and answers PING."""
    import socket

    try:
        context = stack.client_context(certificate=False)
        password = stack.redis_password.encode()
        with (
            socket.create_connection(("127.0.0.1", port), timeout=timeout_s) as raw,
            context.wrap_socket(raw, server_hostname="127.0.0.1") as sock,
        ):
            sock.sendall(
                b"*2\r\n$4\r\nAUTH\r\n$%d\r\n%s\r\n*1\r\n$4\r\nPING\r\n" % (len(password), password)
            )
            answer = b""
            while answer.count(b"\r\n") < 2:
                chunk = sock.recv(64)
                if not chunk:
                    break
                answer += chunk
            return answer.startswith(b"+OK\r\n+PONG")
    except (OSError, ssl.SSLError):
        return False


async def create_acls(
    settings: CommonSettings, bindings: Iterable[tuple[int, str, int, str, int]]
) -> int:
    """Create ``bindings`` (idempotent: an ACL that exists is left as it is) with one
    CreateAcls request as ``settings``' user (admin); returns how many were sent."""
    from aiokafka.admin import AIOKafkaAdminClient
    from aiokafka.protocol.admin import CreateAclsRequest_v1
    from aiokafka.protocol.api import Request

    from genwire.kafka_security import client_options

    creations = [
        (rtype, name, pattern, principal, "*", operation, _ALLOW)
        for rtype, name, pattern, principal, operation in bindings
    ]

    class _CreateAcls(Request[CreateAclsRequest_v1]):  # type: ignore[misc]
        API_KEY = 30

        def build(self, request_struct_class: type[CreateAclsRequest_v1]) -> CreateAclsRequest_v1:
            return CreateAclsRequest_v1(creations)

    admin = AIOKafkaAdminClient(
        bootstrap_servers=settings.kafka_bootstrap_servers,
        request_timeout_ms=10000,
        **client_options(settings),
    )
    await admin.start()
    try:
        response: Any = await admin._send_request(_CreateAcls())  # no public API for CreateAcls
    finally:
        await admin.close()
    failures = [(code, msg) for code, msg in response.creation_responses if code != 0]
    if failures:
        raise StackError(f"creating Kafka ACLs failed: {failures[:3]}")
    return len(creations)


# ---- certificates ------------------------------------------------------------------------------


def _write_private(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)
    tmp.replace(path)


def _properties_value(pem: str) -> str:
    r"""A PEM block as one ``.properties`` value (``\n`` escapes: java.util.Properties)."""
    return "\\n".join(line.strip() for line in pem.strip().splitlines())


def _ensure_certificates(root: Path, *, renew: bool = False, running: Sequence[str] = ()) -> None:
    """The CA and three leaf certificates, each made when missing (every leaf with a new CA).
    ``renew``: also again when one nears its end (:data:`RENEW_BEFORE`), the CA only while
    nothing in ``running`` trusts it, and a leaf another CA signed (:meth:`SecureStack.ensure`)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = dt.datetime.now(dt.UTC)

    def pem_key(key: ec.EllipticCurvePrivateKey) -> str:
        return key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ).decode()

    def name(cn: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])

    ca_cert_path, ca_key_path = root / "ca.pem", root / "ca-key.pem"
    fresh_ca = not (ca_cert_path.exists() and ca_key_path.exists())
    if not fresh_ca and renew:
        old_ca = x509.load_pem_x509_certificate(ca_cert_path.read_bytes())
        ending = _ends_soon(old_ca, now)
        if ending is not None and running:
            # Every component trusts the CA it started with: a new one now would split the
            # stack between two CAs that refuse each other's certificates.
            held = (
                f"the local CA ({ca_cert_path}) {ending}; it is made again only while none of "
                f"the secure stack runs ({', '.join(running)} still running with it): `make down`, "
                "then `make up SECURE=1`"
            )
            if old_ca.not_valid_after_utc <= now:
                raise StackError(held)
            _say(held)
        elif ending is not None:
            fresh_ca = True
            _say(
                f"the local CA ({ca_cert_path}) {ending}: made a new one and new certificates "
                "signed by it (nothing of the secure stack runs: each component trusts it from "
                "its start)"
            )
    if fresh_ca:
        ca_key = ec.generate_private_key(ec.SECP256R1())
        ca_cert = (
            x509.CertificateBuilder()
            .subject_name(name("genwire local CA"))
            .issuer_name(name("genwire local CA"))
            .public_key(ca_key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=CA_DAYS))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(
                x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False
            )
            .sign(ca_key, hashes.SHA256())
        )
        _write_private(ca_key_path, pem_key(ca_key))
        _write_private(ca_cert_path, ca_cert.public_bytes(serialization.Encoding.PEM).decode())
    ca_key_any = serialization.load_pem_private_key(ca_key_path.read_bytes(), password=None)
    assert isinstance(ca_key_any, ec.EllipticCurvePrivateKey)
    ca_cert = x509.load_pem_x509_certificate(ca_cert_path.read_bytes())

    leaves = {
        "kafka-broker": (
            BROKER_CN,
            [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH],
        ),
        "server": ("genwire-server", [ExtendedKeyUsageOID.SERVER_AUTH]),
        "client": (CLIENT_CN, [ExtendedKeyUsageOID.CLIENT_AUTH]),
    }
    sans = x509.SubjectAlternativeName(
        [
            x509.DNSName("localhost"),
            x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
            x509.IPAddress(ipaddress.ip_address("::1")),
        ]
    )
    for stem, (cn, usages) in leaves.items():
        cert_path, key_path = root / f"{stem}.pem", root / f"{stem}-key.pem"
        if not fresh_ca and cert_path.exists() and key_path.exists():
            if not renew:
                continue
            old = x509.load_pem_x509_certificate(cert_path.read_bytes())
            ending = _ends_soon(old, now)
            if ending is None and _signed_by(old, ca_cert):
                continue
            _say(
                f"the certificate {cert_path} "
                f"{ending or 'is not signed by the local CA'}: made a new one; a component "
                "running with the old one keeps it until its next start"
            )
        key = ec.generate_private_key(ec.SECP256R1())
        cert = (
            x509.CertificateBuilder()
            .subject_name(name(cn))
            .issuer_name(ca_cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=LEAF_DAYS))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(sans, critical=False)
            .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key_any.public_key()),
                critical=False,
            )
            .sign(ca_key_any, hashes.SHA256())
        )
        _write_private(key_path, pem_key(key))
        _write_private(cert_path, cert.public_bytes(serialization.Encoding.PEM).decode())


def _ends_soon(cert: x509.Certificate, now: dt.datetime) -> str | None:
    """Why ``cert`` must be made again, None: it has long enough."""
    end = cert.not_valid_after_utc
    if end <= now:
        return f"expired on {end:%Y-%m-%d}"
    if end - now < RENEW_BEFORE:
        return f"expires on {end:%Y-%m-%d} (in under {RENEW_BEFORE.days} days)"
    return None


def _signed_by(cert: x509.Certificate, ca_cert: x509.Certificate) -> bool:
    """Whether the CA ``ca_cert`` signed ``cert`` (a leaf of an earlier CA would not verify)."""
    from cryptography.exceptions import InvalidSignature

    try:
        cert.verify_directly_issued_by(ca_cert)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def _say(line: str) -> None:
    """Tell the person running ``genwire up`` (stderr: a command's table on stdout stays clean)."""
    print(f"genwire: {line}", file=sys.stderr, flush=True)
