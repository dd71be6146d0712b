"""Clients of a secure stack, without the stack: how the ``genwire`` CLI, the bench and the demo
find the gateway's TLS (genwire.gateway_tls), the secret header of Triton's restricted APIs
(genwire.triton_admin) and its wiring, and the supervisor's unready probe over TLS against a
real TLS server in this process.

The real secure gateway is reached in test_secure_stack.py, a real restricted Triton in
test_triton_restricted.py.
"""

from __future__ import annotations

import json
import ssl
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from genwire_stack.components import Service, Triton, build_components
from genwire_stack.layout import StackLayout, write_layout
from genwire_stack.paths import StackPaths
from genwire_stack.process import supervised_argv
from genwire_stack.secure import SecureStack
from genwire_stack.statefile import read_state, state_file
from genwire_stack.supervise import _probe, probe_context
from pydantic import SecretStr

from genwire import gateway_tls, kafka_security, triton_admin
from genwire.settings import CommonSettings


def _secure_home(tmp_path: Path, mode: str) -> tuple[CommonSettings, SecureStack]:
    settings = CommonSettings(home=tmp_path)
    paths = StackPaths.from_settings(settings)
    stack = SecureStack(paths, mode)  # type: ignore[arg-type]
    stack.ensure()
    write_layout(paths.run, StackLayout(secure=mode))  # type: ignore[arg-type]
    return settings, stack


# ---- the gateway's TLS, as clients resolve it ---------------------------------------------------


def test_a_plaintext_home_means_plaintext(tmp_path: Path) -> None:
    assert gateway_tls.resolve(CommonSettings(home=tmp_path)) is None
    write_layout(StackPaths(tmp_path).run, StackLayout())
    assert gateway_tls.resolve(CommonSettings(home=tmp_path)) is None


def test_a_tls_stack_is_trusted_through_its_ca_without_a_client_certificate(
    tmp_path: Path,
) -> None:
    settings, stack = _secure_home(tmp_path, "tls")
    tls = gateway_tls.resolve(settings)
    assert tls is not None
    assert tls.ca_file == stack.ca and tls.cert_file is None and not tls.mutual
    context = tls.ssl_context()
    assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname


def test_an_mtls_stack_also_gets_the_client_certificate(tmp_path: Path) -> None:
    settings, stack = _secure_home(tmp_path, "mtls")
    tls = gateway_tls.resolve(settings)
    assert tls is not None and tls.mutual
    assert tls.cert_file == stack.file("client.pem")
    assert tls.key_file == stack.file("client-key.pem")
    tls.ssl_context()  # the pair loads
    tls.grpc_credentials()


def test_explicit_settings_win_over_the_home_and_off_wins_over_all(tmp_path: Path) -> None:
    settings, stack = _secure_home(tmp_path, "mtls")
    explicit = settings.model_copy(update={"gateway_ca_file": stack.ca})
    tls = gateway_tls.resolve(explicit)
    assert tls is not None and tls.ca_file == stack.ca and not tls.mutual  # no home cert
    system = gateway_tls.resolve(CommonSettings(home=tmp_path / "none", gateway_tls="on"))
    assert system is not None and system.ca_file is None  # the system's trust store
    assert gateway_tls.resolve(settings.model_copy(update={"gateway_tls": "off"})) is None


def test_incomplete_or_missing_files_are_clear_errors(tmp_path: Path) -> None:
    settings, stack = _secure_home(tmp_path, "mtls")
    half = settings.model_copy(update={"gateway_client_certfile": stack.file("client.pem")})
    with pytest.raises(gateway_tls.GatewayTLSError, match="go together"):
        gateway_tls.resolve(half)
    missing = settings.model_copy(update={"gateway_ca_file": tmp_path / "nope.pem"})
    with pytest.raises(gateway_tls.GatewayTLSError, match="does not exist"):
        gateway_tls.resolve(missing)
    stack.ca.unlink()
    with pytest.raises(gateway_tls.GatewayTLSError, match="genwire up --secure"):
        gateway_tls.resolve(settings)


def test_the_settings_are_read_from_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, stack = _secure_home(tmp_path, "mtls")
    monkeypatch.setenv("GENWIRE_HOME", str(tmp_path / "elsewhere"))
    monkeypatch.setenv("GENWIRE_GATEWAY_CA_FILE", str(stack.ca))
    monkeypatch.setenv("GENWIRE_GATEWAY_CLIENT_CERTFILE", str(stack.file("client.pem")))
    monkeypatch.setenv("GENWIRE_GATEWAY_CLIENT_KEYFILE", str(stack.file("client-key.pem")))
    tls = gateway_tls.resolve()
    assert tls is not None and tls.mutual and tls.ca_file == stack.ca


