"""``genwire up --secure``'s definitions, without processes: the settings every client reads, the
certificates and passwords, the broker's configuration, the ACLs and each component's wiring.

The real broker, Redis and services run in test_secure_stack.py.
"""

from __future__ import annotations

import os
import re
import ssl
import stat
import subprocess
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID
from genwire_gateway.config import GatewaySettings
from genwire_inference.handlers import failure_chunk
from genwire_preprocess.handlers import error_chunk
from genwire_stack import StackError, StackLayout, ensure_up
from genwire_stack.bootstrap import run_step
from genwire_stack.cli import register
from genwire_stack.components import Jaeger, Kafka, Redis, Service, build_components
from genwire_stack.layout import read_layout, write_layout
from genwire_stack.manager import _redis_settings
from genwire_stack.paths import StackPaths
from genwire_stack.process import PidRecord, spawn, start_ticks, write_record
from genwire_stack.secure import ACCESS, ADMIN, BROKER_CN, PRINCIPALS, SecureStack, acl_bindings
from pydantic import ValidationError

from genwire.errors import PermanentError
from genwire.events import (
    GenerationChunk,
    GenerationResult,
    PreparedRequest,
    ShadowResult,
    TokenEvent,
)
from genwire.kafka_security import KafkaSecurityError, client_options, describe
from genwire.request import ErrorCode
from genwire.service.http import tls_options
from genwire.settings import CommonSettings, ServiceSettings
from genwire.topics import TOPIC_SPECS, Topic
from genwire.triton_admin import HEADER, restriction_arguments
from genwire.usage import UsageEvent


def _secure(tmp_path: Path, mode: str = "tls") -> tuple[StackPaths, CommonSettings, SecureStack]:
    settings = CommonSettings(home=tmp_path)
    paths = StackPaths.from_settings(settings)
    stack = SecureStack(paths, mode)  # type: ignore[arg-type]
    stack.ensure()
    return paths, settings, stack


# ---- client settings --------------------------------------------------------------------------


def test_plaintext_adds_nothing_to_a_kafka_client() -> None:
    assert client_options(CommonSettings(kafka_security_protocol="PLAINTEXT")) == {}


def test_sasl_ssl_options_carry_the_user_and_a_verifying_tls_context(tmp_path: Path) -> None:
    _, _, stack = _secure(tmp_path)
    options = client_options(stack.kafka_settings("preprocess", "127.0.0.1:1"))
    assert options["security_protocol"] == "SASL_SSL"
    assert options["sasl_mechanism"] == "SCRAM-SHA-512"
    assert options["sasl_plain_username"] == "preprocess"
    assert options["sasl_plain_password"] == stack.password("preprocess")
    context = options["ssl_context"]
    assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname


