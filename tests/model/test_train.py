"""Training: a checkpoint better than a unigram model, cached by the hash of its inputs."""

from __future__ import annotations

import json
from pathlib import Path

from genwire_model.checkpoint import inspect_checkpoint
from genwire_model.train import ensure_checkpoint

from .conftest import TINY, tiny_documents


def test_tiny_checkpoint_beats_unigram_and_is_hf_format(tiny_checkpoint: Path) -> None:
    report = json.loads((tiny_checkpoint / "training_report.json").read_text())
    print(f"held-out {report['heldout_loss']:.3f} vs unigram {report['unigram_loss']:.3f}")
    assert report["heldout_loss"] < report["unigram_loss"]
    info = inspect_checkpoint(tiny_checkpoint)
    assert info.model_type == "gpt2"
    assert (tiny_checkpoint / "model.safetensors").is_file()
    tokenizer_config = json.loads((tiny_checkpoint / "tokenizer_config.json").read_text())
    assert tokenizer_config["chat_template"] and tokenizer_config["eos_token"] == "<|endoftext|>"


def test_checkpoint_is_cached_until_its_inputs_change(tmp_path: Path) -> None:
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n\n".join(tiny_documents()))
    config = TINY.__class__(**{**TINY.to_json(), "steps": 5, "eval_tokens": 256})
    first = ensure_checkpoint(tmp_path / "home", config, [corpus], progress=lambda _: None)
    again = ensure_checkpoint(tmp_path / "home", config, [corpus], progress=lambda _: None)
    assert first.trained and not again.trained
    assert again.path == first.path and again.checkpoint_hash == first.checkpoint_hash
    changed = config.__class__(**{**config.to_json(), "seed": 99})
    other = ensure_checkpoint(tmp_path / "home", changed, [corpus], progress=lambda _: None)
    assert other.trained and other.checkpoint_hash != first.checkpoint_hash
