"""``genwire up --secure mtls`` on the real broker: every hop encrypted and authenticated.

A throwaway secure stack (own GENWIRE_HOME, free ports, the Kafka jars the shared stack
installed) built from the same components as ``genwire up --secure mtls``: Kafka with SASL_SSL,
SCRAM-SHA-512 users per service and ACLs; Redis over TLS with a password; the gateway, preprocess,
inference and postprocess services connecting as their own users; the gateway serving HTTPS and
gRPC over TLS that require a client certificate. Inference uses the shared stack's Triton (on
127.0.0.1, read only: the default model it already serves). The services' data path runs on
librdkafka (``KAFKA_CLIENT``), so its TLS, SASL and ACLs are shown too.

Shown here: a request goes through every hop and comes back; a plaintext client, a client with
the wrong password and a service with the wrong password are refused by Kafka; a service's user
cannot touch another service's topics; Redis refuses plaintext and a wrong password; a caller
without a client certificate is refused by the gateway (HTTP and gRPC). The clients find the
secure gateway by themselves: ``genwire generate`` and the bench's gRPC and OpenAI-HTTP drivers
from the home's secure material (mtls), or from ``GENWIRE_GATEWAY_CA_FILE`` alone against a
second gateway in ``tls`` mode; the supervisor's unready probe reads the gateway's ``/readyz``
over mTLS.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import grpc
import httpx
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.errors import KafkaError
from genwire_stack import DEFAULT_MODEL, down, ensure_up
from genwire_stack.adminkey import ensure_admin_key
from genwire_stack.component import Component
from genwire_stack.kafka_node import Kafka
from genwire_stack.layout import StackLayout, write_layout
from genwire_stack.manager import _redis_settings
from genwire_stack.paths import StackPaths
from genwire_stack.secure import ADMIN, SecureStack
from genwire_stack.servers import Jaeger, Redis, Service, Triton
from genwire_stack.supervise import _probe, probe_context
from grpc_health.v1 import health_pb2, health_pb2_grpc
from pydantic import SecretStr

from genwire.kafka_security import client_options, rdkafka_options
from genwire.settings import CommonSettings
from genwire.topics import Topic
from tests.stack.support import free_port

pytestmark = [pytest.mark.slow, pytest.mark.integration]

SERVICES = ("preprocess", "inference", "postprocess", "monitor", "gateway")
STAGES = ("preprocess", "inference", "postprocess")
JAEGER_ROLES = ("ui+query", "query-grpc", "otlp-grpc", "otlp-http", "health", "metrics")


@dataclass
class SecureRun:
    settings: CommonSettings
    security: SecureStack
    kafka: Kafka
    redis: Redis
    jaeger: Jaeger
    services: dict[str, Service]
    api_key: str

    @property
    def bootstrap(self) -> str:
        return self.kafka.bootstrap

    @property
    def gateway(self) -> Service:
        return self.services["gateway"]

    def kafka_as(self, user: str, password: str | None = None) -> dict[str, Any]:
        cfg = self.security.kafka_settings(user, self.bootstrap)
        if password is not None:
            cfg = cfg.model_copy(update={"kafka_sasl_password": SecretStr(password)})
        return client_options(cfg)


def _ports(count: int) -> list[int]:
    return [free_port() for _ in range(count)]


@pytest.fixture(scope="module")
def shared_triton() -> CommonSettings:
    """The shared stack's Triton with the default model loaded (started by ``make up``): the
    secure stack's inference calls it. Not started here (that may rebuild the model)."""
    stack = CommonSettings()
    url = f"http://{stack.triton_http_url}/v2/models/{DEFAULT_MODEL}/ready"
    try:
        with httpx.Client(timeout=5, trust_env=False) as http:
            ready = http.get(url).status_code == 200
    except httpx.HTTPError:
        ready = False
    if not ready:
        pytest.fail(f"{DEFAULT_MODEL} is not ready in Triton ({url}): run `make up` first")
    return stack


