"""The default model: built by the model package when missing, then loaded into Triton."""

from __future__ import annotations

import contextlib
import importlib
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from genwire import triton_admin
from genwire.policy import ModelPolicy, PolicyError
from genwire.settings import CommonSettings
from genwire_stack.errors import StackError
from genwire_stack.health import http_status, wait_until

DEFAULT_MODEL = "genwire-gpt"

Out = Callable[[str], None]
Change = tuple[str, str]
"""A rewrite of a model's config.pbtxt: the text before, the text written."""


def quiet(_: str) -> None:
    return None


def _lifecycle_module() -> Any | None:
    """``genwire_model.lifecycle``, or None without the model toolchain. Imported by name, like
    the default model's builder above: the ``tools`` extra does not carry the toolchain (torch,
    transformers), and the stack runs the infrastructure without it."""
    try:
        return importlib.import_module("genwire_model.lifecycle")
    except ModuleNotFoundError:
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
    serve_version(cfg, base, DEFAULT_MODEL, version, out, began=began)
    restore_loaded_models(cfg, base, out)
    return version


def restore_after_restart(
    cfg: CommonSettings, triton_http: str | None = None, out: Out = quiet
) -> str | None:
    """After Triton crashed and its supervisor restarted it: serve again what was served,
    build nothing. The restarted server loaded the default model itself, as its
    ``config.pbtxt`` names (``Triton.restart_arguments``); building a version here when the
    runtime's code changed on disk since would move the traffic to it, and requests pinned to
    the served one would wait for it in vain (docs/reliability.md). A change of code is rolled
    out by ``genwire up`` or ``genwire model build --load``, never by a crash.

    Returns the newest version served. A version ``config.pbtxt`` names that did not come back
    is loaded once more, then reported (``StackError``: the supervisor logs the step's exit).
    Triton not answering is an error too: nothing is built on a guess. Only when Triton
    answers that no version is served, even after one more load (nothing was ever built, or
    every version fails), is the default model brought up as ``genwire up`` does."""
    lc = _lifecycle_module()
    if lc is None:
        out("default model: not restored (no genwire_model.lifecycle)")
        return None
    base = f"http://{triton_http or cfg.triton_http_url}"
    control = lc.TritonControl(base, timeout_s=60.0)
    named: list[str] = lc.configured_versions(_config_text(cfg, lc.CONFIG)) or []
    served: list[str] = []
    try:
        served = control.served(DEFAULT_MODEL)
        if not served or set(named) - set(served):
            out(f"{DEFAULT_MODEL}: {_described(served, named)} after the restart: loading again")
            try:
                control.load(DEFAULT_MODEL)
            except lc.LifecycleError as exc:
                out(f"{DEFAULT_MODEL}: {exc}")
            served = control.served(DEFAULT_MODEL)
    except lc.LifecycleError as exc:
        raise StackError(f"after Triton's restart: {exc}; nothing built") from exc
    finally:
        control.close()
    if not served:
        out(f"{DEFAULT_MODEL}: not served after the restart; bringing it up as `genwire up` does")
        return ensure_model_loaded(cfg, triton_http, out)
    out(f"{DEFAULT_MODEL}: version(s) {', '.join(served)} served again (nothing built)")
    restore_loaded_models(cfg, base, out)
    missing = sorted(set(named) - set(served), key=int)
    if missing:
        raise StackError(
            f"{DEFAULT_MODEL}: version(s) {', '.join(missing)} that config.pbtxt names are not "
            "served after Triton's restart (see Triton's log)"
        )
    return served[-1]


def _config_text(cfg: CommonSettings, name: str) -> str:
    """The default model's config file ``name`` ("" when it cannot be read: no versions
    named)."""
    try:
        return (cfg.repository / DEFAULT_MODEL / name).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return ""


def _described(served: list[str], named: list[str]) -> str:
    if not served:
        return "no version served"
    missing = sorted(set(named) - set(served), key=int)
    return f"version(s) {', '.join(missing)} of {', '.join(named)} not served"


