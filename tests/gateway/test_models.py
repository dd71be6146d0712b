"""GET /v1/models: READY models from Triton's index, the repository folder when Triton is down."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
from genwire_gateway.models import ModelCatalog


def _repository(tmp_path: Path) -> Path:
    for name in ("genwire-gpt", "other"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "config.pbtxt").write_text(f'name: "{name}"\n')
    (tmp_path / "not-a-model").mkdir()
    return tmp_path


async def test_lists_ready_models_from_triton(tmp_path: Path) -> None:
    calls = []

    def triton(request: httpx.Request) -> httpx.Response:
        calls.append(json.loads(request.content))
        return httpx.Response(
            200,
            json=[
                {"name": "genwire-gpt", "version": "1", "state": "READY"},
                {"name": "genwire-gpt", "version": "2", "state": "READY"},
                {"name": "loading", "version": "1", "state": "LOADING"},
            ],
        )

    client = httpx.AsyncClient(transport=httpx.MockTransport(triton))
    catalog = ModelCatalog("127.0.0.1:8000", _repository(tmp_path), cache_s=60, client=client)
    assert await catalog.names() == ["genwire-gpt"]
    assert await catalog.names() == ["genwire-gpt"]
    assert len(calls) == 1 and calls[0] == {"ready": True}  # cached the second time
    await catalog.close()


async def test_falls_back_to_the_repository_folder(tmp_path: Path) -> None:
    def down(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused")

    client = httpx.AsyncClient(transport=httpx.MockTransport(down))
    catalog = ModelCatalog("127.0.0.1:8000", _repository(tmp_path), cache_s=0, client=client)
    assert await catalog.names() == ["genwire-gpt", "other"]
    empty = ModelCatalog(
        "127.0.0.1:8000", tmp_path / "missing", cache_s=0, default_model="d", client=client
    )
    assert await empty.names() == ["d"]
    await catalog.close()
