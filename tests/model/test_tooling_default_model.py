"""The default model's bring-up (``genwire_stack.default_model.serve_version``) off the stack:
when Triton refuses the load of the config it rewrote, the config is put back, as
``genwire model load`` does."""

from __future__ import annotations

import types
from pathlib import Path
from typing import Any

import pytest
from genwire_model.build import BuildOptions, render_config
from genwire_model.lifecycle import configured_versions, with_versions
from genwire_stack import default_model
from genwire_stack.errors import StackError


def _settings(tmp_path: Path) -> Any:
    return types.SimpleNamespace(
        repository=tmp_path,
        kafka_bootstrap_servers="127.0.0.1:1",
        triton_grpc_url="127.0.0.1:2",
        triton_http_url="127.0.0.1:3",
    )


def test_a_failed_load_puts_the_rewritten_config_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tmp_path / "m" / "config.pbtxt"
    config.parent.mkdir()
    before = with_versions(render_config("m", BuildOptions()), ["1"])
    config.write_text(before)

    def keep(*_a: Any, **_kw: Any) -> tuple[None, tuple[str, str]]:
        written = with_versions(before, ["1", "2"])  # what keep_policy_versions writes
        config.write_text(written)
        return None, (before, written)

    monkeypatch.setattr(default_model, "keep_policy_versions", keep)
    monkeypatch.setattr(default_model, "http_status", lambda *_a, **_kw: 404)
    monkeypatch.setattr(default_model, "_post", lambda *_a, **_kw: (400, "version 2 failed"))
    monkeypatch.setattr(default_model.triton_admin, "headers", lambda *_a: {})
    with pytest.raises(StackError, match="Triton refused to load m version 2"):
        default_model.serve_version(_settings(tmp_path), "http://127.0.0.1:3", "m", "2")
    assert configured_versions(config.read_text()) == ["1"]
    assert config.read_text() == before


def test_a_config_changed_meanwhile_is_not_put_back(tmp_path: Path) -> None:
    config = tmp_path / "m" / "config.pbtxt"
    config.parent.mkdir()
    theirs = with_versions(render_config("m", BuildOptions()), ["3"])
    config.write_text(theirs)
    change = ("before", "what the bring-up wrote")
    default_model._put_back(_settings(tmp_path), "http://127.0.0.1:3", "m", change, print)
    assert config.read_text() == theirs