def serve_version(
    cfg: CommonSettings,
    base: str,
    model: str,
    version: str,
    out: Out = quiet,
    *,
    began: float | None = None,
) -> None:
    """Serve ``version`` of ``model`` (the default model's bring-up): what the model's policy
    names keeps being served beside it, and the pin that ``load`` made alone follows it
    (``keep_policy_versions``). ``base``: Triton's HTTP URL."""
    began = time.monotonic() if began is None else began
    pin, change = keep_policy_versions(cfg, base, version, out, model=model)
    ready = http_status(f"{base}/v2/models/{model}/versions/{version}/ready") == 200
    if not ready or change is not None:
        try:
            _load_and_wait(cfg, base, model, version, out)
        except BaseException as exc:  # as Lifecycle.serve: no config left naming what did not load
            if change is not None:
                # Ctrl-C, SIGTERM (not Triton's refusal): Triton may finish the load anyway.
                _put_back(cfg, base, model, change, out, reload=not isinstance(exc, StackError))
            raise
        out(f"{model} version {version} ready after {time.monotonic() - began:.1f} s")
    _move_pin(cfg, base, pin, version, out)


def _load_and_wait(cfg: CommonSettings, base: str, model: str, version: str, out: Out) -> None:
    """(Re)load ``model`` from its config and wait until ``version`` is ready."""
    out(f"loading {model} (version {version}) into Triton at {base}")
    status, detail = _post(
        f"{base}/v2/repository/models/{model}/load",
        timeout_s=600.0,
        headers=triton_admin.headers(cfg),  # a secure stack's Triton restricts the load
    )
    if status != 200:
        raise StackError(
            f"Triton refused to load {model} version {version} (HTTP {status}: "
            f"{detail[:200]}); see Triton's log"
        )
    wait_until(
        lambda: http_status(f"{base}/v2/models/{model}/versions/{version}/ready") == 200,
        what=f"model {model} version {version}",
        timeout_s=120.0,
    )


RELOAD_AFTER_INTERRUPT_S = 30.0
"""How long the put-back after an interrupted load waits for Triton's load of the restored
config (best effort: the command is ending)."""


def _put_back(
    cfg: CommonSettings, base: str, model: str, change: Change, out: Out, *, reload: bool = False
) -> None:
    """After the load of what ``keep_policy_versions`` wrote failed: the config it replaced
    again (unless changed since), best effort, the model's lock held. ``reload``: the load
    was interrupted (Ctrl-C, SIGTERM), not refused, so Triton may still finish it server-side:
    once the config is put back, Triton is asked to load the model again (bounded, errors
    ignored), so it serves what the restored config names."""
    lc = _lifecycle_module()
    if lc is None:
        return
    before, written = change
    config = cfg.repository / model / lc.CONFIG
    with _lifecycle(lc, cfg, base, out) as life, contextlib.ExitStack() as held:
        with contextlib.suppress(lc.LifecycleError):  # (a read-only repository: no lock)
            held.enter_context(life.locked(model))
        try:
            if config.read_text(encoding="utf-8") != written:
                return  # someone else's change since: theirs stands
            # (A refused load left Triton serving what it served: not loaded again.)
            _replace(config, before)
            out(f"{model}: config.pbtxt put back as it was before this load")
        except OSError as exc:
            out(f"{model}: putting config.pbtxt back failed ({exc})")
            return
        if reload:
            _reload_quietly(cfg, base, model, out)


def _reload_quietly(cfg: CommonSettings, base: str, model: str, out: Out) -> None:
    """Ask Triton to load ``model`` from its config again, within
    ``RELOAD_AFTER_INTERRUPT_S``, whatever the answer."""
    out(f"{model}: asking Triton to load it again from the restored config.pbtxt")
    with contextlib.suppress(Exception):
        status, detail = _post(
            f"{base}/v2/repository/models/{model}/load",
            timeout_s=RELOAD_AFTER_INTERRUPT_S,
            headers=triton_admin.headers(cfg),
        )
        if status != 200:
            out(f"{model}: Triton did not load it again (HTTP {status}: {detail[:200]})")


def _replace(config: Path, text: str) -> None:
    tmp = config.with_name(f".{config.name}.up")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(config)


def keep_policy_versions(
    cfg: CommonSettings,
    triton_http: str,
    version: str,
    out: Out = quiet,
    *,
    model: str = DEFAULT_MODEL,
) -> tuple[ModelPolicy | None, Change | None]:
    """Before (re)loading the default model at ``version``: make its ``config.pbtxt`` serve
    ``version`` and every version its policy on ``genwire.config`` names, beside the versions
    it serves already (``specific``), so no request routed by the policy meets a version that
    is gone. Returns the policy when it is the pin ``load`` made and must follow ``version``
    (moved once ``version`` is ready), and the file's change (None: unchanged). No policy and
    the build's ``latest`` line: nothing to keep (the new version takes the traffic, as
    always). The broker unreadable: the file's ``specific`` versions are kept, the policy is
    not moved."""
    lc = _lifecycle_module()
    if lc is None:
        return None, None
    config = cfg.repository / model / lc.CONFIG
    if not config.is_file():
        return None, None
    # The model's lock from the read to the write, as `genwire model load/unload/promote` hold
    # it: an operator's change made meanwhile is not overwritten with what was read before it.
    with _lifecycle(lc, cfg, triton_http, out) as life, contextlib.ExitStack() as held:
        try:
            held.enter_context(life.locked(model))
        except lc.LifecycleError as exc:  # no lock to take (a read-only repository)
            out(f"{model}: its lock could not be taken ({exc}); going on without it")
        return _keep_versions(lc, life, config, version, out, model)


