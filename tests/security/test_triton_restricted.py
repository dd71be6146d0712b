"""A secure stack's Triton refuses its model-control APIs without the admin header, and every
caller genwire has sends it.

A throwaway Triton (the shared stack's installed server, its own GENWIRE_HOME, free ports, an
empty repository with one model folder, nothing loaded) started as ``genwire up --secure`` starts
it. Shown: the repository index, a load and a model config over HTTP and gRPC are refused
without the header (HTTP 403 / gRPC "This protocol is restricted") and a wrong value; the
gateway's model list, inference's model-state lookup, ``genwire model``'s Triton client and the
default model's load get through with the secret the stack gave them; health, metadata and
inference stay open as before.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import pytest
from genwire_gateway.config import GatewaySettings
from genwire_gateway.models import ModelCatalog
from genwire_inference.backend import TritonBackend
from genwire_inference.config import InferenceSettings
from genwire_model.lifecycle import LifecycleError, TritonControl
from genwire_stack import down, ensure_up
from genwire_stack.component import Component
from genwire_stack.default_model import _post
from genwire_stack.layout import StackLayout, write_layout
from genwire_stack.paths import StackPaths
from genwire_stack.secure import SecureStack
from genwire_stack.servers import Triton
from tritonclient.grpc.aio import InferenceServerClient
from tritonclient.utils import InferenceServerException

from genwire import triton_admin
from genwire.settings import CommonSettings
from tests.stack.support import free_port

pytestmark = [pytest.mark.integration]

MODEL = "admin-probe"


@dataclass
class RestrictedTriton:
    settings: CommonSettings
    security: SecureStack
    triton: Triton

    @property
    def http(self) -> str:
        return f"http://127.0.0.1:{self.triton.http_port}"

    @property
    def grpc(self) -> str:
        return f"127.0.0.1:{self.triton.grpc_port}"


@pytest.fixture(scope="module")
def restricted(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RestrictedTriton]:
    shared = StackPaths.from_settings(CommonSettings())
    installed = Triton(shared, CommonSettings())
    if not installed.installed():
        pytest.fail(f"Triton is not installed under {shared.opt}: run `make up` first")
    home = tmp_path_factory.mktemp("triton-restricted-home")
    repository = home / "repository"
    (repository / MODEL).mkdir(parents=True)
    # A folder with a config and no version: listed by the index, never loadable.
    (repository / MODEL / "config.pbtxt").write_text(f'name: "{MODEL}"\nbackend: "python"\n')
    settings = CommonSettings(home=home, model_repository=repository)
    paths = StackPaths.from_settings(settings)
    security = SecureStack(paths, "tls")
    security.ensure()
    write_layout(paths.run, StackLayout(secure="tls"))
    http_port, grpc_port, metrics_port = free_port(), free_port(), free_port()
    triton = Triton(paths, settings, http_port, grpc_port, metrics_port, security=security)
    triton.dest.parent.mkdir(parents=True)
    triton.dest.symlink_to(installed.dest)  # the installed server; no second download
    catalog: dict[str, Component] = {"triton": triton}
    try:
        ensure_up(settings=settings, catalog=catalog, model=False)
        yield RestrictedTriton(settings, security, triton)
    finally:
        down(settings=settings, catalog=catalog)


def _grpc_refusal(url: str, headers: dict[str, str] | None) -> str:
    """ "ok", or Triton's message when the repository index is refused over gRPC."""

    async def call() -> str:
        client = InferenceServerClient(url)
        try:
            await client.get_model_repository_index(headers=headers, as_json=True)
            return "ok"
        except InferenceServerException as exc:
            return str(exc.message())
        finally:
            await client.close()

    return asyncio.run(call())


