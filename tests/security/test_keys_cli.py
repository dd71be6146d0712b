"""`genwire keys`, `genwire usage` and the admin key of `genwire up`, on the real Redis."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest
from genwire_cli.usage_cli import parse_since, summarise, table
from genwire_stack.adminkey import ensure_admin_key

from genwire.apikeys import KeyStore, hash_key, well_formed
from genwire.redisconn import connect
from genwire.settings import CommonSettings
from genwire.usage import UsageEvent


def _genwire(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "genwire_cli", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **(env or {})},
        check=False,
    )


def test_create_prints_the_key_alone_list_shows_it_revoke_ends_it(infra: CommonSettings) -> None:
    name = f"cli-{uuid.uuid4().hex[:8]}"
    made = _genwire(
        "keys", "create", "--name", name, "--scopes", "generate,feedback", "--rpm", "60"
    )
    assert made.returncode == 0, made.stderr
    key = made.stdout.strip()
    assert well_formed(key) and made.stdout == key + "\n"
    assert "shown only once" in made.stderr
    listed = _genwire("keys", "list").stdout
    row = next(line for line in listed.splitlines() if line.startswith(name))
    assert hash_key(key)[:12] in row and "feedback,generate" in row and "rpm=60" in row
    assert key not in listed
    revoked = _genwire("keys", "revoke", name)
    assert revoked.returncode == 0 and name in revoked.stdout
    assert name not in _genwire("keys", "list").stdout
    assert name in _genwire("keys", "list", "--all").stdout
    again = _genwire("keys", "revoke", name)
    assert again.returncode == 1 and "no live key" in again.stderr


@pytest.mark.parametrize(
    "args",
    [
        ("--name", "bad name!"),
        ("--name", "ok", "--scopes", "root"),
        ("--name", "ok", "--rpm", "0"),
    ],
)
def test_create_refuses_bad_input(infra: CommonSettings, args: tuple[str, ...]) -> None:
    made = _genwire("keys", "create", *args)
    assert made.returncode == 2 and made.stdout == "" and "error" in made.stderr


def test_the_admin_key_is_created_once_saved_0600_and_never_resurrected(
    infra: CommonSettings, tmp_path: Path
) -> None:
    cfg = CommonSettings(home=tmp_path, redis_url=infra.redis_url)
    said: list[str] = []
    path = ensure_admin_key(cfg, said.append)
    key = path.read_text().strip()
    assert well_formed(key) and (path.stat().st_mode & 0o777) == 0o600
    assert str(path) in said[0]
    said.clear()
    assert ensure_admin_key(cfg, said.append) == path and said == []  # nothing new
    assert path.read_text().strip() == key

    async def revoke_then_forget() -> Any:
        redis = connect(infra.redis_url)
        try:
            store = KeyStore(redis)
            record = await store.get(hash_key(key))
            assert record is not None and record.scopes == ["admin"]
            await store.revoke(record.id)
            return record
        finally:
            await redis.aclose()  # type: ignore[attr-defined]

    asyncio.run(revoke_then_forget())
    ensure_admin_key(cfg, said.append)
    assert "was revoked" in said[0]


def test_usage_table_adds_up_per_key_and_model() -> None:
    events = [
        UsageEvent(
            request_id="a",
            key_name="search",
            model="m",
            model_version="2",
            prompt_tokens=3,
            completion_tokens=5,
            latency_ms=10,
        ),
        UsageEvent(
            request_id="b",
            key_name="search",
            model="m",
            model_version="2",
            prompt_tokens=1,
            completion_tokens=1,
            latency_ms=30,
        ),
        UsageEvent(
            request_id="c", key_name="ads", model="m", model_version="2", finish_reason="error"
        ),
        # Partial results: not an error, not complete either; each has its own column.
        UsageEvent(
            request_id="d",
            key_name="ads",
            model="m",
            model_version="2",
            prompt_tokens=2,
            completion_tokens=1,
            finish_reason="deadline",
        ),
        UsageEvent(
            request_id="e", key_name="ads", model="m", model_version="2", finish_reason="cancelled"
        ),
        # The output filter cut a finished text: answered, a completion like ``stop``.
        UsageEvent(
            request_id="f",
            key_name="ads",
            model="m",
            model_version="2",
            finish_reason="content_filter",
        ),
    ]
    rows = summarise(events)
    assert rows[("search", "m/2")].requests == 2
    assert rows[("search", "m/2")].prompt_tokens + rows[("search", "m/2")].completion_tokens == 10
    ads = rows[("ads", "m/2")]
    assert (ads.requests, ads.errors, ads.deadline, ads.cancelled) == (4, 1, 1, 1)
    text = table(rows).splitlines()
    assert text[0].split() == [
        "KEY",
        "MODEL",
        "REQUESTS",
        "ERRORS",
        "DEADLINE",
        "CANCELLED",
        "PROMPT",
        "COMPLETION",
        "TOTAL",
        "MEAN",
        "MS",
    ]
    assert text[1].split() == ["search", "m/2", "2", "0", "0", "0", "4", "6", "10", "20"]
    assert text[2].split() == ["ads", "m/2", "4", "1", "1", "1", "2", "1", "3", "0"]
    assert text[-1].split() == ["all", "6", "1", "1", "1", "6", "7", "13", "7"]
    assert parse_since("90m") == 5400 and parse_since("1h") == 3600
    with pytest.raises(ValueError):
        parse_since("yesterday")


def test_ensure_admin_saves_once_and_adds_a_secrets_key(
    infra: CommonSettings, tmp_path: Path
) -> None:
    """compose's keys-init (saved key under GENWIRE_HOME) and the Kubernetes Job (--from-env)."""
    env = {"GENWIRE_HOME": str(tmp_path), "GENWIRE_API_KEY": ""}
    first = _genwire("keys", "ensure-admin", env=env)
    assert first.returncode == 0, first.stderr
    saved = (tmp_path / "api-key").read_text().strip()
    assert well_formed(saved) and saved not in first.stdout
    assert (tmp_path / "api-key").stat().st_mode & 0o777 == 0o600
    again = _genwire("keys", "ensure-admin", env=env)
    assert again.returncode == 0 and (tmp_path / "api-key").read_text().strip() == saved
    generated = _genwire("keys", "generate").stdout.strip()
    assert well_formed(generated)
    from_env = _genwire(
        "keys", "ensure-admin", "--from-env", env={**env, "GENWIRE_API_KEY": generated}
    )
    assert from_env.returncode == 0, from_env.stderr
    assert "registered" in from_env.stdout and generated not in from_env.stdout
    known = _genwire(
        "keys", "ensure-admin", "--from-env", env={**env, "GENWIRE_API_KEY": generated}
    )
    assert "known" in known.stdout
    bad = _genwire("keys", "ensure-admin", "--from-env", env={**env, "GENWIRE_API_KEY": "gw-x"})
    assert bad.returncode == 1 and "malformed" in bad.stderr

    async def records() -> list[Any]:
        redis = connect(infra.redis_url)
        try:
            store = KeyStore(redis)
            found = [await store.get(hash_key(k)) for k in (saved, generated)]
            for record in found:  # leave no admin key behind
                if record is not None:
                    await store.revoke(record.id)
            return found
        finally:
            await redis.aclose()  # type: ignore[attr-defined]

    found = asyncio.run(records())
    assert all(r is not None and r.scopes == ["admin"] for r in found)


@pytest.mark.parametrize(
    "argv",
    [
        ["create", "--name", "team-a", "--scopes", "generate"],
        ["list"],
        ["revoke", "team-a"],
    ],
)
def test_an_unreachable_redis_is_one_line_naming_it(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    from genwire_cli.main import main

    # A password in the URL is not repeated in the error.
    assert main(["keys", *argv, "--redis-url", "redis://:s3cret@127.0.0.1:1/0"]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith(
        f"genwire keys {argv[0]}: error: Redis at redis://127.0.0.1:1/0 is unreachable: "
    )
    assert captured.err.count("\n") == 1 and "s3cret" not in captured.err


def test_a_url_that_is_not_redis_is_bad_input(capsys: pytest.CaptureFixture[str]) -> None:
    from genwire_cli.main import main

    assert main(["keys", "list", "--redis-url", "http://127.0.0.1:1"]) == 2
    assert "'http://127.0.0.1:1' is not a Redis URL" in capsys.readouterr().err
