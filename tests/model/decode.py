"""The real decode loop in-process for the model tests: the tiny model, a sink that keeps every
update, and one request run through a fresh scheduler until it finishes."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from genwire_model.repository import ModelVersion
from genwire_model.runtime.constraints import ConstraintCompiler
from genwire_model.runtime.runners import create_runner
from genwire_model.runtime.scheduler import Request, Scheduler, Update
from tokenizers import Tokenizer


class Collect:
    """A sink keeping every update."""

    def __init__(self) -> None:
        self.updates: list[Update] = []
        self.errors: list[str] = []

    def send(self, update: Update) -> None:
        self.updates.append(update)

    def fail(self, message: str) -> None:
        self.errors.append(message)

    def is_cancelled(self) -> bool:
        return False

    @property
    def done(self) -> bool:
        return bool(self.errors) or bool(self.updates and self.updates[-1].finished)

    @property
    def tokens(self) -> list[int]:
        return [t for u in self.updates for t in u.token_ids]

    @property
    def final(self) -> Update:
        assert not self.errors, self.errors
        return self.updates[-1]


@dataclass(frozen=True)
class Model:
    """A built version's runner, with what the tests need beside it."""

    runner: Any
    context: int
    eos: tuple[int, ...]
    compiler: ConstraintCompiler
    tokenizer: Tokenizer

    @classmethod
    def load(cls, version: ModelVersion) -> Model:
        manifest = version.manifest
        eos = tuple(int(t) for t in manifest["eos_token_ids"])
        vocab = int(manifest["shape"]["vocab_size"])
        return cls(
            runner=create_runner(version.path),
            context=int(manifest["context_length"]),
            eos=eos,
            compiler=ConstraintCompiler(version.path, vocab, eos),
            tokenizer=Tokenizer.from_file(str(version.path / "tokenizer.json")),
        )

    def text(self, ids: list[int]) -> str:
        return str(self.tokenizer.decode(ids, skip_special_tokens=True))


def decode(model: Model, prompt: list[int], eos_ids: tuple[int, ...], **fields: Any) -> Collect:
    """One request through a fresh scheduler until it finishes. ``fields`` are the Request's
    (max_tokens and temperature at least) over seed 1, top-p 1, top-k off, no stop ids, stream."""
    scheduler = Scheduler(model.runner, context=model.context, eos_ids=eos_ids)
    sink = Collect()
    defaults: dict[str, Any] = {
        "top_p": 1.0,
        "top_k": 0,
        "seed": 1,
        "stop_ids": frozenset(),
        "stream": True,
    }
    scheduler.submit(Request(np.asarray(prompt, dtype=np.int64), sink=sink, **(defaults | fields)))
    for _ in range(10_000):
        if sink.done:
            return sink
        scheduler.run_once()
    raise AssertionError("generation did not finish")
