"""Fixtures of the stage tests: a model repository with a tokenizer trained here, and a
postprocessor over it storing results in memory (``FakeStore``)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from genwire_postprocess.handlers import Postprocessor
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from genwire.events import GenerationResult
from genwire.tokenization import AssetStore

MODEL = "genwire-gpt"
EOS = "<|endoftext|>"
CONTEXT_LENGTH = 128
CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}{{ eos_token }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)
CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "Kafka carries requests; Triton runs the model; Redis keeps results.",
    "Grüße aus Köln! Café crème, naïve résumé. 東京 と 大阪. 🙂🚀",
] * 20


def train_tokenizer() -> Tokenizer:
    """A small byte-level BPE (GPT-2 style): multi-byte characters span several tokens."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=[EOS, "<|user|>", "<|assistant|>", "<|system|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(CORPUS, trainer)
    return tok


@pytest.fixture(scope="session")
def tokenizer() -> Tokenizer:
    """The trained tokenizer."""
    return train_tokenizer()


@pytest.fixture(scope="session")
def model_repo(tmp_path_factory: pytest.TempPathFactory, tokenizer: Tokenizer) -> Path:
    """``<repo>/genwire-gpt/{1,2}/`` with tokenizer.json, tokenizer_config.json, manifest.json."""
    repo = tmp_path_factory.mktemp("repository")
    for version in ("1", "2"):
        vdir = repo / MODEL / version
        vdir.mkdir(parents=True)
        tokenizer.save(str(vdir / "tokenizer.json"))
        (vdir / "tokenizer_config.json").write_text(
            json.dumps({"chat_template": CHAT_TEMPLATE, "eos_token": EOS})
        )
        (vdir / "manifest.json").write_text(json.dumps({"context_length": CONTEXT_LENGTH}))
    return repo


@pytest.fixture
def assets(model_repo: Path) -> AssetStore:
    """A fresh asset store over the test repository."""
    return AssetStore(model_repo)


class FakeStore:
    """In-memory stand-in for Redis SET NX (the real one is exercised by integration tests)."""

    def __init__(self) -> None:
        self.data: dict[str, GenerationResult] = {}

    async def put_first(self, result: GenerationResult) -> GenerationResult:
        return self.data.setdefault(result.request_id, result)


@pytest.fixture
def post(assets: AssetStore) -> Postprocessor:
    """A postprocessor over the test repository, its results in a fresh ``FakeStore``."""
    return Postprocessor(assets, FakeStore())
