"""``genwire keys create|list|revoke``: API keys in Redis (docs/security.md)."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from redis.exceptions import AuthenticationError, RedisError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from genwire.apikeys import (
    ENV_API_KEY,
    SCOPES,
    ApiKeyError,
    KeyRecord,
    KeyStore,
    hash_key,
    new_key,
)
from genwire.redisconn import connect
from genwire.settings import CommonSettings

EPILOG = """\
examples:
  genwire keys create --name team-search --scopes generate --rpm 600 --tpm 200000
  genwire keys create --name labelling --scopes generate,feedback --tokens-per-day 5000000
  genwire keys list                   the live keys: name, id, scopes, limits
  genwire keys revoke team-search     every live key of that name (or give a key's id)
  genwire keys ensure-admin           the saved admin key of GENWIRE_HOME, created if missing
                                      (compose's keys-init runs it)
  GENWIRE_API_KEY=... genwire keys ensure-admin --from-env
                                      add a key from a Secret to Redis (the Kubernetes Job)"""


def register(subparsers: Any) -> None:
    """Add ``genwire keys``."""
    keys = subparsers.add_parser(
        "keys",
        help="create, list or revoke the API keys callers send to the gateway",
        description="API keys authenticate every call to the gateway (HTTP 'Authorization: "
        "Bearer KEY', gRPC 'authorization' metadata). Redis keeps only a hash of each key; "
        "its name is what usage and metrics are attributed to, and its scopes and limits say "
        "what it may do. A revoked key stops working on every gateway within a second.",
        epilog=EPILOG,
    )
    verbs = keys.add_subparsers(
        dest="verb", required=True, metavar="{create,list,revoke,ensure-admin,generate}"
    )
    create = verbs.add_parser(
        "create",
        help="create a key and print it once",
        description="Create a key and print it once, on its own line (it cannot be shown "
        "again: only its hash is stored). Details go to standard error.",
        epilog=EPILOG,
    )
    create.add_argument("--name", required=True, help="who holds it: a team or service name")
    create.add_argument(
        "--scopes",
        default="generate",
        help=f"comma-separated, among {', '.join(SCOPES)}; admin covers every other scope "
        "(default: generate)",
    )
    create.add_argument(
        "--rpm", type=int, default=None, help="requests per minute (default: no limit)"
    )
    create.add_argument(
        "--tpm",
        type=int,
        default=None,
        help="tokens (prompt + completion) per minute (default: no limit)",
    )
    create.add_argument(
        "--tokens-per-day",
        type=int,
        default=None,
        help="tokens per UTC day (default: no limit)",
    )
    create.add_argument(
        "--capture-content",
        action="store_true",
        help="record this key's prompts and completions (redacted) in the gateway's traces",
    )
    create.set_defaults(func=_create)
    listing = verbs.add_parser(
        "list",
        help="show the keys: name, id, scopes, limits, when created",
        description="Show every live key (with --all, revoked ones too). Keys themselves are "
        "never shown: they are not stored.",
        epilog=EPILOG,
    )
    listing.add_argument("--all", action="store_true", help="include revoked keys")
    listing.set_defaults(func=_list)
    revoke = verbs.add_parser(
        "revoke",
        help="revoke keys by name or id",
        description="Revoke every live key with this name, or the key with this id (from "
        "`genwire keys list`). Callers using it get 401 from every gateway within a second.",
        epilog=EPILOG,
    )
    revoke.add_argument("target", metavar="NAME_OR_ID", help="a key name or a key id")
    revoke.set_defaults(func=_revoke)
    ensure = verbs.add_parser(
        "ensure-admin",
        help="make sure an admin key exists (deployments' init step)",
        description="Idempotent. By default: the admin key saved under GENWIRE_HOME (mode "
        "0600), created if missing, and added to Redis if Redis does not know it (what `genwire "
        "up` does natively; compose's keys-init one-shot runs it). With --from-env: add "
        "the key in GENWIRE_API_KEY (a Kubernetes Secret) as an admin key named 'admin', "
        "saving nothing. Never prints the key.",
        epilog=EPILOG,
    )
    ensure.add_argument(
        "--from-env",
        action="store_true",
        help="add the key in GENWIRE_API_KEY to Redis instead of the saved one",
    )
    ensure.set_defaults(func=_ensure_admin)
    generate = verbs.add_parser(
        "generate",
        help="print a new well-formed key, stored nowhere (for a Secret)",
        description="Print a new random key on its own line. Nothing is stored: add it to "
        "Redis with `genwire keys ensure-admin --from-env` (the Kubernetes Job does).",
    )
    generate.set_defaults(func=_generate)
    for p in (create, listing, revoke, ensure):
        p.add_argument(
            "--redis-url",
            default=None,
            metavar="URL",
            help="Redis holding the keys (default: GENWIRE_REDIS_URL)",
        )


class StoreError(Exception):
    """Redis cannot be used (unreachable, refused, a bad URL): the message says which Redis
    and why; ``status`` is the command's exit status."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


def redis_address(url: str) -> str:
    """``url`` without what may hold a password (the user part, the query)."""
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc.rpartition("@")[2], parts.path, "", ""))


