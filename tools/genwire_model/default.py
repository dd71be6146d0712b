"""The default model of `genwire up`: train it if needed, build a version if none matches."""

from __future__ import annotations

import fcntl
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from genwire.settings import CommonSettings
from genwire_model import DEFAULT_MODEL_NAME
from genwire_model.build import BuildOptions, build_version, runtime_digest
from genwire_model.checkpoint import inspect_checkpoint
from genwire_model.lifecycle import CONFIG, configured_versions
from genwire_model.repository import ModelRepository
from genwire_model.runtime.runners import tensorrt_usable
from genwire_model.runtime.tensorrt_engine import current_key, find_engine, key_name
from genwire_model.train import ensure_checkpoint

log = logging.getLogger(__name__)

DEFAULT_CONTEXT = 256


def _print(message: str) -> None:
    print(f"model: {message}", flush=True)


def engine_key() -> dict[str, str] | None:
    """TensorRT version and GPU compute capability here; None where TensorRT cannot run."""
    if tensorrt_usable() is not None:
        return None
    try:
        return current_key()
    except Exception:  # a GPU that cannot be queried: serve with ONNX Runtime, build no engine
        log.warning("could not read the TensorRT version or the GPU", exc_info=True)
        return None


def _has_engine(path: Path, manifest: dict[str, Any], engine: dict[str, str]) -> bool:
    """An engine for ``engine``'s key is there, or building one here already failed once."""
    tried = manifest.get("build", {}).get("tensorrt", {}).get("attempted_key")
    return find_engine(path, engine) is not None or tried == key_name(engine)


def reusable_version(
    repository: ModelRepository,
    digest: str,
    runtime: str,
    engine: dict[str, str] | None,
    progress: Callable[[str], None] = log.info,
) -> str | None:
    """The version of the default model to serve without building: the newest built from the
    checkpoint ``digest`` with the serving code ``runtime`` and (where TensorRT runs here) an
    engine for ``engine``'s key. One that is not the newest version counts only where
    ``config.pbtxt`` names versions (``specific``): with its ``latest`` policy Triton serves
    the newest whatever is asked, so the bring-up would wait in vain for the older one (code
    checked out back to an earlier runtime did that for 120 s); a new version is built then."""
    versions = repository.versions(DEFAULT_MODEL_NAME)
    try:
        text = (repository.root / DEFAULT_MODEL_NAME / CONFIG).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):  # none yet (or unreadable): the build's latest
        text = ""
    latest_only = configured_versions(text) is None
    for version in reversed(versions):
        found = repository.get(DEFAULT_MODEL_NAME, version)
        manifest = found.manifest
        # Same weights, same serving code and (where TensorRT runs here) an engine
        # for this TensorRT version and GPU: nothing to rebuild.
        if (
            manifest.get("source", {}).get("checkpoint_sha256") == digest
            and manifest.get("build", {}).get("runtime_sha256") == runtime
            and (engine is None or _has_engine(found.path, manifest, engine))
        ):
            if version == versions[-1] or not latest_only:
                return str(version)
            progress(
                f"version {version} fits this checkpoint and code, but config.pbtxt serves the "
                f"newest version ({versions[-1]}): building a new one"
            )
            return None
    return None


def ensure_default_model(settings: CommonSettings, progress: Callable[[str], None] = _print) -> str:
    """The version of ``genwire-gpt`` built from the current default checkpoint.

    Trains the checkpoint when its inputs (corpus, hyperparameters, code version) changed and
    builds a new repository version when no existing version was built from it with the
    current serving code (model.py and its runtime) and, where TensorRT runs here, with an
    engine for this TensorRT version and GPU compute capability: a `pip install -U tensorrt`,
    another GPU, or a repository first built without one gets a version with a fitting engine.
    A fitting version older than the newest counts only where config.pbtxt names versions
    (``reusable_version``).
    """
    result = ensure_checkpoint(settings.home, progress=progress)
    if result.trained:
        progress(
            f"trained in {result.seconds:.0f}s: held-out loss {result.heldout_loss:.3f} vs "
            f"unigram baseline {result.unigram_loss:.3f} nats/token"
        )
    digest = inspect_checkpoint(result.path).digest
    repository = ModelRepository(settings.repository)
    model_dir = settings.repository / DEFAULT_MODEL_NAME
    model_dir.mkdir(parents=True, exist_ok=True)
    # Two `genwire up` at once must not build two versions of the same checkpoint.
    with (model_dir / ".ensure.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            engine = engine_key()
            found = reusable_version(repository, digest, runtime_digest(), engine, progress)
            if found is not None:
                return found
            if engine is not None:
                progress(f"building an engine for {key_name(engine)} ({engine.get('gpu', '')})")
            built = build_version(
                result.path,
                DEFAULT_MODEL_NAME,
                settings.repository,
                BuildOptions(context=DEFAULT_CONTEXT),
                progress=progress,
            )
            return str(built.version)
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