def test_http_urls_are_upgraded_only_for_a_tls_gateway(tmp_path: Path) -> None:
    tls = gateway_tls.GatewayTLS(None)
    assert gateway_tls.http_url("http://127.0.0.1:8080", tls) == "https://127.0.0.1:8080"
    assert gateway_tls.http_url("https://gw:443", tls) == "https://gw:443"
    assert gateway_tls.http_url("http://127.0.0.1:8080", None) == "http://127.0.0.1:8080"


def test_the_cli_reports_a_broken_tls_setting_instead_of_a_traceback(tmp_path: Path) -> None:
    env = {
        "PATH": "/usr/bin:/bin",
        "GENWIRE_HOME": str(tmp_path),
        "GENWIRE_API_KEY": "gw-" + "a" * 43,
        "GENWIRE_GATEWAY_CA_FILE": str(tmp_path / "missing.pem"),
    }
    done = subprocess.run(
        [sys.executable, "-m", "genwire_cli", "generate", "hi", "--target", "127.0.0.1:1"],
        env=env,
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1
    assert "missing.pem does not exist" in done.stderr
    assert "Traceback" not in done.stderr


# ---- Triton's admin header ----------------------------------------------------------------------


def test_no_secret_sends_nothing(tmp_path: Path) -> None:
    assert triton_admin.headers(CommonSettings(home=tmp_path)) == {}


def test_the_secret_comes_from_the_setting_else_the_home(tmp_path: Path) -> None:
    settings, stack = _secure_home(tmp_path, "tls")
    key = stack.triton_admin_key
    assert len(key) == 48
    path = triton_admin.key_path(tmp_path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert triton_admin.headers(settings) == {"genwire-triton-admin": key}
    assert triton_admin.headers(settings, grpc=True) == {
        "triton-grpc-protocol-genwire-triton-admin": key
    }
    explicit = settings.model_copy(update={"triton_admin_key": SecretStr("other")})
    assert triton_admin.headers(explicit) == {"genwire-triton-admin": "other"}
    assert "other" not in repr(explicit)


def test_a_secure_triton_restricts_the_model_control_apis(tmp_path: Path) -> None:
    settings, stack = _secure_home(tmp_path, "tls")
    components = build_components(StackPaths(tmp_path), settings)
    triton = components["triton"]
    assert isinstance(triton, Triton)
    argv = triton.command()
    rule = (
        "model-repository,model-config,shared-memory,trace,logging:"
        f"genwire-triton-admin={stack.triton_admin_key}"
    )
    for flag in ("--http-restricted-api", "--grpc-restricted-protocol"):
        assert argv[argv.index(flag) + 1] == rule
    # Its supervisor's after-restart load (genwire default-model) sends the header.
    assert triton.environment()["GENWIRE_TRITON_ADMIN_KEY"] == stack.triton_admin_key
    # Only the services that call those APIs get the secret.
    for name, gets_it in (("gateway", True), ("inference", True), ("preprocess", False)):
        env = components[name].environment()
        assert ("GENWIRE_TRITON_ADMIN_KEY" in env) is gets_it, name
        prefixed = f"GENWIRE_{name.upper()}_TRITON_ADMIN_KEY"
        assert (env.get(prefixed) == stack.triton_admin_key) is gets_it, name


def test_a_plaintext_triton_is_not_restricted(tmp_path: Path) -> None:
    settings = CommonSettings(home=tmp_path)
    triton = build_components(StackPaths(tmp_path), settings, StackLayout())["triton"]
    argv = triton.command()
    assert "--http-restricted-api" not in argv and "--grpc-restricted-protocol" not in argv
    assert "GENWIRE_TRITON_ADMIN_KEY" not in triton.environment()


# ---- the supervisor's unready probe over TLS ----------------------------------------------------


@pytest.mark.parametrize("mode", ["tls", "mtls"])
def test_the_gateways_unready_probe_speaks_tls(tmp_path: Path, mode: str) -> None:
    settings, stack = _secure_home(tmp_path, mode)
    gateway = build_components(StackPaths(tmp_path), settings)["gateway"]
    assert isinstance(gateway, Service)
    unready = gateway.unready_restart()
    assert unready is not None and unready[0] == f"https://127.0.0.1:{gateway.port}/readyz"
    probe = gateway.probe_tls()
    cert = str(stack.file("client.pem")) if mode == "mtls" else None
    assert probe == (str(stack.ca), cert, str(stack.file("client-key.pem")) if cert else None)
    argv = supervised_argv(
        "gateway",
        ["true"],
        tmp_path,
        python="python",
        stop_timeout_s=1,
        unready=unready,
        probe_tls=probe,
    )
    assert argv[argv.index("--probe-ca") + 1] == str(stack.ca)
    assert ("--probe-cert" in argv) is (mode == "mtls")
    # A plain service keeps its plain probe.
    preprocess = build_components(StackPaths(tmp_path), settings)["preprocess"]
    assert preprocess.probe_tls() is None
    assert str(preprocess.unready_restart()[0]).startswith("http://")  # type: ignore[index]


class _Readyz(BaseHTTPRequestHandler):
    ready = False

    def do_GET(self) -> None:
        body = json.dumps({"ready": self.ready, "reasons": ["stuck behind a TLS handshake"]})
        self.send_response(200 if self.ready else 503)
        self.send_header("content-type", "application/json")
        self.end_headers()
        self.wfile.write(body.encode())

    def log_message(self, *_: object) -> None:
        return None


@pytest.fixture
def mtls_server(tmp_path: Path) -> Iterator[tuple[str, SecureStack]]:
    """An HTTPS ``/readyz`` (not ready) with the stack's server certificate that requires a
    client certificate signed by the local CA, as the gateway of ``--secure mtls`` does."""
    _, stack = _secure_home(tmp_path, "mtls")
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Readyz)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(stack.ca))
    context.load_cert_chain(str(stack.file("server.pem")), str(stack.file("server-key.pem")))
    context.verify_mode = ssl.CERT_REQUIRED
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"https://127.0.0.1:{server.server_address[1]}/readyz", stack
    finally:
        server.shutdown()
        server.server_close()


