"""GET /v1/models lists every served model and version; GET /v1/models/{id} answers one."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
from fastapi import FastAPI
from fastapi.testclient import TestClient
from genwire_gateway.http_api import install_error_handlers, openai_router
from genwire_gateway.models import ModelCatalog

INDEX = [
    {"name": "m", "version": "1", "state": "READY"},
    {"name": "m", "version": "2", "state": "READY"},
    {"name": "m", "version": "3", "state": "UNAVAILABLE", "reason": "unloaded"},
    {"name": "loading", "version": "1", "state": "LOADING"},
    {"name": "never"},
]


def _repository(tmp_path: Path) -> Path:
    for version, created in (("1", "2026-01-01T00:00:00+00:00"), ("2", None)):
        vdir = tmp_path / "m" / version
        vdir.mkdir(parents=True)
        manifest = {"context_length": 256, **({"created": created} if created else {})}
        (vdir / "manifest.json").write_text(json.dumps(manifest))
    (tmp_path / "m" / "config.pbtxt").write_text('name: "m"\n')
    return tmp_path


def _app(tmp_path: Path, handler: object) -> TestClient:
    client = httpx.AsyncClient(transport=httpx.MockTransport(handler))  # type: ignore[arg-type]
    app = FastAPI()
    install_error_handlers(app)
    app.include_router(openai_router())
    app.state.models = ModelCatalog("127.0.0.1:8000", _repository(tmp_path), client=client)
    return TestClient(app)


def test_served_models_and_versions(tmp_path: Path) -> None:
    http = _app(tmp_path, lambda request: httpx.Response(200, json=INDEX))
    listing = http.get("/v1/models").json()
    assert listing["object"] == "list"
    ids = [m["id"] for m in listing["data"]]
    assert ids == ["m", "m:1", "m:2"]  # not the unloaded, loading or never-loaded ones
    by_id = {m["id"]: m for m in listing["data"]}
    assert by_id["m:1"]["created"] == 1767225600
    assert by_id["m:1"]["parent"] == "m" and by_id["m"]["parent"] is None
    assert by_id["m:2"]["max_model_len"] == 256
    assert all(m["object"] == "model" and m["owned_by"] == "genwire" for m in listing["data"])
    one = http.get("/v1/models/m:2")
    assert one.status_code == 200 and one.json() == by_id["m:2"]


def test_unknown_or_unloaded_model_is_a_404_in_the_openai_shape(tmp_path: Path) -> None:
    http = _app(tmp_path, lambda request: httpx.Response(200, json=INDEX))
    for model_id in ("m:3", "nope", "never"):
        response = http.get(f"/v1/models/{model_id}")
        assert response.status_code == 404
        error = response.json()["error"]
        assert error["code"] == "model_not_found"
        assert model_id in error["message"]


def test_triton_down_lists_the_repository(tmp_path: Path) -> None:
    def down(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused")

    http = _app(tmp_path, down)
    assert [m["id"] for m in http.get("/v1/models").json()["data"]] == ["m"]


def test_model_not_loaded_maps_to_503_and_unavailable() -> None:
    import grpc
    from genwire_gateway.errors import grpc_status, http_status

    from genwire.request import ErrorCode

    assert http_status(ErrorCode.MODEL_NOT_LOADED) == 503
    assert grpc_status(ErrorCode.MODEL_NOT_LOADED) == grpc.StatusCode.UNAVAILABLE