def _store_error(url: str, exc: RedisError) -> StoreError:
    # An AuthenticationError is a ConnectionError too, but Redis answered: it refused.
    gone = isinstance(exc, RedisConnectionError | RedisTimeoutError)
    state = "is unreachable" if gone and not isinstance(exc, AuthenticationError) else "refused"
    return StoreError(f"Redis at {redis_address(url)} {state}: {exc}", 1)


async def _with_store(url: str | None, work: Any) -> Any:
    target = url or CommonSettings().redis_url
    try:
        redis = connect(target)
    except ValueError as exc:  # not a Redis URL: bad input
        raise StoreError(f"{redis_address(target)!r} is not a Redis URL: {exc}", 2) from None
    try:
        return await work(KeyStore(redis))
    except RedisError as exc:
        raise _store_error(target, exc) from None
    finally:
        await redis.aclose()  # type: ignore[attr-defined]


def _failed(verb: str, exc: StoreError) -> int:
    print(f"genwire keys {verb}: error: {exc}", file=sys.stderr)
    return exc.status


def _limits(record: KeyRecord) -> str:
    parts = [
        f"rpm={record.rpm}" if record.rpm else "",
        f"tpm={record.tpm}" if record.tpm else "",
        f"tokens/day={record.tokens_per_day}" if record.tokens_per_day else "",
    ]
    return " ".join(p for p in parts if p) or "unlimited"


def _when(ms: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%SZ", time.gmtime(ms / 1000.0)) if ms else "-"


def _create(args: argparse.Namespace) -> int:
    async def work(store: KeyStore) -> tuple[str, KeyRecord]:
        return await store.create(
            args.name,
            args.scopes.split(","),
            rpm=args.rpm,
            tpm=args.tpm,
            tokens_per_day=args.tokens_per_day,
            capture_content=args.capture_content,
        )

    try:
        key, record = asyncio.run(_with_store(args.redis_url, work))
    except ApiKeyError as exc:
        print(f"genwire keys create: error: {exc}", file=sys.stderr)
        return 2
    except StoreError as exc:
        return _failed("create", exc)
    print(
        f"created key {record.id} for {record.name!r}: scopes {','.join(record.scopes)}, "
        f"{_limits(record)}{', content captured' if record.capture_content else ''}. "
        "Save it now: it is shown only once.",
        file=sys.stderr,
    )
    print(key, flush=True)
    return 0


def _list(args: argparse.Namespace) -> int:
    async def work(store: KeyStore) -> list[KeyRecord]:
        return await store.records(include_revoked=args.all)

    try:
        records = asyncio.run(_with_store(args.redis_url, work))
    except StoreError as exc:
        return _failed("list", exc)
    rows = [("NAME", "ID", "SCOPES", "LIMITS", "CONTENT", "CREATED", "REVOKED")]
    for r in records:
        rows.append(
            (
                r.name,
                r.id,
                ",".join(r.scopes),
                _limits(r),
                "captured" if r.capture_content else "-",
                _when(r.created_ms),
                _when(r.revoked_ms),
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
    return 0


def _revoke(args: argparse.Namespace) -> int:
    async def work(store: KeyStore) -> list[KeyRecord]:
        return await store.revoke(args.target)

    try:
        revoked = asyncio.run(_with_store(args.redis_url, work))
    except ApiKeyError as exc:
        print(f"genwire keys revoke: error: {exc}", file=sys.stderr)
        return 1
    except StoreError as exc:
        return _failed("revoke", exc)
    for r in revoked:
        print(f"revoked key {r.id} ({r.name})")
    return 0


def _ensure_admin(args: argparse.Namespace) -> int:
    from genwire_stack.adminkey import ensure_admin_key, register_admin_key
    from genwire_stack.errors import StackError

    settings = CommonSettings()
    if args.redis_url:
        settings = settings.model_copy(update={"redis_url": args.redis_url})
    try:
        if args.from_env:
            key = os.environ.get(ENV_API_KEY, "").strip()
            if not key:
                print(
                    f"genwire keys ensure-admin: error: {ENV_API_KEY} is not set", file=sys.stderr
                )
                return 2
            outcome = register_admin_key(key, settings)
            print(
                f"the admin key from {ENV_API_KEY} is {outcome} in Redis (id {hash_key(key)[:12]})"
            )
        else:
            path = ensure_admin_key(settings, out=print)
            print(f"admin key: {path}")
    except StackError as exc:
        print(f"genwire keys ensure-admin: error: {exc}", file=sys.stderr)
        return 1
    return 0


def _generate(args: argparse.Namespace) -> int:
    print(new_key(), flush=True)
    return 0
