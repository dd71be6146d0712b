"""The models ``GET /v1/models`` lists: those Triton reports READY, else the repository's."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import httpx

log = logging.getLogger(__name__)


def repository_models(repository: Path) -> list[str]:
    """Model names in a Triton model repository: folders holding a ``config.pbtxt``."""
    if not repository.is_dir():
        return []
    return sorted(p.parent.name for p in repository.glob("*/config.pbtxt"))


class ModelCatalog:
    """Model names from Triton's repository index (cached briefly), the repository as fallback."""

    def __init__(
        self,
        triton_http_url: str,
        repository: Path,
        *,
        cache_s: float = 5.0,
        default_model: str | None = None,
        client: httpx.AsyncClient | None = None,
    ) -> None:
        base = triton_http_url if "://" in triton_http_url else f"http://{triton_http_url}"
        self._index_url = f"{base.rstrip('/')}/v2/repository/index"
        self._repository = repository
        self._cache_s = cache_s
        self._default = default_model
        self._client = client or httpx.AsyncClient(timeout=2.0)
        self._cached: tuple[float, list[str]] | None = None

    async def names(self) -> list[str]:
        """Names of the models that can serve now (READY in Triton)."""
        now = time.monotonic()
        if self._cached is not None and now - self._cached[0] < self._cache_s:
            return self._cached[1]
        try:
            response = await self._client.post(self._index_url, json={"ready": True})
            response.raise_for_status()
            names = sorted(
                {
                    entry["name"]
                    for entry in response.json()
                    if entry.get("state", "READY") == "READY" and "name" in entry
                }
            )
        except (httpx.HTTPError, ValueError, TypeError, KeyError) as exc:
            log.warning("Triton's repository index is unavailable (%s); reading the folder", exc)
            names = repository_models(self._repository)
            if not names and self._default:
                names = [self._default]
        self._cached = (now, names)
        return names

    async def close(self) -> None:
        """Close the HTTP client."""
        await self._client.aclose()
