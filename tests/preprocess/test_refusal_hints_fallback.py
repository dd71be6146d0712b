"""The hints of an oversize refused value on a Python whose ``re`` cannot run the scan (before
3.11.5, gh-106052): the keys are found at any depth, in constant memory, never by a parse."""

from __future__ import annotations

import json

import pytest
from genwire_preprocess import handlers, hints
from genwire_preprocess.handlers import HINT_PARSE_BYTES


def test_an_old_python_finds_the_keys_at_any_depth(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(hints, "SCANS", False)
    monkeypatch.setattr(hints, "scan_stream_n", None)  # a call would fail the test
    monkeypatch.setattr(handlers, "json", None)  # and so would a parse
    pad = "p" * (HINT_PARSE_BYTES + 1)
    plain = json.dumps({"prompt": pad, "stream": True, "n": 2}).encode()
    assert handlers._hints(plain) == (True, "", 2)
    # What the scan fixes and this cannot: a nested key is taken for the request's.
    nested = json.dumps({"prompt": pad, "n": 2, "schema": {"n": 3}}).encode()
    assert handlers._hints(nested) == (False, "", 3)
