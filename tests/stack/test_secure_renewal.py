"""``genwire up --secure`` remakes a certificate near its end (genwire_stack.secure).

The material was made once and reused whatever its age: after 397 days every leaf, after 825 the
CA, had expired and the secure stack no longer started. A certificate is written here as an
earlier run would have left it, with the dates under test.

Renewal happens where the stack starts a component, under its lock (``ensure(renew=True)``, from
``genwire_stack.manager``) and nowhere else: a lookup (``genwire status``'s Redis probe, a
readiness probe, a chaos tool, a test fixture) once replaced ca.pem under a running stack.
"""

from __future__ import annotations

import datetime as dt
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from genwire_stack import manager
from genwire_stack.errors import StackError
from genwire_stack.paths import StackPaths
from genwire_stack.process import PidRecord, start_ticks, write_record
from genwire_stack.secure import SecureStack

from genwire.settings import CommonSettings
from tests.stack.support import HttpServer

LEAVES = ("kafka-broker", "server", "client")
NOW = dt.datetime.now(dt.UTC)


def material(tmp_path: Path) -> SecureStack:
    stack = SecureStack(StackPaths(tmp_path))
    stack.ensure()
    return stack


def cert(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def ca_key(stack: SecureStack) -> ec.EllipticCurvePrivateKey:
    key = serialization.load_pem_private_key(stack.file("ca-key.pem").read_bytes(), None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    return key


def redate(path: Path, signer: ec.EllipticCurvePrivateKey, not_after: dt.datetime) -> None:
    """Rewrite the certificate at ``path`` as it is but valid until ``not_after``."""
    old = cert(path)
    builder = (
        x509.CertificateBuilder()
        .subject_name(old.subject)
        .issuer_name(old.issuer)
        .public_key(old.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_after - dt.timedelta(days=400))
        .not_valid_after(not_after)
    )
    for extension in old.extensions:
        builder = builder.add_extension(extension.value, extension.critical)
    path.write_bytes(builder.sign(signer, hashes.SHA256()).public_bytes(serialization.Encoding.PEM))


def test_an_expired_leaf_is_made_again(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    stack = material(tmp_path)
    redate(stack.file("server.pem"), ca_key(stack), NOW - dt.timedelta(days=1))
    before = {name: stack.file(f"{name}.pem").read_bytes() for name in ("ca", *LEAVES)}
    stack.ensure(renew=True)
    renewed = cert(stack.file("server.pem"))
    assert renewed.not_valid_after_utc > NOW + dt.timedelta(days=300)
    renewed.verify_directly_issued_by(cert(stack.ca))
    after = {name: stack.file(f"{name}.pem").read_bytes() for name in ("ca", *LEAVES)}
    assert [name for name in before if before[name] != after[name]] == ["server"]
    assert "server.pem expired on" in capsys.readouterr().err


def test_a_leaf_ending_within_30_days_is_made_again(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    stack = material(tmp_path)
    redate(stack.file("kafka-broker.pem"), ca_key(stack), NOW + dt.timedelta(days=29))
    redate(stack.file("client.pem"), ca_key(stack), NOW + dt.timedelta(days=31))
    client = stack.file("client.pem").read_bytes()
    stack.ensure(renew=True)
    assert cert(stack.file("kafka-broker.pem")).not_valid_after_utc > NOW + dt.timedelta(days=300)
    assert stack.file("client.pem").read_bytes() == client  # 31 days left: kept
    err = capsys.readouterr().err
    assert "kafka-broker.pem expires on" in err and "client.pem" not in err


def test_a_ca_near_its_end_is_made_again_with_every_leaf(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    stack = material(tmp_path)
    redate(stack.ca, ca_key(stack), NOW + dt.timedelta(days=10))
    before = {name: stack.file(f"{name}.pem").read_bytes() for name in LEAVES}
    stack.ensure(renew=True)
    ca = cert(stack.ca)
    assert ca.not_valid_after_utc > NOW + dt.timedelta(days=800)
    for name in LEAVES:
        leaf = cert(stack.file(f"{name}.pem"))
        assert stack.file(f"{name}.pem").read_bytes() != before[name]
        leaf.verify_directly_issued_by(ca)
        assert leaf.not_valid_after_utc > NOW + dt.timedelta(days=300)
    assert "the local CA" in capsys.readouterr().err


def test_a_leaf_another_ca_signed_is_made_again(tmp_path: Path) -> None:
    """A run killed between writing a new CA and its leaves left leaves nobody can verify."""
    stack = material(tmp_path)
    stranger = ec.generate_private_key(ec.SECP256R1())
    redate(stack.file("client.pem"), stranger, NOW + dt.timedelta(days=300))
    stack.ensure(renew=True)
    cert(stack.file("client.pem")).verify_directly_issued_by(cert(stack.ca))


def test_fresh_material_is_left_as_it_is(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    stack = material(tmp_path)
    files = sorted(stack.root.glob("*.pem"))
    before = [path.read_bytes() for path in files]
    capsys.readouterr()
    stack.ensure(renew=True)
    assert [path.read_bytes() for path in files] == before
    assert capsys.readouterr().err == ""


def pems(stack: SecureStack) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in sorted(stack.root.glob("*.pem"))}


def test_a_lookup_never_replaces_the_material(tmp_path: Path) -> None:
    """What `genwire status` does in a fresh process: a new SecureStack asked for the Redis
    password (and the other lookups) with the CA and a leaf near their end: nothing rewritten."""
    stack = material(tmp_path)
    redate(stack.ca, ca_key(stack), NOW + dt.timedelta(days=10))
    redate(stack.file("server.pem"), ca_key(stack), NOW - dt.timedelta(days=1))
    before = pems(stack)
    fresh = SecureStack(StackPaths(tmp_path))
    assert fresh.redis_password
    assert fresh.password("admin") and fresh.kafka_env("bench")
    assert fresh.triton_admin_key and fresh.redis_url(6379)
    SecureStack(StackPaths(tmp_path)).ensure()
    assert pems(stack) == before


def test_a_lookup_still_makes_material_that_is_missing(tmp_path: Path) -> None:
    stack = SecureStack(StackPaths(tmp_path))
    assert stack.redis_password
    assert sorted(pems(stack)) == [
        "ca-key.pem",
        "ca.pem",
        "client-key.pem",
        "client.pem",
        "kafka-broker-key.pem",
        "kafka-broker.pem",
        "server-key.pem",
        "server.pem",
    ]


def test_the_ca_is_not_renewed_while_the_stack_runs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Each component trusts the CA it started with: a new one under a running stack splits it
    between two CAs. A leaf is still renewed (with the CA that is)."""
    stack = material(tmp_path)
    redate(stack.ca, ca_key(stack), NOW + dt.timedelta(days=10))
    redate(stack.file("client.pem"), ca_key(stack), NOW + dt.timedelta(days=5))
    ca = stack.ca.read_bytes()
    stack.ensure(renew=True, running=["kafka", "redis"])
    assert stack.ca.read_bytes() == ca
    cert(stack.file("client.pem")).verify_directly_issued_by(cert(stack.ca))
    assert cert(stack.file("client.pem")).not_valid_after_utc > NOW + dt.timedelta(days=300)
    err = capsys.readouterr().err
    assert "only while none of the secure stack runs (kafka, redis still running with it)" in err
    assert "`make down`, then `make up SECURE=1`" in err


def test_an_expired_ca_under_a_running_stack_stops_the_start(tmp_path: Path) -> None:
    stack = material(tmp_path)
    redate(stack.ca, ca_key(stack), NOW - dt.timedelta(days=1))
    ca = stack.ca.read_bytes()
    with pytest.raises(StackError, match=r"expired on .*`make down`, then `make up SECURE=1`"):
        stack.ensure(renew=True, running=["kafka"])
    assert stack.ca.read_bytes() == ca


# ---- where genwire up renews: a start, under the lock ------------------------------------------


class SecureServer(HttpServer):
    """A stand-in component of a secure stack (it only carries the material)."""

    def __init__(self, paths: StackPaths, security: SecureStack) -> None:
        super().__init__(paths, CommonSettings(home=paths.home), "web", phase=1)
        self.security = security


@pytest.fixture
def running(tmp_path: Path) -> Iterator[PidRecord]:
    """A live component of the stack, recorded in the run dir."""
    proc = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(60)"], start_new_session=True
    )
    record = PidRecord("kafka", proc.pid, [], "", time.time(), start_ticks(proc.pid))
    try:
        yield record
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(5)


def test_up_renews_when_it_starts_a_component_and_not_otherwise(tmp_path: Path) -> None:
    stack = material(tmp_path)
    redate(stack.ca, ca_key(stack), NOW + dt.timedelta(days=10))
    paths = StackPaths(tmp_path)
    web = SecureServer(paths, stack)
    ca = stack.ca.read_bytes()
    manager._renew_secure_material([web], {"web": "ours"}, paths)
    assert stack.ca.read_bytes() == ca  # nothing starts: nothing replaced
    manager._renew_secure_material([web], {"web": "start"}, paths)
    assert cert(stack.ca).not_valid_after_utc > NOW + dt.timedelta(days=800)


def test_up_keeps_the_ca_while_a_component_of_the_stack_runs(
    tmp_path: Path, running: PidRecord, capsys: pytest.CaptureFixture[str]
) -> None:
    stack = material(tmp_path)
    redate(stack.ca, ca_key(stack), NOW + dt.timedelta(days=10))
    paths = StackPaths(tmp_path)
    write_record(paths.run, running)
    ca = stack.ca.read_bytes()
    manager._renew_secure_material([SecureServer(paths, stack)], {"web": "start"}, paths)
    assert stack.ca.read_bytes() == ca
    assert "(kafka still running with it)" in capsys.readouterr().err
