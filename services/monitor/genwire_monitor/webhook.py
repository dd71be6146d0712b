"""Posting alerts to an Alertmanager-compatible receiver (``POST /api/v2/alerts``).

A firing alert is sent with ``startsAt`` and, when the worker re-sends firing alerts
(``alertmanager_resend_s``), ``endsAt`` a few intervals ahead: Alertmanager expects active
alerts to be sent again and resolves one it has not heard of by its ``endsAt`` (without one,
``resolve_timeout`` after the last post). A resolution carries ``endsAt`` = when it resolved,
which is how Alertmanager learns that an alert cleared; a receiver tells the two apart as
Alertmanager does, by ``endsAt`` in the future or the past. Failures are logged and counted,
never raised (the worker sends again at its next evaluation): the Kafka topic is the alert
record of truth.
"""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Any

import httpx
from prometheus_client import CollectorRegistry, Counter

from genwire.telemetry import semconv as sc
from genwire_monitor.alerting import AlertEvent

log = logging.getLogger(__name__)

ALERTS_PATH = "/api/v2/alerts"

REJECTED = "rejected"
"""A failure ``reason``: the receiver answered, other than 2xx."""
UNREACHABLE = "unreachable"
"""A failure ``reason``: no answer (connection refused, timeout, a broken connection)."""


def to_alertmanager(
    event: AlertEvent, generator_url: str, firing_until: datetime | None = None
) -> dict[str, Any]:
    """One ``postableAlert`` of the Alertmanager v2 API; a firing one ends at ``firing_until``
    unless sent again before (None: no ``endsAt``)."""
    labels = {
        "alertname": event.id,
        "kind": event.kind,
        "severity": event.severity,
        "service": "genwire",
        **event.labels,
    }
    if event.model:
        labels["model"] = event.model
        labels["model_version"] = event.model_version or ""
    annotations = {
        "summary": event.title,
        "description": event.summary,
        "rule": event.rule,
        "figures": ", ".join(f"{k}={v}" for k, v in event.figures.items()),
        "raised_by": event.raised_by,
        "held_by": event.held_by,
    }
    if event.trace_links:
        annotations["example_trace"] = event.trace_links[0]
    body: dict[str, Any] = {
        "labels": labels,
        "annotations": annotations,
        "startsAt": event.started_at.isoformat(),
        "generatorURL": generator_url,
    }
    if event.resolved_at is not None:
        body["endsAt"] = event.resolved_at.isoformat()
    elif firing_until is not None:
        body["endsAt"] = firing_until.isoformat()
    return body


class AlertmanagerClient:
    """A small async client; ``failures`` counts posts that did not get a 2xx, and so does
    ``genwire_monitor_webhook_failures_total{reason}`` in ``registry`` (when given): a webhook
    that stays down is otherwise seen only in the log, while pages never reach anyone."""

    def __init__(
        self,
        base_url: str,
        generator_url: str,
        timeout_s: float = 5.0,
        registry: CollectorRegistry | None = None,
    ) -> None:
        self._url = base_url.rstrip("/") + ALERTS_PATH
        self._generator_url = generator_url
        self._client = httpx.AsyncClient(timeout=timeout_s)
        self.failures = 0
        self._failed: Counter | None = None
        if registry is not None:
            self._failed = Counter(
                sc.METRIC_MONITOR_WEBHOOK_FAILURES,
                "Posts of alerts to the Alertmanager webhook that failed (each is made again at "
                "the next evaluation), by reason: rejected (an answer other than 2xx), "
                "unreachable (no answer).",
                ["reason"],
                registry=registry,
            )
            for reason in (REJECTED, UNREACHABLE):  # at 0 from the start: rate() sees the 1st
                self._failed.labels(reason)

    async def post(self, events: list[AlertEvent], firing_until: datetime | None = None) -> bool:
        """Send ``events`` (the firing ones until ``firing_until``); True if the receiver
        accepted them."""
        if not events:
            return True
        body = [to_alertmanager(e, self._generator_url, firing_until) for e in events]
        try:
            response = await self._client.post(self._url, json=body)
            response.raise_for_status()
        except httpx.HTTPError as exc:
            self.failures += 1
            if self._failed is not None:
                reason = REJECTED if isinstance(exc, httpx.HTTPStatusError) else UNREACHABLE
                self._failed.labels(reason).inc()
            log.warning("posting %d alerts to %s failed: %s", len(events), self._url, exc)
            return False
        return True

    async def close(self) -> None:
        """Close the connection pool."""
        await self._client.aclose()
