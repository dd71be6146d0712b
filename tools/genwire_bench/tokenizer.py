"""The model's tokenizer, so the direct-Triton baseline sends exactly what preprocess sends."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from genwire.tokenization import AssetStore, ModelAssets


@dataclass(frozen=True)
class ModelInputs:
    """How preprocess turns a prompt into model inputs, for one model version."""

    assets: ModelAssets

    @property
    def version(self) -> str:
        """The model version these assets are of (``genwire_bench.served`` picks it)."""
        return self.assets.version

    @property
    def stop_token_ids(self) -> tuple[int, ...]:
        """The end-of-sequence ids preprocess passes as ``stop_token_ids``."""
        return tuple(self.assets.eos_token_ids)

    def tokenize(self, prompt: str) -> list[int]:
        """Token ids of a completion prompt, special tokens included (as preprocess does)."""
        return self.assets.encode(prompt, add_special_tokens=True)


def load_model_inputs(repository: Path, model: str, version: str | None = None) -> ModelInputs:
    """Load the tokenizer assets of ``model`` (newest version unless given); blocking."""
    return ModelInputs(AssetStore(repository).get(model, version))
