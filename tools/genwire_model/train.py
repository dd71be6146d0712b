"""Train genwire's default model: a small GPT-2 and its byte-level BPE tokenizer, on CPU.

The result is a Hugging Face checkpoint folder cached under
``<home>/models/checkpoints/<hash>/``; the hash covers the corpus, the hyperparameters and
:data:`TRAIN_CODE_VERSION`, so the model is rebuilt only when one of them changes.
"""

from __future__ import annotations

import dataclasses
import fcntl
import hashlib
import json
import logging
import math
import shutil
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from genwire_model.corpus import (
    ASSISTANT_TOKEN,
    EOS_TOKEN,
    SPECIAL_TOKENS,
    SYSTEM_TOKEN,
    USER_TOKEN,
    load_corpus,
    load_text_files,
)

log = logging.getLogger(__name__)

# Bump when this module changes what it produces.
TRAIN_CODE_VERSION = "1"

# A one-turn-or-more chat in the format the default model saw during training.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|' + message['role'] + '|>\n' + message['content'] + '<|endoftext|>\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% endif %}"
)

Array = npt.NDArray[Any]


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Hyperparameters of the default model and its training run (all part of the hash)."""

    vocab_size: int = 4096
    context: int = 256
    n_layer: int = 4
    n_embd: int = 192
    n_head: int = 4
    seq_len: int = 256
    batch_size: int = 4
    steps: int = 600
    lr: float = 2e-3
    warmup_steps: int = 50
    weight_decay: float = 0.05
    heldout_every: int = 20
    eval_tokens: int = 16384
    seed: int = 1234
    threads: int = 2
    max_seconds: float = 270.0  # a safety stop on slow machines; recorded in the report

    def to_json(self) -> dict[str, Any]:
        """The hyperparameters as a JSON-ready dict."""
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class TrainResult:
    """Where the checkpoint is and how good it is."""

    path: Path
    checkpoint_hash: str
    heldout_loss: float
    unigram_loss: float
    seconds: float
    trained: bool  # false when the cached checkpoint was reused


def checkpoint_hash(corpus_sha: str, config: TrainConfig) -> str:
    """Identity of a default checkpoint: corpus, hyperparameters and code version."""
    payload = json.dumps(
        {"corpus": corpus_sha, "config": config.to_json(), "code": TRAIN_CODE_VERSION},
        sort_keys=True,
    )
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def train_tokenizer(documents: list[str], vocab_size: int) -> Any:
    """A byte-level BPE tokenizer (as GPT-2 uses) with genwire's special tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(documents, trainer=trainer)
    return tokenizer


def _token_stream(tokenizer: Any, documents: list[str], eos_id: int) -> Array:
    ids: list[int] = []
    for encoding in tokenizer.encode_batch(documents):
        ids.extend(encoding.ids)
        ids.append(eos_id)
    return np.asarray(ids, dtype=np.int64)


def unigram_loss(train: Array, heldout: Array, vocab_size: int) -> float:
    """Cross-entropy (nats/token) of the held-out tokens under add-one unigram frequencies."""
    counts = np.bincount(train, minlength=vocab_size).astype(np.float64) + 1.0
    logp = np.log(counts / counts.sum())
    return float(-logp[heldout].mean())


def _save_tokenizer(tokenizer: Any, out: Path, context: int) -> None:
    from transformers import PreTrainedTokenizerFast

    fast: Any = PreTrainedTokenizerFast(  # type: ignore[no-untyped-call]
        tokenizer_object=tokenizer,
        bos_token=EOS_TOKEN,
        eos_token=EOS_TOKEN,
        pad_token=EOS_TOKEN,
        unk_token=None,
        additional_special_tokens=[USER_TOKEN, ASSISTANT_TOKEN, SYSTEM_TOKEN],
        model_max_length=context,
        chat_template=CHAT_TEMPLATE,
    )
    fast.save_pretrained(str(out))
    # Older and newer transformers disagree on where the template lives; keep it in both places.
    config_path = out / "tokenizer_config.json"
    config = json.loads(config_path.read_text(encoding="utf-8"))
    config["chat_template"] = CHAT_TEMPLATE
    config["eos_token"] = EOS_TOKEN
    config_path.write_text(json.dumps(config, indent=2), encoding="utf-8")


