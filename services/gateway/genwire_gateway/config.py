"""Settings of the gateway service (env prefix ``GENWIRE_GATEWAY_``)."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from genwire.settings import ServiceSettings


class GatewaySettings(ServiceSettings):
    """gRPC and OpenAI-style HTTP entry points."""

    model_config = SettingsConfigDict(env_prefix="GENWIRE_GATEWAY_", extra="ignore")

    service_name: str = Field("genwire-gateway", description="Service and group name.")
    port: int = Field(8080, description="Port of /healthz, /readyz and /metrics.")