@pytest.fixture(scope="module")
def secure(
    shared_triton: CommonSettings, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[SecureRun]:
    stack = shared_triton
    home = tmp_path_factory.mktemp("secure-home")
    shared = StackPaths.from_settings(stack)
    # The services' data path on librdkafka (KAFKA_CLIENT): its TLS, SASL and ACLs are shown
    # here; aiokafka's (the default) by every other reader of the stack and by _produce/_consume.
    settings = CommonSettings(
        home=home, model_repository=stack.repository, kafka_client="librdkafka"
    )
    paths = StackPaths.from_settings(settings)
    security = SecureStack(paths, "mtls")
    broker, controller, redis_port, *service_ports = _ports(3 + len(SERVICES) + 1)
    jaeger_ports = dict(zip(JAEGER_ROLES, _ports(len(JAEGER_ROLES) + 12)[12:], strict=True))
    kafka = Kafka(paths, settings, broker, controller, heap="512m", security=security)
    kafka.use_installed(stack)
    redis = Redis(paths, settings, redis_port, security=security)
    jaeger = Jaeger(
        paths,
        settings,
        jaeger_ports,
        group="jaeger-secure-test",
        kafka_bootstrap=kafka.bootstrap,
        initial_offset="latest",
        security=security,
    )
    jaeger.dest.symlink_to(Jaeger(shared, stack).dest)
    services = {
        short: Service(
            paths,
            settings,
            short,
            service_ports[i],
            {"grpc": service_ports[-1]} if short == "gateway" else None,
            kafka_bootstrap=kafka.bootstrap,
            security=security,
            redis_url=redis.url,
        )
        for i, short in enumerate(SERVICES)
    }
    catalog: dict[str, Component] = {"kafka": kafka, "redis": redis, "jaeger": jaeger, **services}
    try:
        ensure_up(settings=settings, catalog=catalog, model=False)
        # What `genwire up --secure` does on a first start: the admin API key, registered in
        # the TLS Redis with its password, saved under the home.
        api_key = ensure_admin_key(_redis_settings(settings, catalog)).read_text().strip()
        # And what it records: the clients (genwire.gateway_tls) find the secure mode there.
        write_layout(paths.run, StackLayout(secure="mtls"))
        yield SecureRun(settings, security, kafka, redis, jaeger, services, api_key)
    finally:
        down(settings=settings, catalog=catalog)


# ---- the request path ---------------------------------------------------------------------


def test_a_request_goes_through_every_hop_encrypted(secure: SecureRun) -> None:
    gateway = secure.gateway
    context = secure.security.client_context(certificate=True)
    headers = {"Authorization": f"Bearer {secure.api_key}"}
    with httpx.Client(verify=context, timeout=60, trust_env=False, headers=headers) as http:
        response = http.post(
            f"https://127.0.0.1:{gateway.port}/v1/completions",
            json={"prompt": "Once upon a time", "max_tokens": 8, "temperature": 0},
        )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["usage"]["completion_tokens"] >= 1
    assert isinstance(body["choices"][0]["text"], str)
    # Every hop of it was secure: the services can only have used SASL_SSL (the broker has no
    # other listener) and TLS Redis (no plain port).
    config = secure.kafka.config_file.read_text()
    assert f"listeners=SASL_SSL://127.0.0.1:{secure.kafka.port}," in config
    assert "PLAINTEXT://" not in config.split("# --- genwire up --secure")[1]
    assert oct(secure.kafka.config_file.stat().st_mode & 0o777) == "0o600"
    # The services' spans went to otlp_spans over SASL_SSL and the secure Jaeger (user
    # `jaeger`, read-only on that topic) read them back.
    deadline = time.monotonic() + 90
    seen: list[str] = []
    with httpx.Client(timeout=5, trust_env=False) as http:
        while "genwire-gateway" not in seen and time.monotonic() < deadline:
            answer = http.get(f"http://127.0.0.1:{secure.jaeger.ui_port}/api/services")
            seen = list(answer.json().get("data") or []) if answer.status_code == 200 else []
            time.sleep(1.0)
    assert "genwire-gateway" in seen, seen


def test_no_service_was_refused_by_an_acl(secure: SecureRun) -> None:
    """Each service's ACLs cover every topic and group it really uses (monitor included)."""
    test_a_request_goes_through_every_hop_encrypted(secure)
    # A request preprocess refuses: its error chunk goes to postprocess over genwire.generations.
    context = secure.security.client_context(certificate=True)
    headers = {"Authorization": f"Bearer {secure.api_key}"}
    with httpx.Client(verify=context, timeout=60, trust_env=False, headers=headers) as http:
        refused = http.post(
            f"https://127.0.0.1:{secure.gateway.port}/v1/completions",
            json={"model": "no-such-model", "prompt": "Once", "max_tokens": 2},
        )
    assert refused.status_code == 404, refused.text
    assert refused.json()["error"]["code"] == "model_not_found"
    for service in secure.services.values():
        assert service.readiness().ready, service.name
        text = service.log.read_text(errors="replace")
        assert "AuthorizationFailed" not in text, f"{service.name}: {service.log}"
        assert "AuthenticationFailed" not in text, f"{service.name}: {service.log}"
        # librdkafka's words for the same ("Broker: Topic authorization failed")
        assert "authorization failed" not in text.lower(), f"{service.name}: {service.log}"
        assert "authentication failed" not in text.lower(), f"{service.name}: {service.log}"


def test_the_services_data_path_ran_on_librdkafka(secure: SecureRun) -> None:
    """What the two tests above showed, they showed on librdkafka: every member of the stages'
    consumer groups (and their retry replayers') is an RdConsumer, whose client id is its group
    (aiokafka's is ``aiokafka-<version>``), asked of the broker as the stack's admin."""
    from confluent_kafka.admin import AdminClient

    admin_settings = secure.security.kafka_settings(ADMIN, secure.bootstrap)
    admin = AdminClient({"bootstrap.servers": secure.bootstrap, **rdkafka_options(admin_settings)})
    groups = [f"genwire-{s}{suffix}" for s in STAGES for suffix in ("", "-retry")]
    described = admin.describe_consumer_groups(groups, request_timeout=15)
    for group, future in described.items():
        members = future.result(timeout=30).members
        assert members, f"{group}: no member"
        assert {m.client_id for m in members} == {group}, (group, [m.client_id for m in members])


def test_the_bench_produces_straight_to_kafka_as_its_own_user(
    secure: SecureRun, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``set -a; . secure/env/bench.env``, then the bench's Kafka target: its user may write
    requests and read results and tokens, which is all a request over Kafka needs."""
    from genwire_bench.drivers.base import TraceContext
    from genwire_bench.drivers.kafka import KafkaDriver
    from genwire_bench.records import BenchRequest, SamplingSpec

    for line in (secure.security.root / "env" / "bench.env").read_text().splitlines():
        name, _, value = line.partition("=")
        monkeypatch.setenv(name, value.strip("'"))
    request = BenchRequest(0, "Once upon a time", (), SamplingSpec(max_tokens=4))

    async def one() -> str | None:
        driver = KafkaDriver(secure.bootstrap, DEFAULT_MODEL, stream=True, timeout_s=60)
        await driver.start()
        try:
            trace = TraceContext("1" * 32, "2" * 16)
            record = await driver.send(request, f"secure-bench-{time.time_ns()}", trace)
            return record.error if record.error else None
        finally:
            await driver.close()

    assert asyncio.run(one()) is None


def test_grpc_over_tls_with_a_client_certificate(secure: SecureRun) -> None:
    status = asyncio.run(_grpc_health(secure, certificate=True))
    assert status == health_pb2.HealthCheckResponse.SERVING


# ---- refused ------------------------------------------------------------------------------


def test_a_client_without_a_certificate_is_refused_by_the_gateway(secure: SecureRun) -> None:
    port = secure.gateway.port
    no_cert = secure.security.client_context(certificate=False)
    with (
        httpx.Client(verify=no_cert, timeout=10, trust_env=False) as http,
        pytest.raises(httpx.HTTPError),
    ):
        http.get(f"https://127.0.0.1:{port}/v1/models").raise_for_status()
    with (
        httpx.Client(timeout=10, trust_env=False) as http,
        pytest.raises(httpx.HTTPError),
    ):
        http.get(f"http://127.0.0.1:{port}/v1/models").raise_for_status()  # plaintext
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        asyncio.run(_grpc_health(secure, certificate=False))
    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE


def test_kafka_refuses_plaintext_and_wrong_passwords(secure: SecureRun) -> None:
    assert asyncio.run(_produce(secure.bootstrap, {}, Topic.REQUESTS)) == "refused"
    wrong = secure.kafka_as("gateway", password="not-the-password")
    assert asyncio.run(_produce(secure.bootstrap, wrong, Topic.REQUESTS)) == "refused"
    right = secure.kafka_as("gateway")
    assert asyncio.run(_produce(secure.bootstrap, right, Topic.REQUESTS)) == "ok"


def test_each_service_reaches_only_its_own_topics(secure: SecureRun) -> None:
    inference = secure.kafka_as("inference")
    # inference writes generations, but neither requests (the gateway's) nor the DLQ's readers'
    assert asyncio.run(_produce(secure.bootstrap, inference, Topic.GENERATIONS)) == "ok"
    assert asyncio.run(_produce(secure.bootstrap, inference, Topic.REQUESTS)) == "not authorized"
    # the gateway may not read what preprocess reads, nor anyone but admin the DLQ
    gateway = secure.kafka_as("gateway")
    assert asyncio.run(_consume(secure.bootstrap, gateway, Topic.REQUESTS)) == "not authorized"
    assert asyncio.run(_consume(secure.bootstrap, gateway, Topic.DLQ)) == "not authorized"
    assert asyncio.run(_consume(secure.bootstrap, gateway, Topic.REPLIES)) == "ok"


def test_a_service_with_the_wrong_password_is_refused(secure: SecureRun) -> None:
    """A real preprocess process whose password is wrong never gets in: Kafka fails its
    authentication (its log says so) and it never becomes ready."""
    service = secure.services["preprocess"]
    port = free_port()
    env = {
        **os.environ,
        **service.environment(),
        "GENWIRE_PREPROCESS_PORT": str(port),
        "GENWIRE_PREPROCESS_KAFKA_SASL_PASSWORD": "not-the-password",
        "GENWIRE_KAFKA_SASL_PASSWORD": "not-the-password",
    }
    log = secure.settings.home / "logs" / "preprocess-wrong-password.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "genwire_preprocess"], env=env, stdout=out, stderr=out
        )
    try:
        deadline = time.monotonic() + 90
        refused = False
        while time.monotonic() < deadline and not refused:
            text = log.read_text(errors="replace")
            refused = "Authentication failed" in text or "SaslAuthenticationFailed" in text
            time.sleep(0.5)
        assert refused, f"no authentication failure in {log}: {log.read_text()[-2000:]}"
        with httpx.Client(timeout=2, trust_env=False) as http:
            try:
                ready = http.get(f"http://127.0.0.1:{port}/readyz").status_code
            except httpx.HTTPError:
                ready = None  # not serving at all, or already exited: not ready either way
        assert ready != 200
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()


def test_redis_refuses_plaintext_and_a_wrong_password(secure: SecureRun) -> None:
    port = secure.redis.port
    with socket.create_connection(("127.0.0.1", port), timeout=3) as sock:
        sock.sendall(b"PING\r\n")
        try:
            answer = sock.recv(64)
        except OSError:
            answer = b""
    assert not answer.startswith(b"+PONG")
    context = secure.security.client_context(certificate=False)
    with (
        socket.create_connection(("127.0.0.1", port), timeout=3) as raw,
        context.wrap_socket(raw, server_hostname="127.0.0.1") as tls,
    ):
        tls.sendall(b"AUTH wrong-password\r\nPING\r\n")
        time.sleep(0.2)
        answer = tls.recv(256)
    assert answer.startswith(b"-WRONGPASS"), answer
    assert b"+PONG" not in answer


def test_triton_listens_on_loopback_only_and_the_gateway_does_not_proxy_it(
    secure: SecureRun,
) -> None:
    argv = Triton(StackPaths.from_settings(secure.settings), secure.settings).command()
    for flag in ("--http-address", "--grpc-address", "--metrics-address"):
        assert argv[argv.index(flag) + 1] == "127.0.0.1"
    context = secure.security.client_context(certificate=True)
    with httpx.Client(verify=context, timeout=10, trust_env=False) as http:
        base = f"https://127.0.0.1:{secure.gateway.port}"
        for path in ("/v2/repository/index", "/v2/repository/models/genwire/load"):
            assert http.post(base + path).status_code in (401, 404, 405)


# ---- the clients of a secure gateway -------------------------------------------------------


def _client_env(secure: SecureRun, **extra: str) -> dict[str, str]:
    """A shell of the secure stack's user: its GENWIRE_HOME, its API key, no gateway settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("GENWIRE_GATEWAY_")}
    env |= {"GENWIRE_HOME": str(secure.settings.home), "GENWIRE_API_KEY": secure.api_key}
    return env | extra


def _cli_generate(env: dict[str, str], grpc_port: int, *flags: str) -> subprocess.Popen[str]:
    argv = [sys.executable, "-m", "genwire_cli", "generate", "Once upon a time"]
    argv += ["--max-tokens", "4", "--temperature", "0", "--json", "--timeout", "60"]
    argv += ["--target", f"127.0.0.1:{grpc_port}", *flags]
    return subprocess.Popen(
        argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def _cli_result(proc: subprocess.Popen[str]) -> tuple[int, str, str]:
    out, err = proc.communicate(timeout=120)
    return proc.returncode, out, err


def test_genwire_generate_reaches_an_mtls_gateway_from_the_home(secure: SecureRun) -> None:
    grpc_port = secure.gateway.extra_ports["grpc"]
    code, out, err = _cli_result(_cli_generate(_client_env(secure), grpc_port))
    assert code == 0, err
    assert json.loads(out)["completion_tokens"] >= 1
    code, out, err = _cli_result(_cli_generate(_client_env(secure), grpc_port, "--stream"))
    assert code == 0, err
    assert json.loads(out.splitlines()[-1])["final"] is True
    # Plaintext (told so) is refused by the TLS port.
    plain = _client_env(secure, GENWIRE_GATEWAY_TLS="off")
    code, _, err = _cli_result(_cli_generate(plain, grpc_port))
    assert code == 1 and "UNAVAILABLE" in err


def test_the_bench_gateway_drivers_reach_an_mtls_gateway(
    secure: SecureRun, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in _client_env(secure).items():
        if name.startswith("GENWIRE_"):
            monkeypatch.setenv(name, value)
    for name in [n for n in os.environ if n.startswith("GENWIRE_GATEWAY_")]:
        monkeypatch.delenv(name)
    from genwire_bench.drivers.gateway import GatewayDriver
    from genwire_bench.drivers.openai_http import OpenAIHttpDriver

    http = f"http://127.0.0.1:{secure.gateway.port}"  # upgraded to https by the driver
    grpc_target = f"127.0.0.1:{secure.gateway.extra_ports['grpc']}"
    drivers = [
        GatewayDriver(grpc_target, DEFAULT_MODEL, stream=True),
        GatewayDriver(grpc_target, DEFAULT_MODEL, stream=False),
        OpenAIHttpDriver(http, DEFAULT_MODEL, stream=True),
        OpenAIHttpDriver(http, DEFAULT_MODEL, stream=False),
    ]
    for driver in drivers:
        assert asyncio.run(_bench_one(driver)) == (None, True), driver.name


def test_a_tls_gateway_is_reached_with_the_ca_alone(secure: SecureRun) -> None:
    """A second gateway in ``--secure tls`` mode (no client certificates asked): the CLI and
    the bench reach it with ``GENWIRE_GATEWAY_CA_FILE`` and nothing else (explicit settings win
    over the home, whose layout says mtls: no certificate is presented)."""
    paths = StackPaths.from_settings(secure.settings)
    http_port, grpc_port = _ports(2)
    gateway = Service(
        paths,
        secure.settings,
        "gateway",
        http_port,
        {"grpc": grpc_port},
        kafka_bootstrap=secure.bootstrap,
        security=SecureStack(paths, "tls"),
        redis_url=secure.redis.url,
    )
    env = {**os.environ, **gateway.environment()}
    assert "GENWIRE_GATEWAY_TLS_CLIENT_CA_FILE" not in env
    log = secure.settings.home / "logs" / "gateway-tls-mode.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "genwire_gateway"], env=env, stdout=out, stderr=out
        )
    try:
        deadline = time.monotonic() + 90
        while not gateway.readiness().ready:  # over TLS, without a client certificate
            assert proc.poll() is None, log.read_text()[-2000:]
            assert time.monotonic() < deadline, log.read_text()[-2000:]
            time.sleep(0.5)
        ca_only = _client_env(secure, GENWIRE_GATEWAY_CA_FILE=str(secure.security.ca))
        code, out_text, err = _cli_result(_cli_generate(ca_only, grpc_port))
        assert code == 0, err
        assert json.loads(out_text)["completion_tokens"] >= 1
        # The same CA-only settings against the mTLS gateway: refused (no certificate).
        code, _, err = _cli_result(_cli_generate(ca_only, secure.gateway.extra_ports["grpc"]))
        assert code == 1 and "UNAVAILABLE" in err
        from genwire_bench.drivers.openai_http import OpenAIHttpDriver

        driver = OpenAIHttpDriver(f"http://127.0.0.1:{http_port}", DEFAULT_MODEL, stream=True)
        old = {k: os.environ.get(k) for k in ca_only if k.startswith("GENWIRE_")}
        os.environ.update({k: v for k, v in ca_only.items() if k.startswith("GENWIRE_")})
        try:
            assert asyncio.run(_bench_one(driver)) == (None, True)
        finally:
            for name, value in old.items():
                if value is None:
                    os.environ.pop(name, None)
                else:
                    os.environ[name] = value
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()


def test_the_supervisors_probe_reads_the_gateways_readyz_over_mtls(secure: SecureRun) -> None:
    gateway = secure.gateway
    unready = gateway.unready_restart()
    probe = gateway.probe_tls()
    assert unready is not None and probe is not None
    assert unready[0] == f"https://127.0.0.1:{gateway.port}/readyz"
    assert _probe(unready[0], probe_context(*probe)) == (True, "")
    assert _probe(unready[0], probe_context(probe[0])) == (False, "no answer")  # no certificate


# ---- helpers --------------------------------------------------------------------------------


async def _bench_one(driver: Any) -> tuple[str | None, bool]:
    """(error, whether tokens came back) of one bench request through ``driver``."""
    from genwire_bench.drivers.base import TraceContext
    from genwire_bench.records import BenchRequest, SamplingSpec

    request = BenchRequest(0, "Once upon a time", (), SamplingSpec(max_tokens=4))
    await driver.start()
    try:
        trace = TraceContext("3" * 32, "4" * 16)
        record = await driver.send(request, f"secure-bench-{time.time_ns()}", trace)
        return (record.error or None), (record.output_tokens or 0) >= 1
    finally:
        await driver.close()


async def _grpc_health(secure: SecureRun, *, certificate: bool) -> int:
    files = secure.security
    credentials = grpc.ssl_channel_credentials(
        root_certificates=files.ca.read_bytes(),
        private_key=files.file("client-key.pem").read_bytes() if certificate else None,
        certificate_chain=files.file("client.pem").read_bytes() if certificate else None,
    )
    port = secure.gateway.extra_ports["grpc"]
    async with grpc.aio.secure_channel(f"127.0.0.1:{port}", credentials) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        response = await stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=10)
        return int(response.status)


async def _produce(bootstrap: str, options: dict[str, Any], topic: str) -> str:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, request_timeout_ms=5000, **options)
    try:
        try:
            await asyncio.wait_for(producer.start(), 20)
        except (KafkaError, ssl.SSLError, OSError, TimeoutError):
            return "refused"
        try:
            await asyncio.wait_for(producer.send_and_wait(topic, b"secure-test"), 20)
        except KafkaError as exc:
            return "not authorized" if "Authorization" in type(exc).__name__ else repr(exc)
        return "ok"
    finally:
        await producer.stop()


async def _consume(bootstrap: str, options: dict[str, Any], topic: str) -> str:
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        group_id=None,
        auto_offset_reset="latest",
        request_timeout_ms=5000,
        **options,
    )
    try:
        await asyncio.wait_for(consumer.start(), 20)
        await consumer.getmany(timeout_ms=1000)
        return "ok"
    except KafkaError as exc:
        return "not authorized" if "Authorization" in type(exc).__name__ else repr(exc)
    finally:
        await consumer.stop()