def test_the_probe_reads_a_tls_readyz_only_with_the_right_material(
    mtls_server: tuple[str, SecureStack],
) -> None:
    url, stack = mtls_server
    with_cert = probe_context(
        str(stack.ca), str(stack.file("client.pem")), str(stack.file("client-key.pem"))
    )
    assert _probe(url, with_cert) == (False, "stuck behind a TLS handshake")
    assert _probe(url, probe_context(str(stack.ca))) == (False, "no answer")  # no certificate
    assert _probe(url) == (False, "no answer")  # the system's CAs do not know the local CA


def test_a_supervisor_restarts_a_child_its_tls_probe_finds_unready(
    mtls_server: tuple[str, SecureStack], tmp_path: Path
) -> None:
    """The real supervisor process: its probe reads the 503's reason over mTLS (a probe that
    could not connect would say "no answer") and restarts the child for it."""
    url, stack = mtls_server
    run = tmp_path / "run-probe"
    argv = supervised_argv(
        "probed",
        ["sleep", "600"],
        run,
        python=sys.executable,
        stop_timeout_s=5,
        unready=(url, 1.0),
        probe_tls=(str(stack.ca), str(stack.file("client.pem")), str(stack.file("client-key.pem"))),
    )
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        state = None
        while time.monotonic() < deadline:
            state = read_state(state_file(run, "probed"))
            if state is not None and state.restarts >= 1:
                break
            time.sleep(0.2)
        assert state is not None and state.restarts >= 1, state
        assert "stuck behind a TLS handshake" in str(state.last_exit)
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_every_client_context_verifies_and_refuses_old_tls(tmp_path: Path) -> None:
    """The gateway's callers, Kafka clients, the supervisor's probe and the stack's own checks
    build one context (genwire.tls): certificate and host name checked, TLS 1.2 at least."""
    settings, stack = _secure_home(tmp_path, "mtls")
    client, key = stack.file("client.pem"), stack.file("client-key.pem")
    kafka = CommonSettings(
        kafka_security_protocol="SSL",
        kafka_ssl_cafile=stack.ca,
        kafka_ssl_certfile=client,
        kafka_ssl_keyfile=key,
    )
    tls = gateway_tls.resolve(settings)
    assert tls is not None
    contexts = [
        tls.ssl_context(),
        kafka_security.ssl_context(kafka),
        probe_context(str(stack.ca), str(client), str(key)),
        stack.client_context(),
        stack.client_context(certificate=False),
    ]
    for context in contexts:
        assert context is not None
        assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname
        assert context.minimum_version == ssl.TLSVersion.TLSv1_2
