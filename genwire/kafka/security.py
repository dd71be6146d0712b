"""Kafka security (TLS, SASL/SCRAM) of every client: see :mod:`genwire.kafka_security`.

The code lives outside this package so that :mod:`genwire.telemetry` (which the package's
consumer imports) can use it without an import cycle; the names stay importable from here.
"""

from genwire.kafka_security import KafkaSecurityError, client_options, describe, ssl_context, use

__all__ = ["KafkaSecurityError", "client_options", "describe", "ssl_context", "use"]
