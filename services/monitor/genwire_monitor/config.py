"""Settings of the monitor service (env prefix ``GENWIRE_MONITOR_``)."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from genwire.settings import ServiceSettings


class MonitorSettings(ServiceSettings):
    """Reads spans from otlp_spans and raises latency and drift alerts."""

    model_config = SettingsConfigDict(env_prefix="GENWIRE_MONITOR_", extra="ignore")

    service_name: str = Field("genwire-monitor", description="Service and group name.")
    port: int = Field(8090, description="Port of /healthz, /readyz and /metrics.")
