"""Tokenizer assets of a model version in the Triton model repository, shared by preprocess
(chat template, encode, context limit) and postprocess (decode).

Layout read (Triton's, plus the files the model build puts beside the weights)::

    <repository>/<model>/<version>/tokenizer.json         (or tokenizer/tokenizer.json)
    <repository>/<model>/<version>/tokenizer_config.json  (chat_template, bos/eos tokens)
    <repository>/<model>/<version>/manifest.json          (context_length, eos_token_ids; or
                                                           config.json's max_position_embeddings)

This is the layout ``genwire_model.repository`` writes (a version is complete once
its ``manifest.json`` is there); it is read here without importing the model package, so the
shared library does not depend on a service.

Assets load once per (model, version) and are cached; "latest" is re-resolved every few seconds
so a newly published version is picked up without a restart.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from jinja2 import Template
from jinja2.exceptions import TemplateError
from jinja2.sandbox import ImmutableSandboxedEnvironment
from tokenizers import Tokenizer

from genwire.errors import PermanentError
from genwire.request import ErrorCode

log = logging.getLogger(__name__)

FALLBACK_CHAT_TEMPLATE = (
    "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}assistant:{% endif %}"
)
"""Used when the model ships no chat template: plain ``role: content`` lines."""

_CONTEXT_KEYS = ("context_length", "max_position_embeddings", "n_positions", "n_ctx")


def _token_text(value: Any) -> str | None:
    """tokenizer_config's special tokens are a string or ``{"content": ...}``."""
    if isinstance(value, str):
        return value
    if isinstance(value, dict) and isinstance(value.get("content"), str):
        return str(value["content"])
    return None


def _raise(message: str) -> None:
    raise TemplateError(message)


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    data = json.loads(path.read_text("utf-8"))
    return data if isinstance(data, dict) else {}


@dataclass
class ModelAssets:
    """A model version's tokenizer, chat template and context length."""

    name: str
    version: str
    path: Path
    tokenizer: Tokenizer
    context_length: int
    chat_template: str = FALLBACK_CHAT_TEMPLATE
    bos_token: str | None = None
    eos_token: str | None = None
    eos_token_ids: list[int] = field(default_factory=list)
    options: frozenset[str] = frozenset()
    """Decode-loop options this model version honours (``manifest.json`` ``"request_options"``:
    names of ``genwire.request.MODEL_OPTIONS``); preprocess refuses a request using another."""
    _template: Template | None = field(default=None, repr=False)

    @property
    def vocab_size(self) -> int:
        """Token ids are below this (prompt token ids, logit_bias keys are checked against it)."""
        size: int = self.tokenizer.get_vocab_size(with_added_tokens=True)
        return size

    def render_chat(self, messages: list[dict[str, str]]) -> str:
        """The prompt text of a chat, rendered with the model's template (sandboxed jinja2)."""
        if self._template is None:
            env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
            env.globals["raise_exception"] = _raise
            self._template = env.from_string(self.chat_template)
        try:
            return self._template.render(
                messages=messages,
                add_generation_prompt=True,
                bos_token=self.bos_token or "",
                eos_token=self.eos_token or "",
            )
        except TemplateError as exc:  # e.g. the template's own raise_exception on bad roles
            raise PermanentError(
                f"chat template rejected the messages: {exc}", code=ErrorCode.INVALID_REQUEST
            ) from None

    def encode(self, text: str, *, add_special_tokens: bool = True) -> list[int]:
        """Token ids of ``text``."""
        ids: list[int] = self.tokenizer.encode(text, add_special_tokens=add_special_tokens).ids
        return ids

    def decode(self, ids: list[int]) -> str:
        """Text of ``ids`` (special tokens skipped)."""
        text: str = self.tokenizer.decode(ids, skip_special_tokens=True)
        return text


