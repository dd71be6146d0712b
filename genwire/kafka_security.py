"""How every Kafka client of a process connects: plaintext, or TLS and SASL/SCRAM (and, for the
data path, on which client: :func:`client_kind`).

One place turns the ``kafka_*`` settings (``GENWIRE_KAFKA_SECURITY_PROTOCOL``,
``..._SASL_USERNAME``, ``..._SASL_PASSWORD``, ``..._SSL_CAFILE``…, docs/security.md) into the
keyword arguments every ``AIOKafkaProducer``, ``AIOKafkaConsumer`` and ``AIOKafkaAdminClient``
takes::

    AIOKafkaConsumer(topic, bootstrap_servers=servers, **client_options())

A service's runner calls :func:`use` once with the service's own settings (its env prefix,
``GENWIRE_GATEWAY_KAFKA_SASL_USERNAME``…), so every client the process builds afterwards, deep
in the library or in the service, connects as that service. Elsewhere (tools, the bench, tests)
the plain ``GENWIRE_KAFKA_*`` variables apply. The default, ``PLAINTEXT``, adds nothing (TLS or
SASL settings given with a protocol that would ignore them are refused when the settings are
read: ``CommonSettings._kafka_security_used``).
"""

from __future__ import annotations

import ssl
from typing import Any

from genwire.settings import CommonSettings, KafkaClient
from genwire.tls import client_context

_process: dict[str, CommonSettings] = {}
"""The settings :func:`use` set for this process (key ``"settings"``), if any."""


class KafkaSecurityError(ValueError):
    """The Kafka security settings are incomplete (a SASL protocol without a user…)."""


def use(settings: CommonSettings | None) -> None:
    """Make ``settings`` the process's Kafka security (``None``: back to the environment)."""
    if settings is None:
        _process.pop("settings", None)
    else:
        _process["settings"] = settings


def client_options(settings: CommonSettings | None = None) -> dict[str, Any]:
    """aiokafka keyword arguments for ``settings`` (default: what :func:`use` set, else the
    ``GENWIRE_KAFKA_*`` environment); ``{}`` for PLAINTEXT."""
    cfg = settings or _process.get("settings") or CommonSettings()
    protocol = cfg.kafka_security_protocol
    if protocol == "PLAINTEXT":
        return {}
    options: dict[str, Any] = {"security_protocol": protocol}
    if protocol.startswith("SASL_"):
        user, password = _sasl_credentials(cfg)
        options |= {
            "sasl_mechanism": cfg.kafka_sasl_mechanism,
            "sasl_plain_username": user,
            "sasl_plain_password": password,
        }
    if protocol in ("SSL", "SASL_SSL"):
        options["ssl_context"] = ssl_context(cfg)
    return options


def rdkafka_options(settings: CommonSettings | None = None) -> dict[str, Any]:
    """The same security as :func:`client_options`, as librdkafka configuration properties
    (``GENWIRE_KAFKA_CLIENT=librdkafka``, genwire.kafka.rdkafka); ``{}`` for PLAINTEXT."""
    cfg = settings or _process.get("settings") or CommonSettings()
    protocol = cfg.kafka_security_protocol
    if protocol == "PLAINTEXT":
        return {}
    options: dict[str, Any] = {"security.protocol": protocol.lower()}
    if protocol.startswith("SASL_"):
        user, password = _sasl_credentials(cfg)
        options |= {
            "sasl.mechanisms": cfg.kafka_sasl_mechanism,
            "sasl.username": user,
            "sasl.password": password,
        }
    if protocol in ("SSL", "SASL_SSL"):
        _check_certificate_pair(cfg)
        # The broker's certificate and host name are checked, as ssl_context() does;
        # without a CA file, librdkafka looks for the system's trust store ("probe").
        options["ssl.endpoint.identification.algorithm"] = "https"
        options["ssl.ca.location"] = (
            str(cfg.kafka_ssl_cafile) if cfg.kafka_ssl_cafile is not None else "probe"
        )
        if cfg.kafka_ssl_certfile is not None and cfg.kafka_ssl_keyfile is not None:
            options["ssl.certificate.location"] = str(cfg.kafka_ssl_certfile)
            options["ssl.key.location"] = str(cfg.kafka_ssl_keyfile)
    return options


def client_kind(settings: CommonSettings | None = None) -> KafkaClient:
    """``aiokafka`` or ``librdkafka``: the client of the data path (``kafka_client``; default:
    what :func:`use` set, else ``GENWIRE_KAFKA_CLIENT``)."""
    cfg = settings or _process.get("settings") or CommonSettings()
    return cfg.kafka_client


def _sasl_credentials(cfg: CommonSettings) -> tuple[str, str]:
    password = cfg.kafka_sasl_password.get_secret_value()
    if not cfg.kafka_sasl_username or not password:
        raise KafkaSecurityError(
            f"kafka_security_protocol {cfg.kafka_security_protocol} needs kafka_sasl_username "
            "and kafka_sasl_password (GENWIRE_KAFKA_SASL_USERNAME / _PASSWORD)"
        )
    return cfg.kafka_sasl_username, password


def _check_certificate_pair(cfg: CommonSettings) -> None:
    if (cfg.kafka_ssl_certfile is None) != (cfg.kafka_ssl_keyfile is None):
        raise KafkaSecurityError("kafka_ssl_certfile and kafka_ssl_keyfile go together")


def ssl_context(cfg: CommonSettings) -> ssl.SSLContext:
    """A client TLS context: the broker's certificate checked against ``kafka_ssl_cafile`` (or
    the system's CAs) with its host name; ``kafka_ssl_certfile`` presented when set."""
    _check_certificate_pair(cfg)
    return client_context(cfg.kafka_ssl_cafile, cfg.kafka_ssl_certfile, cfg.kafka_ssl_keyfile)


def describe(settings: CommonSettings | None = None) -> str:
    """``SASL_SSL as preprocess (SCRAM-SHA-512)`` / ``PLAINTEXT``: for logs, never a secret."""
    cfg = settings or _process.get("settings") or CommonSettings()
    protocol = cfg.kafka_security_protocol
    if protocol.startswith("SASL_"):
        return f"{protocol} as {cfg.kafka_sasl_username or '?'} ({cfg.kafka_sasl_mechanism})"
    return protocol