def test_model_control_without_the_header_is_refused(restricted: RestrictedTriton) -> None:
    key = restricted.security.triton_admin_key
    with httpx.Client(base_url=restricted.http, timeout=30, trust_env=False) as http:
        for headers in ({}, {triton_admin.HEADER: "not-the-secret"}):
            assert http.post("/v2/repository/index", headers=headers).status_code == 403
            load = http.post(f"/v2/repository/models/{MODEL}/load", headers=headers)
            assert load.status_code == 403 and "restricted" in load.text
            assert http.post(f"/v2/repository/models/{MODEL}/unload").status_code == 403
            assert http.get(f"/v2/models/{MODEL}/config", headers=headers).status_code == 403
        # Open as before: health, metadata (an unknown model: 404, not 403), statistics.
        assert http.get("/v2/health/ready").status_code == 200
        assert http.get(f"/v2/models/{MODEL}").status_code != 403
        assert http.get("/v2/models/stats").status_code == 200
        # The right header opens it.
        index = http.post("/v2/repository/index", headers={triton_admin.HEADER: key})
        assert index.status_code == 200 and [m["name"] for m in index.json()] == [MODEL]
    assert "restricted" in _grpc_refusal(restricted.grpc, None)
    assert "restricted" in _grpc_refusal(restricted.grpc, {triton_admin.HEADER: key})  # no prefix
    grpc_headers = triton_admin.headers(restricted.settings, grpc=True)
    assert _grpc_refusal(restricted.grpc, grpc_headers) == "ok"


def test_the_stacks_own_callers_send_the_header(
    restricted: RestrictedTriton, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each caller reads its secret the way it does in the stack: services from
    GENWIRE_TRITON_ADMIN_KEY or their own GENWIRE_<SVC>_TRITON_ADMIN_KEY (the stack sets both),
    the tools from the home's file."""
    key = restricted.security.triton_admin_key
    for own in ("GENWIRE_GATEWAY_TRITON_ADMIN_KEY", "GENWIRE_INFERENCE_TRITON_ADMIN_KEY"):
        monkeypatch.delenv(own, raising=False)
    # The services: the secret in their environment, as Service.environment() sets it.
    monkeypatch.setenv("GENWIRE_HOME", str(restricted.settings.home / "elsewhere"))
    monkeypatch.setenv("GENWIRE_TRITON_ADMIN_KEY", key)
    assert asyncio.run(_served_and_state(restricted)) == ([], "")
    # Without it, both are refused: the gateway falls back to the repository folder's names,
    # inference's lookup finds nothing.
    monkeypatch.delenv("GENWIRE_TRITON_ADMIN_KEY")
    assert asyncio.run(_served_and_state(restricted)) == ([MODEL], None)
    # Each service's own variable alone is enough (it was read by nobody before).
    monkeypatch.setenv("GENWIRE_GATEWAY_TRITON_ADMIN_KEY", key)
    monkeypatch.setenv("GENWIRE_INFERENCE_TRITON_ADMIN_KEY", key)
    assert asyncio.run(_served_and_state(restricted)) == ([], "")
    for own in ("GENWIRE_GATEWAY_TRITON_ADMIN_KEY", "GENWIRE_INFERENCE_TRITON_ADMIN_KEY"):
        monkeypatch.delenv(own)
    monkeypatch.setenv("GENWIRE_HOME", str(restricted.settings.home))
    # genwire model (load/unload/list) and the supervisor's after-restart load: the home's file.
    control = TritonControl(restricted.http, timeout_s=60)
    try:
        assert [m["name"] for m in control.index()] == [MODEL]
        with pytest.raises(LifecycleError) as failed:
            # Reaches Triton, which cannot load a model with no version (and no longer lists
            # it afterwards: the services' checks above went first).
            control.load(MODEL)
        assert "This API is restricted" not in str(failed.value) and "version" in str(failed.value)
    finally:
        control.close()
    url = f"{restricted.http}/v2/repository/models/{MODEL}/load"
    status, detail = _post(url, 60.0, triton_admin.headers(CommonSettings()))
    assert status == 400 and "This API is restricted" not in detail
    assert _post(url, 60.0)[0] == 403


async def _served_and_state(restricted: RestrictedTriton) -> tuple[list[str], str | None]:
    """The gateway's model list (READY models: none here, when Triton answers) and inference's
    state of the model ("" listed without a state; None when the index was refused)."""
    repository = restricted.settings.repository
    catalog = ModelCatalog(restricted.http, repository, cache_s=0, settings=GatewaySettings())
    backend = TritonBackend(restricted.grpc, settings=InferenceSettings())
    try:
        return await catalog.names(), await backend.model_state(MODEL, "")
    finally:
        await catalog.close()
        await backend.close()
