"""``genwire up --secure`` remakes a certificate near its end (genwire_stack.secure).

The material was made once and reused whatever its age: after 397 days every leaf, after 825 the
CA, had expired and the secure stack no longer started. A certificate is written here as an
earlier run would have left it, with the dates under test.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from genwire_stack.paths import StackPaths
from genwire_stack.secure import SecureStack

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
    stack.ensure()
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
    stack.ensure()
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
    stack.ensure()
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
    stack.ensure()
    cert(stack.file("client.pem")).verify_directly_issued_by(cert(stack.ca))


def test_fresh_material_is_left_as_it_is(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    stack = material(tmp_path)
    files = sorted(stack.root.glob("*.pem"))
    before = [path.read_bytes() for path in files]
    capsys.readouterr()
    stack.ensure()
    assert [path.read_bytes() for path in files] == before
    assert capsys.readouterr().err == ""
