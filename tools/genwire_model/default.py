"""The default model of `genwire up`: train it if needed, build a version if none matches."""

from __future__ import annotations

import fcntl
import logging
from collections.abc import Callable

from genwire.settings import CommonSettings
from genwire_model import DEFAULT_MODEL_NAME
from genwire_model.build import BuildOptions, build_version, runtime_digest
from genwire_model.checkpoint import inspect_checkpoint
from genwire_model.repository import ModelRepository
from genwire_model.train import ensure_checkpoint

log = logging.getLogger(__name__)

DEFAULT_CONTEXT = 256


def _print(message: str) -> None:
    print(f"model: {message}", flush=True)


def ensure_default_model(settings: CommonSettings, progress: Callable[[str], None] = _print) -> str:
    """The version of ``genwire-gpt`` built from the current default checkpoint.

    Trains the checkpoint when its inputs (corpus, hyperparameters, code version) changed and
    builds a new repository version when no existing version was built from it with the
    current serving code (model.py and its runtime).
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
            runtime = runtime_digest()
            for version in reversed(repository.versions(DEFAULT_MODEL_NAME)):
                manifest = repository.get(DEFAULT_MODEL_NAME, version).manifest
                # Same weights and same serving code: nothing to rebuild.
                if (
                    manifest.get("source", {}).get("checkpoint_sha256") == digest
                    and manifest.get("build", {}).get("runtime_sha256") == runtime
                ):
                    return str(version)
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
