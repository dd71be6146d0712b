"""Text utilities of postprocess: incremental detokenization and stop sequences (pure logic).

Incremental detokenization follows the usual prefix/read-offset scheme: decode a short window
of recent tokens twice (with and without the new ones) and emit the difference, unless the
window ends in U+FFFD — a multi-byte UTF-8 character still incomplete — in which case the
bytes are held until the next tokens complete it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

REPLACEMENT = "\ufffd"

Decode = Callable[[list[int]], str]


class IncrementalDetokenizer:
    """Turns token ids, fed in pieces, into text pieces that never split a character."""

    def __init__(self, decode: Decode) -> None:
        self._decode = decode
        self.ids: list[int] = []
        self._prefix = 0  # start of the window decoded for context
        self._read = 0  # tokens whose text is fully emitted
        self._extra = 0  # characters emitted past ``_read`` (before an incomplete one)

    @property
    def decode(self) -> Decode:
        """The whole-sequence decoder it was made with."""
        return self._decode

    def feed(self, new_ids: Sequence[int]) -> str:
        """Add tokens; return the text they complete (possibly "")."""
        if not new_ids:
            return ""
        self.ids.extend(new_ids)
        prefix_text = self._decode(self.ids[self._prefix : self._read])
        new = self._decode(self.ids[self._prefix :])[len(prefix_text) :]
        if new.endswith(REPLACEMENT):  # a character still incomplete: emit what precedes it
            safe = new.rstrip(REPLACEMENT)
            out = safe[self._extra :]
            self._extra = max(self._extra, len(safe))
            return out
        out = new[self._extra :]
        self._prefix, self._read, self._extra = self._read, len(self.ids), 0
        return out

    def flush(self) -> str:
        """The text still held back (at the end of the generation, even an incomplete char)."""
        prefix_text = self._decode(self.ids[self._prefix : self._read])
        new = self._decode(self.ids[self._prefix :])[len(prefix_text) :]
        self._prefix = self._read = len(self.ids)
        out, self._extra = new[self._extra :], 0
        return out


def find_stop(text: str, stops: Sequence[str], start: int = 0, floor: int = 0) -> int:
    """Position of the earliest stop sequence in ``text`` at or after ``start`` (-1: none).

    ``floor`` (``stop_floor``): an occurrence that ends within the first ``floor`` characters
    does not count (it was completed before ``min_tokens``; the model went on past it).
    """
    best = -1
    for s in stops:
        if not s:
            continue
        pos = text.find(s, max(start, floor - len(s) + 1))
        if pos != -1 and (best == -1 or pos < best):
            best = pos
    return best


def stop_floor(decode: Decode, ids: Sequence[int], min_tokens: int) -> int:
    """How many characters the first ``min_tokens - 1`` tokens complete: a stop sequence
    that ends within them is not a stop (the model's rule: ``RowConstraint.advance`` matches
    stop strings from the ``min_tokens``-th token on, on the token completing the match).

    A character whose last bytes come in a later token ends in that token: a trailing
    incomplete one (U+FFFD) is not counted.
    """
    if min_tokens <= 1:
        return 0
    return len(decode(list(ids[: min_tokens - 1])).rstrip(REPLACEMENT))


def partial_stop_start(text: str, stops: Sequence[str]) -> int:
    """Where a possible (incomplete) stop sequence begins at the end of ``text``.

    ``len(text)`` when the text cannot be the start of any stop sequence: everything before
    the returned position is safe to stream.
    """
    safe = len(text)
    for s in stops:
        for k in range(min(len(s) - 1, len(text)), 0, -1):
            if text.endswith(s[:k]):
                safe = min(safe, len(text) - k)
                break
    return safe


def truncate_at_stop(text: str, stops: Sequence[str], floor: int = 0) -> tuple[str, bool]:
    """``text`` cut before its first stop sequence (one ending past ``floor``), and whether
    one was found."""
    pos = find_stop(text, stops, floor=floor)
    return (text, False) if pos == -1 else (text[:pos], True)
