"""Token logprobs for callers: ids (from the model) to token text and text offsets (pure logic).

A token's text is its own decoding (``decode([id])``); its ``text_offset`` is where its text
starts in the choice's text, found by feeding the tokens one by one to the incremental
detokenizer (the same one streaming uses, so streamed and final offsets agree). A choice's
logprobs are the tokens whose text starts inside the returned text: a stop sequence cut off
the end also cuts its tokens, and a token that adds no text at the end (end-of-sequence) is
left out, as OpenAI does.

Each token's own text and bytes are decoded once per model version (``TokenTexts``, bounded):
a result with ``top_logprobs`` needs them for 1 + top_logprobs tokens per generated token.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any

from pydantic import TypeAdapter

from genwire.events import OutputLogprob, TokenLogprob
from genwire_postprocess.text import Decode, IncrementalDetokenizer

MAX_CACHED_TOKENS = 65_536
"""Token texts kept per model version (``TokenTexts``): about 20 MB at most; past it the cache
starts over (the frequent tokens come back at once)."""

_OUTPUT_LOGPROBS = TypeAdapter(list[OutputLogprob])
VALIDATE_BATCH = 16
"""Tokens' logprobs validated per call (about 1 ms with 20 alternatives each)."""


class TokenTexts:
    """Single tokens' text and UTF-8 bytes, decoded once (bounded; shared with a worker
    thread building a large result, hence the lock around the rare insertions)."""

    def __init__(self, decode: Decode, limit: int = MAX_CACHED_TOKENS) -> None:
        self.decode = decode
        self._limit = limit
        self._known: dict[int, tuple[str, list[int]]] = {}  # never mutated: validation copies
        self._lock = threading.Lock()

    def __call__(self, token_id: int) -> tuple[str, list[int]]:
        """The text of token ``token_id`` alone, and its bytes."""
        found = self._known.get(token_id)
        if found is not None:
            return found
        text = self.decode([token_id])
        found = (text, list(text.encode("utf-8")))
        with self._lock:
            if len(self._known) >= self._limit:
                # Full: start over (the hot tokens come back at once). Dropping the oldest one
                # by one from a dict scans past every slot deleted before: quadratic.
                self._known = {}
            self._known[token_id] = found
        return found


def _texts(source: Decode | TokenTexts) -> TokenTexts:
    return source if isinstance(source, TokenTexts) else TokenTexts(source)


def _entry(texts: TokenTexts, lp: TokenLogprob, text_offset: int) -> dict[str, Any]:
    """One model logprob (ids) as the fields of a caller's ``OutputLogprob``."""
    token, raw = texts(lp.token_id)
    top = []
    for token_id, logprob in lp.top:
        alt, alt_raw = texts(token_id)
        top.append({"token": alt, "token_id": token_id, "logprob": logprob, "bytes": alt_raw})
    return {
        "token": token,
        "token_id": lp.token_id,
        "logprob": lp.logprob,
        "bytes": raw,
        "top": top,
        "text_offset": text_offset,
    }


def to_output(texts: TokenTexts, lp: TokenLogprob, text_offset: int) -> OutputLogprob:
    """One model logprob (ids) as a caller's (token text, bytes, alternatives)."""
    return OutputLogprob.model_validate(_entry(texts, lp, text_offset))


def output_logprobs(
    decode: Decode | TokenTexts,
    ids: Sequence[int],
    logprobs: Sequence[TokenLogprob],
    text_len: int,
) -> list[OutputLogprob]:
    """The caller's logprobs of a choice whose returned text is ``text_len`` characters."""
    texts = _texts(decode)
    detok = IncrementalDetokenizer(texts.decode)
    offset = 0
    entries: list[dict[str, Any]] = []
    for i, token_id in enumerate(ids):
        if offset >= text_len:
            break
        if i < len(logprobs):
            entries.append(_entry(texts, logprobs[i], offset))
        offset += len(detok.feed([token_id]))
    # Plain dicts validated in batches: less than half the time of building ~21 models per
    # token one by one (pydantic's model_construct is slower still). Batches, not the whole
    # choice at once: a validation holds the GIL, and in a worker thread (a large result)
    # the event loop waits for it to end.
    out: list[OutputLogprob] = []
    for start in range(0, len(entries), VALIDATE_BATCH):
        out += _OUTPUT_LOGPROBS.validate_python(entries[start : start + VALIDATE_BATCH])
    return out


class LogprobTracker:
    """A streamed choice's logprobs: added token by token, handed out with the text."""

    def __init__(self, decode: Decode | TokenTexts) -> None:
        self.texts = _texts(decode)
        self.held: list[OutputLogprob] = []
        self.given = 0
        """How many were handed out (the ``logprob_offset`` of the next)."""

    def add(self, token_id: int, lp: TokenLogprob | None, text_offset: int) -> None:
        """A token fed to the detokenizer at ``text_offset`` (no logprob from the model: none)."""
        if lp is not None:
            self.held.append(to_output(self.texts, lp, text_offset))

    def take(self, end: int) -> tuple[list[OutputLogprob] | None, int]:
        """The logprobs of tokens starting before character ``end`` not handed out yet, and
        the index of the first of them."""
        first = self.given
        ready = [lp for lp in self.held if lp.text_offset < end]
        self.held = self.held[len(ready) :]
        self.given += len(ready)
        return ready, first
