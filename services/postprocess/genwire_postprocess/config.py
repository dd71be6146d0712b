"""Settings of the postprocess service (env prefix ``GENWIRE_POSTPROCESS_``)."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from genwire.settings import ServiceSettings


class PostprocessSettings(ServiceSettings):
    """Detokenizes, applies stop sequences and filters, stores and publishes results."""

    model_config = SettingsConfigDict(env_prefix="GENWIRE_POSTPROCESS_", extra="ignore")

    service_name: str = Field("genwire-postprocess", description="Service and group name.")
    port: int = Field(8093, description="Port of /healthz, /readyz and /metrics.")
