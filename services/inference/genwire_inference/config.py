"""Settings of the inference service (env prefix ``GENWIRE_INFERENCE_``)."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from genwire.settings import ServiceSettings


class InferenceSettings(ServiceSettings):
    """Drives the model on Triton and publishes token chunks."""

    model_config = SettingsConfigDict(env_prefix="GENWIRE_INFERENCE_", extra="ignore")

    service_name: str = Field("genwire-inference", description="Service and group name.")
    port: int = Field(8092, description="Port of /healthz, /readyz and /metrics.")