def load_assets(version_dir: Path, name: str, default_context_length: int) -> ModelAssets:
    """Load a model version's assets (blocking: call it off the event loop)."""
    model_dir = version_dir.parent
    tok_path = next(
        (
            p
            for p in (
                version_dir / "tokenizer.json",
                version_dir / "tokenizer" / "tokenizer.json",
                model_dir / "tokenizer.json",
            )
            if p.is_file()
        ),
        None,
    )
    if tok_path is None:
        raise PermanentError(
            f"model {name!r} version {version_dir.name} has no tokenizer.json",
            code=ErrorCode.MODEL_NOT_FOUND,
        )
    tokenizer = Tokenizer.from_file(str(tok_path))
    tcfg = _read_json(tok_path.parent / "tokenizer_config.json") or _read_json(
        version_dir / "tokenizer_config.json"
    )
    context_length = 0
    manifest_eos = _read_json(version_dir / "manifest.json").get("eos_token_ids")
    manifest_options = _read_json(version_dir / "manifest.json").get("request_options")
    for manifest in (
        version_dir / "manifest.json",
        version_dir / "genwire.json",
        model_dir / "manifest.json",
        version_dir / "config.json",
        tok_path.parent / "config.json",
    ):
        data = _read_json(manifest)
        context_length = next(
            (int(data[k]) for k in _CONTEXT_KEYS if isinstance(data.get(k), int)), 0
        )
        if context_length:
            break
    if not context_length:
        context_length = int(tcfg.get("model_max_length", 0) or 0)
        if not 0 < context_length < 10_000_000:  # transformers writes 1e30 for "unknown"
            log.warning("%s: no context length found; assuming %d", name, default_context_length)
            context_length = default_context_length
    template = tcfg.get("chat_template")
    if isinstance(template, list):  # named templates: take "default"
        named = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
        template = named.get("default") or next(iter(named.values()), None)
    bos, eos = _token_text(tcfg.get("bos_token")), _token_text(tcfg.get("eos_token"))
    eos_id = tokenizer.token_to_id(eos) if eos else None
    if isinstance(manifest_eos, list) and manifest_eos:
        eos_ids = [int(t) for t in manifest_eos]
    else:
        eos_ids = [eos_id] if eos_id is not None else []
    return ModelAssets(
        name=name,
        version=version_dir.name,
        path=version_dir,
        tokenizer=tokenizer,
        context_length=context_length,
        chat_template=template if isinstance(template, str) else FALLBACK_CHAT_TEMPLATE,
        bos_token=bos,
        eos_token=eos,
        eos_token_ids=eos_ids,
        options=frozenset(
            str(o) for o in (manifest_options if isinstance(manifest_options, list) else [])
        ),
    )


class AssetStore:
    """Resolves (model, version) in the repository and caches each version's assets."""

    def __init__(
        self,
        repository: Path,
        *,
        default_context_length: int = 1024,
        latest_ttl_s: float = 5.0,
    ) -> None:
        self.repository = repository
        self._default_context_length = default_context_length
        self._latest_ttl_s = latest_ttl_s
        self._resolved: dict[tuple[str, str], tuple[float, str]] = {}
        self._assets: dict[tuple[str, str], ModelAssets] = {}
        self._lock = threading.Lock()

    def resolve(self, name: str, version: str | None = None) -> str:
        """The version to use: ``version`` if it exists, else the highest numbered one.

        Answers are cached for ``latest_ttl_s``: no file-system calls on the hot path, and a
        newly published version is still picked up within seconds.
        """
        key = (name, version or "")
        now = time.monotonic()
        cached = self._resolved.get(key)
        if cached and now - cached[0] < self._latest_ttl_s:
            return cached[1]
        resolved = self._resolve(name, version)
        self._resolved[key] = (now, resolved)
        return resolved

    def _resolve(self, name: str, version: str | None) -> str:
        model_dir = self.repository / name
        if "/" in name or name.startswith(".") or not model_dir.is_dir():
            raise PermanentError(f"no model named {name!r}", code=ErrorCode.MODEL_NOT_FOUND)
        if version:
            if not (model_dir / version).is_dir():
                raise PermanentError(
                    f"model {name!r} has no version {version}", code=ErrorCode.MODEL_NOT_FOUND
                )
            return version
        numbered = [p for p in model_dir.iterdir() if p.is_dir() and p.name.isdigit()]
        # Complete versions have their manifest (folders appear by atomic rename anyway).
        complete = [p.name for p in numbered if (p / "manifest.json").is_file()]
        versions = complete or [p.name for p in numbered]
        if not versions:
            raise PermanentError(f"model {name!r} has no versions", code=ErrorCode.MODEL_NOT_FOUND)
        return max(versions, key=int)

    def cached(self, name: str, version: str) -> ModelAssets | None:
        """Assets already loaded, without touching the disk."""
        return self._assets.get((name, version))

    def get(self, name: str, version: str | None = None) -> ModelAssets:
        """Assets of a model version (blocking on first use)."""
        resolved = self.resolve(name, version)
        found = self._assets.get((name, resolved))
        if found is not None:
            return found
        with self._lock:  # one load per version even when many requests arrive at once
            found = self._assets.get((name, resolved))
            if found is None:
                found = load_assets(
                    self.repository / name / resolved, name, self._default_context_length
                )
                self._assets[(name, resolved)] = found
        return found

    async def aget(self, name: str, version: str | None = None) -> ModelAssets:
        """``get`` for the event loop: cache hits inline, loads in a thread."""
        resolved = self.resolve(name, version)
        found = self._assets.get((name, resolved))
        if found is not None:
            return found
        return await asyncio.to_thread(self.get, name, resolved)
