"""Telemetry: tracing setup, the Kafka span exporter, propagation and the names we emit."""

from genwire.telemetry.logs import configure_logging
from genwire.telemetry.setup import build_exporter, configure_tracing

__all__ = ["build_exporter", "configure_logging", "configure_tracing"]
