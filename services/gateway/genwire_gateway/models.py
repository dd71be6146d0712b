"""The models ``GET /v1/models`` lists: those Triton reports READY, else the repository's.

Each served model is listed by its name (what a request naming it gets: the version its
policy routes to, else the newest served one; the entry describes the newest) and by
``NAME:VERSION`` for every version Triton serves, in OpenAI's shape
(``id``, ``object``, ``created``, ``owned_by``) plus ``root``, ``parent`` and
``max_model_len`` as vLLM adds them. ``GET /v1/models/{id}`` answers one of them.
"""

from __future__ import annotations

import datetime
import json
import logging
import time
from pathlib import Path
from typing import Any

import httpx

from genwire import triton_admin
from genwire.settings import CommonSettings

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
        settings: CommonSettings | None = None,
    ) -> None:
        """``settings``: where the admin secret comes from (the gateway's own: its
        ``GENWIRE_GATEWAY_TRITON_ADMIN_KEY`` wins over the plain one); None: the plain ones."""
        base = triton_http_url if "://" in triton_http_url else f"http://{triton_http_url}"
        self._index_url = f"{base.rstrip('/')}/v2/repository/index"
        self._admin = triton_admin.headers(settings)  # a secure stack's Triton restricts the index
        self._repository = repository
        self._cache_s = cache_s
        self._default = default_model
        self._client = client or httpx.AsyncClient(timeout=2.0)
        self._served: tuple[float, list[dict[str, Any]]] | None = None

    async def names(self) -> list[str]:
        """Names of the models that can serve now (READY in Triton; else the repository's)."""
        return sorted({str(entry["root"]) for entry in await self.served()})

    async def served(self) -> list[dict[str, Any]]:
        """``/v1/models`` entries: each model with a READY version, then each READY version
        as ``NAME:VERSION`` (Triton unreachable: the repository's models, by name only)."""
        now = time.monotonic()
        if self._served is not None and now - self._served[0] < self._cache_s:
            return self._served[1]
        try:
            response = await self._client.post(
                self._index_url, json={"ready": True}, headers=self._admin
            )
            response.raise_for_status()
            ready: dict[str, list[str]] = {}
            for entry in response.json():
                # Asked for ready ones only; a version without a state is Triton's answer to
                # that filter, a name without a version was never loaded.
                version = str(entry.get("version", ""))
                if entry.get("state", "READY") == "READY" and "name" in entry and version:
                    ready.setdefault(str(entry["name"]), []).append(version)
        except (httpx.HTTPError, ValueError, TypeError, KeyError, AttributeError) as exc:
            log.warning("Triton's repository index is unavailable (%s); reading the folder", exc)
            names = repository_models(self._repository) or (
                [self._default] if self._default else []
            )
            entries = [self._entry(name, None) for name in names]
        else:
            entries = []
            for name in sorted(ready):
                versions = sorted(ready[name], key=lambda v: (len(v), v))
                entries.append(self._entry(name, versions[-1] if versions else None, alias=True))
                entries.extend(self._entry(name, v) for v in versions)
        self._served = (now, entries)
        return entries

    async def find(self, model_id: str) -> dict[str, Any] | None:
        """The ``/v1/models`` entry named ``model_id`` (None: not served)."""
        for entry in await self.served():
            if entry["id"] == model_id:
                return entry
        return None

    def _entry(self, name: str, version: str | None, *, alias: bool = False) -> dict[str, Any]:
        manifest = self._manifest(name, version) if version else {}
        created = manifest.get("created")
        try:
            stamp = int(datetime.datetime.fromisoformat(created).timestamp()) if created else 0
        except (TypeError, ValueError):
            stamp = 0
        entry: dict[str, Any] = {
            "id": name if alias or version is None else f"{name}:{version}",
            "object": "model",
            "created": stamp,
            "owned_by": "genwire",
            "root": name,
            "parent": None if alias or version is None else name,
        }
        if manifest.get("context_length"):
            entry["max_model_len"] = int(manifest["context_length"])
        return entry

    def _manifest(self, name: str, version: str) -> dict[str, Any]:
        path = self._repository / name / version / "manifest.json"
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    async def close(self) -> None:
        """Close the HTTP client."""
        await self._client.aclose()
