"""The default model's bring-up (``genwire_stack.default_model.serve_version``) off the stack:
when Triton refuses the load of the config it rewrote, the config is put back, as
``genwire model load`` does."""

from __future__ import annotations

import types
from pathlib import Path
from typing import Any

import pytest
from genwire_model.build import render_config
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
    before = with_versions(render_config("m"), ["1"])
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
    theirs = with_versions(render_config("m"), ["3"])
    config.write_text(theirs)
    change = ("before", "what the bring-up wrote")
    default_model._put_back(_settings(tmp_path), "http://127.0.0.1:3", "m", change, print)
    assert config.read_text() == theirs


@pytest.mark.parametrize("interrupt", [KeyboardInterrupt, SystemExit])
def test_an_interrupted_load_puts_the_config_back_and_loads_it_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, interrupt: type[BaseException]
) -> None:
    config = tmp_path / "m" / "config.pbtxt"
    config.parent.mkdir()
    before = with_versions(render_config("m"), ["1"])
    config.write_text(before)

    def keep(*_a: Any, **_kw: Any) -> tuple[None, tuple[str, str]]:
        written = with_versions(before, ["1", "2"])
        config.write_text(written)
        return None, (before, written)

    posts: list[tuple[str, float, str]] = []

    def post(url: str, timeout_s: float, headers: Any = None) -> tuple[int, str]:
        posts.append((url, timeout_s, config.read_text()))
        if len(posts) == 1:  # Ctrl-C while Triton loads (it may finish server-side)
            raise interrupt()
        raise OSError("Triton went away")  # the reload is best effort: suppressed

    monkeypatch.setattr(default_model, "keep_policy_versions", keep)
    monkeypatch.setattr(default_model, "http_status", lambda *_a, **_kw: 404)
    monkeypatch.setattr(default_model, "_post", post)
    monkeypatch.setattr(default_model.triton_admin, "headers", lambda *_a: {})
    with pytest.raises(interrupt):
        default_model.serve_version(_settings(tmp_path), "http://127.0.0.1:3", "m", "2")
    assert config.read_text() == before
    # Loaded again from the restored config, within a bound shorter than the load's 600 s.
    assert [(u, c) for u, _t, c in posts] == [
        ("http://127.0.0.1:3/v2/repository/models/m/load", with_versions(before, ["1", "2"])),
        ("http://127.0.0.1:3/v2/repository/models/m/load", before),
    ]
    assert posts[1][1] <= 60.0


def test_a_refused_load_is_not_loaded_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tmp_path / "m" / "config.pbtxt"
    config.parent.mkdir()
    before = with_versions(render_config("m"), ["1"])
    config.write_text(before)
    written = with_versions(before, ["1", "2"])
    monkeypatch.setattr(
        default_model,
        "keep_policy_versions",
        lambda *_a, **_kw: (config.write_text(written), (None, (before, written)))[1],
    )
    posts: list[str] = []
    monkeypatch.setattr(default_model, "http_status", lambda *_a, **_kw: 404)
    monkeypatch.setattr(
        default_model, "_post", lambda url, **_kw: (posts.append(url), (400, "no"))[1]
    )
    monkeypatch.setattr(default_model.triton_admin, "headers", lambda *_a: {})
    with pytest.raises(StackError):
        default_model.serve_version(_settings(tmp_path), "http://127.0.0.1:3", "m", "2")
    assert config.read_text() == before and len(posts) == 1