def train(
    out: Path,
    documents: list[str],
    config: TrainConfig,
    progress: Callable[[str], None] = log.info,
) -> tuple[float, float]:
    """Train tokenizer and model on ``documents`` and save an HF checkpoint into ``out``.

    Returns (held-out loss, unigram baseline loss) in nats per token.
    """
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.set_num_threads(config.threads)
    torch.manual_seed(config.seed)
    started = time.monotonic()

    tokenizer = train_tokenizer(documents, config.vocab_size)
    eos_id = int(tokenizer.token_to_id(EOS_TOKEN))
    heldout_docs = documents[:: config.heldout_every]
    train_docs = [d for i, d in enumerate(documents) if i % config.heldout_every]
    train_ids = _token_stream(tokenizer, train_docs, eos_id)
    heldout_ids = _token_stream(tokenizer, heldout_docs, eos_id)[: config.eval_tokens + 1]
    baseline = unigram_loss(train_ids, heldout_ids[1:], config.vocab_size)
    progress(
        f"tokenizer: vocab {tokenizer.get_vocab_size()}, train {len(train_ids)} tokens, "
        f"held-out {len(heldout_ids)} tokens ({time.monotonic() - started:.1f}s)"
    )

    settings: dict[str, Any] = {
        "vocab_size": config.vocab_size,
        "n_positions": config.context,
        "n_embd": config.n_embd,
        "n_layer": config.n_layer,
        "n_head": config.n_head,
        "bos_token_id": eos_id,
        "eos_token_id": eos_id,
        "pad_token_id": eos_id,
        # Fastest on CPU for training; the export loads the weights with eager attention.
        "attn_implementation": "sdpa",
    }
    model_config = GPT2Config(**settings)
    model: Any = GPT2LMHeadModel(model_config)
    model.train()
    params = sum(p.numel() for p in model.parameters())
    progress(f"model: GPT-2, {params / 1e6:.2f} M parameters")

    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    optimizer = torch.optim.AdamW(
        [
            {"params": decay, "weight_decay": config.weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ],
        lr=config.lr,
        betas=(0.9, 0.95),
    )

    def lr_at(step: int) -> float:
        if step < config.warmup_steps:
            return config.lr * (step + 1) / config.warmup_steps
        frac = (step - config.warmup_steps) / max(1, config.steps - config.warmup_steps)
        return config.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * frac)))

    rng = np.random.default_rng(config.seed)
    data = torch.from_numpy(train_ids)
    window = config.seq_len + 1
    steps_done = 0
    for step in range(config.steps):
        if time.monotonic() - started > config.max_seconds:
            progress(f"stopping at step {step}: time limit {config.max_seconds}s reached")
            break
        starts = rng.integers(0, len(train_ids) - window, size=config.batch_size)
        batch = torch.stack([data[s : s + window] for s in starts])
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step)
        loss = model(input_ids=batch[:, :-1], labels=batch[:, :-1].clone()).loss
        # HF shifts labels itself, so labels = inputs; the window's last token is unused.
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        steps_done = step + 1
        if step % 100 == 0 or step == config.steps - 1:
            progress(
                f"step {step}/{config.steps} loss {loss.item():.3f} "
                f"({time.monotonic() - started:.0f}s)"
            )

    heldout = evaluate(model, heldout_ids, config.seq_len)
    progress(
        f"held-out loss {heldout:.3f} nats/token vs unigram baseline {baseline:.3f} "
        f"(perplexity {math.exp(heldout):.1f} vs {math.exp(baseline):.1f})"
    )
    model.eval()
    model.save_pretrained(str(out), safe_serialization=True)
    _save_tokenizer(tokenizer, out, config.context)
    report = {
        "heldout_loss": heldout,
        "unigram_loss": baseline,
        "steps": steps_done,
        "seconds": time.monotonic() - started,
        "parameters": params,
        "train_tokens": len(train_ids),
        "config": config.to_json(),
        "code_version": TRAIN_CODE_VERSION,
    }
    (out / "training_report.json").write_text(json.dumps(report, indent=2), encoding="utf-8")
    return heldout, baseline


def evaluate(model: Any, ids: Array, seq_len: int) -> float:
    """Mean next-token cross-entropy over non-overlapping windows of ``ids``."""
    import torch

    model.eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for start in range(0, len(ids) - 1, seq_len):
            chunk = torch.from_numpy(ids[start : start + seq_len + 1]).unsqueeze(0)
            if chunk.shape[1] < 2:
                break
            logits = model(input_ids=chunk[:, :-1]).logits
            loss = torch.nn.functional.cross_entropy(logits[0], chunk[0, 1:], reduction="sum")
            total += float(loss)
            count += chunk.shape[1] - 1
    model.train()
    return total / max(1, count)


def checkpoints_dir(home: Path) -> Path:
    """Where trained checkpoints are cached."""
    return home / "models" / "checkpoints"


def ensure_checkpoint(
    home: Path,
    config: TrainConfig | None = None,
    corpus_paths: list[Path] | None = None,
    force: bool = False,
    progress: Callable[[str], None] = log.info,
) -> TrainResult:
    """The cached default checkpoint, training it first when its inputs changed."""
    cfg = config or TrainConfig()
    if corpus_paths:
        documents, corpus_sha = load_text_files(corpus_paths)
    else:
        documents, corpus_sha = load_corpus(home / "models" / "corpus")
    digest = checkpoint_hash(corpus_sha, cfg)
    checkpoints_dir(home).mkdir(parents=True, exist_ok=True)
    # One trainer per checkpoint: a second caller waits, then finds the result cached.
    with (checkpoints_dir(home) / f".lock-{digest}").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            return _ensure_locked(digest, documents, corpus_sha, home, cfg, force, progress)
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _ensure_locked(
    digest: str,
    documents: list[str],
    corpus_sha: str,
    home: Path,
    cfg: TrainConfig,
    force: bool,
    progress: Callable[[str], None],
) -> TrainResult:
    final = checkpoints_dir(home) / digest
    report_path = final / "training_report.json"
    if report_path.exists() and not force:
        report = json.loads(report_path.read_text(encoding="utf-8"))
        return TrainResult(
            final, digest, report["heldout_loss"], report["unigram_loss"], 0.0, trained=False
        )
    progress(f"training the default model ({len(documents)} documents) into {final}")
    started = time.monotonic()
    # This digest's lock is held: any temporary folder of it is a killed trainer's.
    for stale in checkpoints_dir(home).glob(f".tmp-{digest}-*"):
        shutil.rmtree(stale, ignore_errors=True)
    tmp = checkpoints_dir(home) / f".tmp-{digest}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir(parents=True)
    try:
        heldout, baseline = train(tmp, documents, cfg, progress)
        (tmp / "genwire_checkpoint.json").write_text(
            json.dumps({"hash": digest, "corpus_sha256": corpus_sha}), encoding="utf-8"
        )
        if final.exists():
            shutil.rmtree(final)
        tmp.rename(final)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return TrainResult(final, digest, heldout, baseline, time.monotonic() - started, trained=True)