@contextlib.contextmanager
def _lifecycle(lc: Any, cfg: CommonSettings, triton_http: str, out: Out) -> Iterator[Any]:
    """A ``genwire_model.lifecycle.Lifecycle`` (module ``lc``) of the stack's repository,
    broker and Triton; its Triton client closed when done."""
    life = lc.Lifecycle(
        repository=cfg.repository,
        triton=lc.TritonControl(triton_http),
        bootstrap_servers=cfg.kafka_bootstrap_servers,
        triton_grpc_url=cfg.triton_grpc_url,
        progress=out,
    )
    try:
        yield life
    finally:
        life.triton.close()


def _keep_versions(
    lc: Any, life: Any, config: Path, version: str, out: Out, model: str
) -> tuple[ModelPolicy | None, Change | None]:
    """``keep_policy_versions``' read-modify-write of ``config``, its lock held."""
    configured_versions, is_load_pin, with_versions = (
        lc.configured_versions,
        lc.is_load_pin,
        lc.with_versions,
    )
    try:
        text = config.read_text(encoding="utf-8")
    except OSError:
        return None, None
    specific = configured_versions(text)
    try:
        policy = life.policy(model)
    except lc.LifecycleError as exc:
        out(f"{model}: its policy could not be read ({exc}); served versions kept")
        policy = None
    if policy is None and specific is None:
        return None, None
    built = set(life.versions(model))
    named = policy.versions() if policy is not None else set()
    pin = policy if policy is not None and is_load_pin(policy) else None
    wanted = set(specific or ()) | (named & built) | {version}
    for gone in sorted(named - built):
        out(f"{model}: version {gone} is named by its policy but not built")
    if policy is not None and version not in named and pin is None:
        out(
            f"{model}: version {version} is served beside the versions its policy "
            f"(revision {policy.revision}) routes to; it takes no traffic until "
            f"`genwire model route/promote {model} {version}`"
        )
    if specific is not None and set(specific) == wanted:
        return pin, None
    new = with_versions(text, wanted)
    _replace(config, new)
    out(f"{model}: serving versions {', '.join(sorted(wanted, key=int))}")
    return pin, (text, new)


def _move_pin(
    cfg: CommonSettings, triton_http: str, pin: ModelPolicy | None, version: str, out: Out
) -> None:
    """The pin ``load`` made follows the default model's new version (best effort)."""
    model = pin.model if pin is not None else DEFAULT_MODEL
    if pin is None or pin.champion == version:
        return
    lc = _lifecycle_module()
    if lc is None:
        return
    from genwire.policy import CHAMPION, WEIGHT_TOTAL

    with _lifecycle(lc, cfg, triton_http, out) as life:
        try:
            moved = pin.changed(
                by=lc.UP_PIN_BY,
                reason=f"the default model was rebuilt: version {version} replaces "
                f"{pin.champion} as the champion of the pin `load` made",
                aliases={CHAMPION: version},
                weights={version: WEIGHT_TOTAL},
            )
            life.publish(moved, pin.revision)
        except (lc.LifecycleError, PolicyError) as exc:
            out(f"{model}: the pin on version {pin.champion} was not moved ({exc})")


def restore_loaded_models(cfg: CommonSettings, triton_http: str, out: Out = quiet) -> None:
    """Load again what ``genwire model load`` served: a restarted Triton (explicit model
    control) serves only the default model until asked, and this runs after every start of
    Triton (``genwire up`` and the supervisor's after-ready hook). Best effort: a model that
    fails is reported, the default model stays served."""
    lc = _lifecycle_module()
    if lc is None:
        out("models loaded by `genwire model load`: not restored (no genwire_model.lifecycle)")
        return
    with _lifecycle(lc, cfg, triton_http, out) as life:
        try:
            for model, versions in life.restore(skip=[DEFAULT_MODEL]).items():
                out(f"{model}: served versions {', '.join(versions) or 'none'}")
        except (lc.LifecycleError, OSError) as exc:
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