def test_the_environment_configures_kafka_security(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GENWIRE_KAFKA_SECURITY_PROTOCOL", "SASL_PLAINTEXT")
    monkeypatch.setenv("GENWIRE_KAFKA_SASL_USERNAME", "bench")
    monkeypatch.setenv("GENWIRE_KAFKA_SASL_PASSWORD", "s3cret")
    options = client_options()
    assert options["sasl_plain_username"] == "bench"
    assert "ssl_context" not in options
    assert "s3cret" not in repr(CommonSettings())  # a SecretStr: never in logs or reprs


def test_a_sasl_protocol_without_a_user_is_a_clear_error() -> None:
    with pytest.raises(KafkaSecurityError, match="kafka_sasl_username"):
        client_options(CommonSettings(kafka_security_protocol="SASL_SSL"))
    with pytest.raises(ValidationError):
        CommonSettings(kafka_security_protocol="TLS")  # type: ignore[arg-type]


def test_kafka_tls_and_sasl_settings_the_protocol_ignores_are_refused(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """A CA file and a SASL user with the protocol left at PLAINTEXT would connect in the clear
    without a word: refused when the settings are read, naming the variables and the fix."""
    ca = tmp_path / "ca.pem"
    _, _, stack = _secure(tmp_path)
    monkeypatch.setenv("GENWIRE_KAFKA_SSL_CAFILE", str(stack.ca))
    monkeypatch.setenv("GENWIRE_KAFKA_SASL_USERNAME", "gateway")
    monkeypatch.setenv("GENWIRE_KAFKA_SASL_PASSWORD", "s3cret")
    with pytest.raises(ValidationError) as info:
        CommonSettings()
    message = str(info.value)
    assert "GENWIRE_KAFKA_SSL_CAFILE" in message and "GENWIRE_KAFKA_SASL_USERNAME" in message
    assert "PLAINTEXT" in message and "to SASL_SSL" in message
    assert "s3cret" not in message  # the settings' input is never printed
    monkeypatch.setenv("GENWIRE_KAFKA_SECURITY_PROTOCOL", "SASL_SSL")
    assert client_options()["sasl_plain_username"] == "gateway"
    for name in ("SECURITY_PROTOCOL", "SASL_USERNAME", "SASL_PASSWORD"):
        monkeypatch.delenv(f"GENWIRE_KAFKA_{name}")
    for protocol, given, refused in (
        ("SSL", {"kafka_sasl_username": "u"}, "KAFKA_SASL_USERNAME"),
        ("SSL", {"kafka_sasl_mechanism": "PLAIN"}, "KAFKA_SASL_MECHANISM"),
        ("SASL_PLAINTEXT", {"kafka_ssl_certfile": ca, "kafka_ssl_keyfile": ca}, "CERTFILE"),
        ("PLAINTEXT", {"kafka_ssl_cafile": ca}, "to SSL or SASL_SSL"),
    ):
        with pytest.raises(ValidationError, match=refused):
            CommonSettings(kafka_security_protocol=protocol, **given)  # type: ignore[arg-type]
    with pytest.raises(ValidationError, match="also as GENWIRE_GATEWAY_<NAME>"):
        GatewaySettings(kafka_security_protocol="PLAINTEXT")  # the environment's CA file
    # Set but empty (a ${VAR:-} pass-through in a plaintext deployment): unset, accepted
    for name in ("SSL_CAFILE", "SSL_CERTFILE", "SSL_KEYFILE", "SASL_USERNAME", "SASL_PASSWORD"):
        monkeypatch.setenv(f"GENWIRE_KAFKA_{name}", "")
    assert CommonSettings().kafka_ssl_cafile is None and client_options() == {}


def test_service_tls_settings_come_in_complete_sets(tmp_path: Path) -> None:
    cert, key, ca = tmp_path / "c.pem", tmp_path / "k.pem", tmp_path / "ca.pem"
    with pytest.raises(ValidationError, match="tls_keyfile"):
        ServiceSettings(tls_certfile=cert)
    with pytest.raises(ValidationError, match="mTLS"):
        ServiceSettings(tls_client_ca_file=ca)
    assert tls_options(ServiceSettings()) == {}
    tls = tls_options(ServiceSettings(tls_certfile=cert, tls_keyfile=key))
    assert tls == {"ssl_certfile": str(cert), "ssl_keyfile": str(key)}
    mtls = tls_options(ServiceSettings(tls_certfile=cert, tls_keyfile=key, tls_client_ca_file=ca))
    assert mtls["ssl_ca_certs"] == str(ca) and mtls["ssl_cert_reqs"] == ssl.CERT_REQUIRED


# ---- material ---------------------------------------------------------------------------------


def test_the_material_is_private_and_made_once(tmp_path: Path) -> None:
    paths, _, stack = _secure(tmp_path)
    assert stat.S_IMODE(stack.root.stat().st_mode) == 0o700
    files = [p for p in stack.root.rglob("*") if p.is_file()]
    assert files and all(stat.S_IMODE(p.stat().st_mode) == 0o600 for p in files)
    before = {p: p.read_bytes() for p in files}
    again = SecureStack(paths, "tls")
    again.ensure()
    assert {p: p.read_bytes() for p in files} == before
    assert len({again.password(u) for u in PRINCIPALS}) == len(PRINCIPALS)
    env = (stack.root / "env" / "bench.env").read_text()
    assert "GENWIRE_KAFKA_SASL_USERNAME=bench" in env


def test_the_certificates_chain_to_the_local_ca(tmp_path: Path) -> None:
    _, _, stack = _secure(tmp_path)
    for stem in ("kafka-broker", "server", "client"):
        result = subprocess.run(
            ["openssl", "verify", "-CAfile", str(stack.ca), str(stack.file(f"{stem}.pem"))],
            capture_output=True,
            text=True,
            check=False,
        )
        assert result.returncode == 0, result.stderr
    broker = x509.load_pem_x509_certificate(stack.file("kafka-broker.pem").read_bytes())
    usages = broker.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert ExtendedKeyUsageOID.CLIENT_AUTH in usages  # its client certificate on the controller
    names = broker.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "127.0.0.1" in {str(ip) for ip in names.get_values_for_type(x509.IPAddress)}
    # A TLS server context loads the server pair (what Redis and the gateway serve).
    ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(
        str(stack.file("server.pem")), str(stack.file("server-key.pem"))
    )


def test_the_broker_config_has_no_plaintext_listener_and_denies_by_default(tmp_path: Path) -> None:
    _, _, stack = _secure(tmp_path)
    props = stack.kafka_properties(19092, 19093)
    lines = dict(line.split("=", 1) for line in props.splitlines() if "=" in line)
    assert lines["listeners"] == "SASL_SSL://127.0.0.1:19092,CONTROLLER://127.0.0.1:19093"
    assert lines["listener.security.protocol.map"] == "SASL_SSL:SASL_SSL,CONTROLLER:SSL"
    assert lines["listener.name.controller.ssl.client.auth"] == "required"
    assert lines["allow.everyone.if.no.acl.found"] == "false"
    assert lines["super.users"] == f"User:{ADMIN};User:CN={BROKER_CN}"
    assert lines["authorizer.class.name"].endswith("StandardAuthorizer")
    assert "\n-----BEGIN" not in props  # the PEM blocks are one-line properties values
    scram = stack.scram_arguments()
    assert scram.count("--add-scram") == len(PRINCIPALS)


# ---- ACLs -------------------------------------------------------------------------------------


def test_every_principal_reads_and_writes_only_known_topics() -> None:
    known = {s.name for s in TOPIC_SPECS}
    for user, access in ACCESS.items():
        assert set(map(str, access.reads)) <= known, user
        assert set(map(str, access.writes)) <= known, user


def test_the_dead_letter_queue_is_read_by_admin_only() -> None:
    readers = [user for user, access in ACCESS.items() if Topic.DLQ in access.reads]
    assert readers == []  # admin is a super user; nobody else may read dead letters


def test_the_gateway_cannot_write_past_preprocess() -> None:
    bindings = acl_bindings()
    gateway_writes = {
        name for rtype, name, _, who, op in bindings if who == "User:gateway" and op == 4
    }
    assert str(Topic.REQUESTS) in gateway_writes
    assert not {str(Topic.PREPARED), str(Topic.GENERATIONS), str(Topic.RESULTS)} & gateway_writes


# ---- wiring -----------------------------------------------------------------------------------


def test_a_secure_layout_wires_every_component(tmp_path: Path) -> None:
    paths, settings, stack = _secure(tmp_path, "mtls")
    components = build_components(paths, settings, StackLayout(secure="mtls"))
    kafka = components["kafka"]
    assert isinstance(kafka, Kafka) and kafka.security is not None
    assert kafka.data_dir.name == "kafka-secure"  # apart from the plaintext storage
    redis = components["redis"]
    assert isinstance(redis, Redis) and not redis.adoptable
    assert redis.url.startswith("rediss://:") and "ssl_ca_certs=" in redis.url
    redis.prepare()
    conf = redis.config_file.read_text()
    assert "port 0\n" in conf and f"tls-port {redis.port}" in conf
    assert "appendonly yes\n" in conf and 'save ""\n' in conf  # durable as the plaintext one
    assert redis.command()[1:] == [str(redis.config_file)]  # no password in argv
    # A shell reads the admin's file back as it was meant (the URL has & and ? in it).
    admin_env = stack.root / "env" / "admin.env"
    SecureStack(paths, "mtls").ensure()  # another look at the material (`genwire status`)
    shell = subprocess.run(
        [
            "sh",
            "-c",
            f'set -a; . "{admin_env}"; echo "$GENWIRE_REDIS_URL $GENWIRE_KAFKA_SASL_USERNAME"',
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    assert shell.stdout.split() == [redis.url, "admin"]
    for name in ("preprocess", "inference", "postprocess", "monitor", "gateway"):
        service = components[name]
        assert isinstance(service, Service)
        env = service.environment()
        prefix = f"GENWIRE_{name.upper()}_"
        assert env[f"{prefix}KAFKA_SECURITY_PROTOCOL"] == "SASL_SSL"
        assert env[f"{prefix}KAFKA_SASL_USERNAME"] == name
        assert env["GENWIRE_KAFKA_SASL_USERNAME"] == name
        assert env["GENWIRE_REDIS_URL"] == redis.url
        # Its own name only where it uses Redis (inference and the monitor refuse it).
        assert env.get(f"{prefix}REDIS_URL") == (
            None if name in ("inference", "monitor") else redis.url
        )
        assert (f"{prefix}TLS_CERTFILE" in env) == (name == "gateway")
    # The admin API key of a first `genwire up --secure` goes to this Redis, over TLS.
    assert _redis_settings(settings, components).redis_url == redis.url
    gateway = components["gateway"]
    assert isinstance(gateway, Service)
    assert gateway.environment()["GENWIRE_GATEWAY_TLS_CLIENT_CA_FILE"] == str(stack.ca)
    assert gateway.endpoints().startswith("https://")
    jaeger = components["jaeger"]
    assert isinstance(jaeger, Jaeger)
    assert jaeger.command()[-1].endswith("kafka-secure.yaml")
    assert jaeger.environment()["JAEGER_KAFKA_USERNAME"] == "jaeger"


def test_tls_mode_serves_tls_without_asking_for_client_certificates(tmp_path: Path) -> None:
    paths, settings, stack = _secure(tmp_path, "tls")
    gateway = build_components(paths, settings, StackLayout(secure="tls"))["gateway"]
    assert isinstance(gateway, Service)
    env = gateway.environment()
    assert env["GENWIRE_GATEWAY_TLS_CERTFILE"] == str(stack.file("server.pem"))
    assert "GENWIRE_GATEWAY_TLS_CLIENT_CA_FILE" not in env


def test_a_plain_layout_is_unchanged(tmp_path: Path) -> None:
    paths = StackPaths(tmp_path)
    components = build_components(paths, CommonSettings(home=tmp_path), StackLayout())
    gateway = components["gateway"]
    assert isinstance(gateway, Service)
    env = gateway.environment()
    assert not any("SASL" in k or "TLS" in k or "REDIS_URL" in k for k in env)
    assert not (tmp_path / "secure").exists()
    settings = CommonSettings(home=tmp_path)
    assert _redis_settings(settings, components) is settings


def test_a_service_logs_how_it_connects_never_the_password(tmp_path: Path) -> None:
    _, _, stack = _secure(tmp_path)
    cfg = stack.kafka_settings("preprocess", "127.0.0.1:1")
    assert describe(cfg) == "SASL_SSL as preprocess (SCRAM-SHA-512)"
    assert stack.password("preprocess") not in describe(cfg) + repr(cfg)
    assert describe(CommonSettings()) == "PLAINTEXT"


def test_the_secure_mode_is_remembered_and_switching_needs_a_stopped_stack(
    tmp_path: Path,
) -> None:
    paths = StackPaths(tmp_path)
    write_layout(paths.run, StackLayout(secure="mtls"))
    assert read_layout(paths.run).secure == "mtls"
    assert "secure (mtls)" in read_layout(paths.run).describe()
    assert StackLayout(secure="mtls").changed(secure="off").secure == ""
    with pytest.raises(StackError, match="--secure"):
        StackLayout().changed(secure="ssl")
    # A component of the stack runs: switching to plaintext is refused, naming it.
    write_record(
        paths.run,
        PidRecord(
            name="redis",
            pid=os.getpid(),
            argv=["redis-server"],
            log="",
            started_at=0.0,
            start_ticks=start_ticks(os.getpid()),
            supervised=False,
        ),
    )
    with pytest.raises(StackError, match="genwire down"):
        ensure_up(["redis"], settings=CommonSettings(home=tmp_path), secure="off")
    assert read_layout(paths.run).secure == "mtls"


def test_the_cli_takes_secure_modes() -> None:
    import argparse

    parser = argparse.ArgumentParser()
    register(parser.add_subparsers())
    assert parser.parse_args(["up", "--secure"]).secure == "tls"
    assert parser.parse_args(["up", "--secure", "mtls"]).secure == "mtls"
    assert parser.parse_args(["up"]).secure is None
    with pytest.raises(SystemExit):
        parser.parse_args(["up", "--secure", "ssl"])


def test_the_documented_acls_are_the_ones_created() -> None:
    """docs/security.md's table of users and ACLs says what ``ACCESS`` grants, row by row."""
    doc = (Path(__file__).resolve().parents[2] / "docs" / "security.md").read_text()
    section = doc.split("### Kafka users and ACLs", 1)[1].split("\n### ", 1)[0]
    rows = {}
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 4 and cells[0].startswith("`"):
            names = [[n for n in re.findall(r"`([^`]+)`", c) if "*" not in n] for c in cells]
            rows[names[0][0]] = (set(names[1]), set(names[2]), set(names[3]))
    assert set(rows) == set(ACCESS)
    for user, access in ACCESS.items():
        reads, writes, groups = rows[user]
        assert reads == set(map(str, access.reads)), user
        assert writes == set(map(str, access.writes)), user
        assert groups == set(access.groups), user


def test_command_lines_in_logs_and_pid_records_mask_the_secrets(tmp_path: Path) -> None:
    """Kafka's storage format gets every SCRAM password and Triton the admin header's value
    in argv: the stack's logs and pid records (not private files) keep them masked."""
    _, _, stack = _secure(tmp_path)
    secrets_ = [stack.password(user) for user in PRINCIPALS] + [stack.triton_admin_key]
    argv = ["true", *stack.scram_arguments(), *restriction_arguments(stack.triton_admin_key)]
    log = tmp_path / "logs" / "step.log"
    run_step(argv, what="a step", log=log, hint="")
    record = spawn("fake-triton", argv, log_path=tmp_path / "logs" / "t.log", env={}, cwd=tmp_path)
    write_record(tmp_path / "run", record)
    kept = [log.read_text(), (tmp_path / "logs" / "t.log").read_text()]
    kept.append((tmp_path / "run" / "fake-triton.pid").read_text())
    for text in kept:
        assert "password=***" in text or f"{HEADER}=***" in text
        assert not [s for s in secrets_ if s in text]
    assert f"{HEADER}=***" in kept[1] and "password=***" in kept[0]


def test_each_stage_may_write_what_it_produces() -> None:
    """Each stage's ACLs are what its code produces and reads, no more: its events, the error
    chunk of a failure, a replay onto its own input topic, parking, dead letters, spans."""
    err = PermanentError("bad", code=ErrorCode.INVALID_REQUEST)
    raw = b'{"request_id": "r", "prompt": "x"}'
    failed_request = {type(e).TOPIC for e in error_chunk(raw, b"r", err)}
    failed_generation = {type(e).TOPIC for e in failure_chunk(None, "r", err)}
    everyone = {Topic.RETRY, Topic.DLQ, Topic.SPANS}
    produced = {  # input topic (replays) | outputs | failures
        "preprocess": {Topic.REQUESTS, PreparedRequest.TOPIC} | failed_request,
        "inference": {Topic.PREPARED, GenerationChunk.TOPIC} | failed_generation,
        "postprocess": {Topic.GENERATIONS, TokenEvent.TOPIC, GenerationResult.TOPIC}
        | {ShadowResult.TOPIC, Topic.REPLIES, UsageEvent.TOPIC},  # Kafka clients' usage
    }
    consumed = {
        "preprocess": {Topic.REQUESTS, Topic.CONFIG},  # the policies, followed live
        "inference": {Topic.PREPARED, Topic.CONTROL},  # cancellations
        "postprocess": {Topic.GENERATIONS},
    }
    for stage, topics in produced.items():
        assert set(ACCESS[stage].writes) == topics | everyone, stage
        assert set(ACCESS[stage].reads) == consumed[stage] | {Topic.RETRY}, stage
    assert set(ACCESS["gateway"].reads) == {Topic.REPLIES}
