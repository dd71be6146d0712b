"""Token logprobs for callers: ids (from the model) to token text and text offsets (pure logic).

A token's text is its own decoding (``decode([id])``); its ``text_offset`` is where its text
starts in the choice's text, found by feeding the tokens one by one to the incremental
detokenizer (the same one streaming uses, so streamed and final offsets agree). A choice's
logprobs are the tokens whose text starts inside the returned text: a stop sequence cut off
the end also cuts its tokens, and a token that adds no text at the end (end-of-sequence) is
left out, as OpenAI does.
"""

from __future__ import annotations

from collections.abc import Sequence

from genwire.events import OutputLogprob, TokenLogprob, TopLogprob
from genwire_postprocess.text import Decode, IncrementalDetokenizer


def _token(decode: Decode, token_id: int) -> tuple[str, list[int]]:
    text = decode([token_id])
    return text, list(text.encode("utf-8"))


def to_output(decode: Decode, lp: TokenLogprob, text_offset: int) -> OutputLogprob:
    """One model logprob (ids) as a caller's (token text, bytes, alternatives)."""
    token, raw = _token(decode, lp.token_id)
    top = []
    for token_id, logprob in lp.top:
        alt, alt_raw = _token(decode, token_id)
        top.append(TopLogprob(token=alt, token_id=token_id, logprob=logprob, bytes=alt_raw))
    return OutputLogprob(
        token=token,
        token_id=lp.token_id,
        logprob=lp.logprob,
        bytes=raw,
        top=top,
        text_offset=text_offset,
    )


def output_logprobs(
    decode: Decode, ids: Sequence[int], logprobs: Sequence[TokenLogprob], text_len: int
) -> list[OutputLogprob]:
    """The caller's logprobs of a choice whose returned text is ``text_len`` characters."""
    detok = IncrementalDetokenizer(decode)
    offset = 0
    out: list[OutputLogprob] = []
    for i, token_id in enumerate(ids):
        if offset >= text_len:
            break
        if i < len(logprobs):
            out.append(to_output(decode, logprobs[i], offset))
        offset += len(detok.feed([token_id]))
    return out


class LogprobTracker:
    """A streamed choice's logprobs: added token by token, handed out with the text."""

    def __init__(self, decode: Decode) -> None:
        self.decode = decode
        self.held: list[OutputLogprob] = []
        self.given = 0
        """How many were handed out (the ``logprob_offset`` of the next)."""

    def add(self, token_id: int, lp: TokenLogprob | None, text_offset: int) -> None:
        """A token fed to the detokenizer at ``text_offset`` (no logprob from the model: none)."""
        if lp is not None:
            self.held.append(to_output(self.decode, lp, text_offset))

    def take(self, end: int) -> tuple[list[OutputLogprob] | None, int]:
        """The logprobs of tokens starting before character ``end`` not handed out yet, and
        the index of the first of them."""
        first = self.given
        ready = [lp for lp in self.held if lp.text_offset < end]
        self.held = self.held[len(ready) :]
        self.given += len(ready)
        return ready, first
