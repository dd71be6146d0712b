"""Checks on a Hugging Face causal-LM checkpoint folder before anything heavy runs (no torch)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path
from typing import Any

# model_type values whose causal LM exports with the KV-cache wrapper in export.py.
SUPPORTED_MODEL_TYPES = {
    "gpt2": "GPT-2",
    "llama": "Llama",
    "mistral": "Mistral",
    "qwen2": "Qwen2",
}


class CheckpointError(ValueError):
    """The checkpoint folder cannot be built into a model version; the message says why."""


@dataclasses.dataclass(frozen=True)
class CheckpointInfo:
    """What the build needs to know about a checkpoint."""

    path: Path
    model_type: str
    config: dict[str, Any]
    num_layers: int
    num_kv_heads: int
    head_dim: int
    vocab_size: int
    context: int
    eos_token_ids: tuple[int, ...]
    digest: str  # SHA-256 over config, weights and tokenizer files


def _first(config: dict[str, Any], *keys: str) -> Any:
    for key in keys:
        if config.get(key) is not None:
            return config[key]
    return None


def _digest(files: list[Path]) -> str:
    sha = hashlib.sha256()
    for file in sorted(files):
        sha.update(file.name.encode())
        with file.open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                sha.update(block)
    return sha.hexdigest()


def inspect_checkpoint(path: Path) -> CheckpointInfo:
    """Validate ``path`` as a GPT-2 or Llama-family checkpoint; raise CheckpointError if not."""
    if not path.is_dir():
        raise CheckpointError(f"checkpoint folder {path} does not exist or is not a folder")
    config_file = path / "config.json"
    if not config_file.is_file():
        raise CheckpointError(f"checkpoint {path} has no config.json")
    try:
        config = json.loads(config_file.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"checkpoint {path}: config.json is not valid JSON ({exc})") from exc
    model_type = str(config.get("model_type", ""))
    if model_type not in SUPPORTED_MODEL_TYPES:
        supported = ", ".join(sorted(SUPPORTED_MODEL_TYPES))
        raise CheckpointError(
            f"checkpoint {path}: unsupported architecture model_type={model_type!r} "
            f"(architectures={config.get('architectures')}); supported: {supported}"
        )
    weights = sorted(path.glob("*.safetensors")) or sorted(path.glob("pytorch_model*.bin"))
    if not weights:
        raise CheckpointError(
            f"checkpoint {path} has no weights (*.safetensors or pytorch_model*.bin)"
        )
    tokenizer = path / "tokenizer.json"
    if not tokenizer.is_file():
        raise CheckpointError(
            f"checkpoint {path} has no tokenizer.json (a fast tokenizer file is required)"
        )
    layers = _first(config, "num_hidden_layers", "n_layer")
    heads = _first(config, "num_attention_heads", "n_head")
    hidden = _first(config, "hidden_size", "n_embd")
    vocab = _first(config, "vocab_size")
    context = _first(config, "max_position_embeddings", "n_positions")
    if None in (layers, heads, hidden, vocab, context):
        raise CheckpointError(
            f"checkpoint {path}: config.json lacks one of the layer count, head count, "
            "hidden size, vocabulary size or context length"
        )
    kv_heads = int(_first(config, "num_key_value_heads") or heads)
    head_dim = int(_first(config, "head_dim") or int(hidden) // int(heads))
    eos = config.get("eos_token_id")
    eos_ids = tuple(int(e) for e in (eos if isinstance(eos, list) else [eos]) if e is not None)
    extra = [p for p in (path / "tokenizer_config.json",) if p.is_file()]
    return CheckpointInfo(
        path=path,
        model_type=model_type,
        config=config,
        num_layers=int(layers),
        num_kv_heads=kv_heads,
        head_dim=head_dim,
        vocab_size=int(vocab),
        context=int(context),
        eos_token_ids=eos_ids,
        digest=_digest([config_file, tokenizer, *weights, *extra]),
    )
