"""Settings of the preprocess service (env prefix ``GENWIRE_PREPROCESS_``)."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from genwire.settings import ServiceSettings


class PreprocessSettings(ServiceSettings):
    """Validates, templates and tokenizes requests from genwire.requests."""

    model_config = SettingsConfigDict(env_prefix="GENWIRE_PREPROCESS_", extra="ignore")

    service_name: str = Field("genwire-preprocess", description="Service and group name.")
    port: int = Field(8091, description="Port of /healthz, /readyz and /metrics.")
