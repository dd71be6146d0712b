"""The default model: built by the model package when missing, then loaded into Triton."""

from __future__ import annotations

import importlib
import time
from collections.abc import Callable

from genwire import triton_admin
from genwire.settings import CommonSettings
from genwire_stack.errors import StackError
from genwire_stack.health import http_status, wait_until

DEFAULT_MODEL = "genwire-gpt"

Out = Callable[[str], None]


def quiet(_: str) -> None:
    return None


def ensure_model_loaded(
    cfg: CommonSettings, triton_http: str | None = None, out: Out = quiet
) -> str | None:
    """Build the default model if missing (the model package does), then load it into Triton.

    ``triton_http`` is Triton's HTTP ``host:port`` (default: the settings'). Returns the model
    version, or None when the model package is not there yet.
    """
    try:
        module = importlib.import_module("genwire_model")
        make = module.ensure_default_model
    except (ModuleNotFoundError, AttributeError) as exc:
        out(f"default model: skipped, genwire_model has no ensure_default_model ({exc})")
        return None
    base = f"http://{triton_http or cfg.triton_http_url}"
    began = time.monotonic()
    try:
        version = str(make(cfg))
    except StackError:
        raise
    except ModuleNotFoundError as exc:
        if not (exc.name or "").startswith("genwire_model"):
            raise StackError(f"building the default model failed: {exc!r}") from exc
        # The model package is still being written: bring the rest up without it.
        out(f"default model: skipped, the model package is incomplete ({exc})")
        return None
    except Exception as exc:
        raise StackError(
            f"building the default model failed: {exc!r}; see the output above, fix, then "
            "`make up` again"
        ) from exc
    if http_status(f"{base}/v2/models/{DEFAULT_MODEL}/versions/{version}/ready") == 200:
        restore_loaded_models(cfg, base, out)
        return version
    out(f"loading {DEFAULT_MODEL} (version {version}) into Triton at {base}")
    status, detail = _post(
        f"{base}/v2/repository/models/{DEFAULT_MODEL}/load",
        timeout_s=600.0,
        headers=triton_admin.headers(cfg),  # a secure stack's Triton restricts the load
    )
    if status != 200:
        raise StackError(
            f"Triton refused to load {DEFAULT_MODEL} version {version} (HTTP {status}: "
            f"{detail[:200]}); see Triton's log"
        )
    wait_until(
        lambda: http_status(f"{base}/v2/models/{DEFAULT_MODEL}/versions/{version}/ready") == 200,
        what=f"model {DEFAULT_MODEL} version {version}",
        timeout_s=120.0,
    )
    out(f"{DEFAULT_MODEL} version {version} ready after {time.monotonic() - began:.1f} s")
    restore_loaded_models(cfg, base, out)
    return version


def restore_loaded_models(cfg: CommonSettings, triton_http: str, out: Out = quiet) -> None:
    """Load again what ``genwire model load`` served: a restarted Triton (explicit model
    control) serves nothing until asked, and this runs after every start of Triton (``genwire
    up`` and the supervisor's after-ready hook). Best effort: a model that fails is reported,
    the default model stays served."""
    try:
        from genwire_model.lifecycle import Lifecycle, LifecycleError, TritonControl
    except ModuleNotFoundError as exc:
        out(f"models loaded by `genwire model load`: not restored ({exc})")
        return
    life = Lifecycle(
        repository=cfg.repository,
        triton=TritonControl(triton_http),
        bootstrap_servers=cfg.kafka_bootstrap_servers,
        triton_grpc_url=cfg.triton_grpc_url,
        progress=out,
    )
    try:
        for model, versions in life.restore(skip=[DEFAULT_MODEL]).items():
            out(f"{model}: served versions {', '.join(versions) or 'none'}")
    except (LifecycleError, OSError) as exc:
        out(f"models loaded by `genwire model load`: restore failed ({exc})")


def _post(
    url: str, timeout_s: float, headers: dict[str, str] | None = None
) -> tuple[int | None, str]:
    import httpx

    try:
        with httpx.Client(timeout=timeout_s, trust_env=False) as client:
            response = client.post(url, headers=headers)
            return response.status_code, response.text
    except httpx.HTTPError as exc:
        return None, str(exc)
