"""Incremental detokenization (never splitting a character) and stop-sequence helpers."""

from __future__ import annotations

import pytest
from genwire_postprocess.text import (
    IncrementalDetokenizer,
    find_stop,
    partial_stop_start,
    stop_floor,
    truncate_at_stop,
)
from tokenizers import Tokenizer

TEXTS = [
    "The quick brown fox 🦊 jumps €5 ñandú",
    "東京 と 大阪 — Grüße 🚀🙂",
    "plain ascii only",
]


@pytest.mark.parametrize("text", TEXTS)
@pytest.mark.parametrize("step", [1, 2, 3])
def test_pieces_never_split_a_character(tokenizer: Tokenizer, text: str, step: int) -> None:
    ids = tokenizer.encode(text).ids
    assert len(ids) > len(text.split())  # multi-byte characters span several tokens
    detok = IncrementalDetokenizer(lambda x: tokenizer.decode(x, skip_special_tokens=True))
    pieces = [detok.feed(ids[i : i + step]) for i in range(0, len(ids), step)]
    pieces.append(detok.flush())
    assert all("\ufffd" not in p for p in pieces)
    assert "".join(pieces) == text
    assert sum(1 for p in pieces if p) > 1  # it really streams


def test_incomplete_character_is_held_until_complete(tokenizer: Tokenizer) -> None:
    ids = tokenizer.encode("🦊").ids
    assert len(ids) > 1
    detok = IncrementalDetokenizer(tokenizer.decode)
    assert [detok.feed([i]) for i in ids[:-1]] == [""] * (len(ids) - 1)
    assert detok.feed(ids[-1:]) == "🦊"
    assert detok.flush() == ""


def test_flush_gives_a_truncated_character_at_the_end(tokenizer: Tokenizer) -> None:
    ids = tokenizer.encode("ok🦊").ids
    detok = IncrementalDetokenizer(tokenizer.decode)
    assert detok.feed(ids[:-1]) == "ok"
    assert detok.flush() == "\ufffd"  # the model stopped mid-character: said plainly


def test_find_and_truncate_stop() -> None:
    assert find_stop("abc END def", ["END", "c E"]) == 2
    assert find_stop("abc", ["x"]) == -1
    assert find_stop("END abc END", ["END"], start=1) == 8
    assert truncate_at_stop("hello\n\nworld", ["\n\n"]) == ("hello", True)
    assert truncate_at_stop("hello", []) == ("hello", False)


def test_stops_ending_within_the_floor_do_not_count() -> None:
    # An occurrence must end past ``floor`` characters (min_tokens: the model went on).
    assert find_stop("ab ab ab", ["ab"], floor=2) == 3  # "ab" ending at 2 is not a stop
    assert find_stop("ab ab ab", ["ab"], floor=1) == 0  # one ending past the floor is
    assert find_stop("xab", ["xa", "b"], floor=2) == 2  # per string: "xa" ends at 2
    assert find_stop("abc", ["abc"], floor=3) == -1
    assert truncate_at_stop("fox, then fox", ["fox"], floor=3) == ("fox, then ", True)
    assert truncate_at_stop("fox", ["fox"], floor=3) == ("fox", False)


def test_stop_floor_counts_the_characters_before_min_tokens(tokenizer: Tokenizer) -> None:
    ids = tokenizer.encode("ok🦊 ok").ids
    fox = next(i for i in range(len(ids)) if tokenizer.decode(ids[: i + 1]).endswith("🦊"))
    assert tokenizer.decode(ids[:fox]).endswith("\ufffd")  # the fox's bytes span tokens
    assert stop_floor(tokenizer.decode, ids, 0) == stop_floor(tokenizer.decode, ids, 1) == 0
    # Before the token that completes it, the fox is not counted (it ends in that token).
    assert stop_floor(tokenizer.decode, ids, fox + 1) == len("ok")
    assert stop_floor(tokenizer.decode, ids, fox + 2) == len("ok🦊")


@pytest.mark.parametrize(
    ("text", "stops", "safe"),
    [
        ("hello wor", ["world"], 6),  # "wor" may become "world"
        ("hello w", ["world", "xyz"], 6),
        ("hello", ["world"], 5),
        ("abc#", ["##", "#!"], 3),
        ("abc", [], 3),
        ("wo", ["world"], 0),
    ],
)
def test_partial_stop_is_held_back(text: str, stops: list[str], safe: int) -> None:
    assert partial_stop_start(text, stops) == safe
