"""Pure functions of the monitor's edges (no Kafka or HTTP imports)."""

from __future__ import annotations

from genwire_monitor.alerting import AlertEvent


def alert_record(event: AlertEvent) -> tuple[bytes, bytes]:
    """The Kafka key (the alert id, so an alert's events stay ordered) and JSON value."""
    return event.id.encode(), event.model_dump_json().encode()


def parse_alert(value: bytes) -> AlertEvent:
    """An alert event read back from ``genwire.alerts``."""
    return AlertEvent.model_validate_json(value)
